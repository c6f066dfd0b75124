import pytest
import torch

from maskrcnn.structures import ImageList, Instances, MaskList, Sample, box_iou, clip_boxes


def _random_masks(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros((n, h, w), dtype=torch.bool)
    for i in range(n):  # test set-up only
        y0, x0 = torch.randint(0, h - 2, (1,), generator=g).item(), torch.randint(0, w - 2, (1,), generator=g).item()
        y1 = y0 + 1 + torch.randint(0, h - y0 - 1, (1,), generator=g).item()
        x1 = x0 + 1 + torch.randint(0, w - x0 - 1, (1,), generator=g).item()
        masks[i, y0:y1, x0:x1] = torch.rand((y1 - y0, x1 - x0), generator=g) < 0.7
    return masks


@pytest.mark.parametrize("pad", [0, 1, 3])
def test_masklist_dense_round_trip(pad):
    dense = _random_masks(7, 23, 31)
    dense[2] = False  # an empty mask survives the round trip
    ml = MaskList.from_dense(dense, pad=pad)
    assert len(ml) == 7
    assert torch.equal(ml.to_dense(), dense)
    assert torch.equal(ml.areas(), dense.flatten(1).sum(1).float())


def test_masklist_tight_boxes_match_dense():
    dense = torch.zeros((2, 10, 12), dtype=torch.bool)
    dense[0, 2:5, 3:9] = True
    dense[1, 9, 11] = True  # a single pixel at the image corner
    boxes = MaskList.from_dense(dense).tight_boxes()
    assert boxes.tolist() == [[3.0, 2.0, 9.0, 5.0], [11.0, 9.0, 12.0, 10.0]]


def test_masklist_compact_keeps_pixels_and_shrinks():
    dense = torch.zeros((2, 40, 40), dtype=torch.bool)
    dense[0, 1:3, 1:3] = True
    dense[1, 10:30, 5:35] = True
    ml = MaskList.from_dense(dense)
    small = ml[[0]].compact()
    assert small.crops.shape[1:] == (4, 4)
    assert torch.equal(small.to_dense(), dense[:1])


def test_masklist_threshold():
    dense = torch.zeros((2, 8, 8), dtype=torch.bool)
    dense[0, 0:4, 0:4] = True
    dense[1, 2:6, 2:6] = True
    ml = MaskList.from_dense(dense)
    soft = MaskList(ml.crops.float() * 0.6, ml.origins, ml.image_size)
    assert soft.is_soft and not soft.threshold(0.5).is_soft
    assert soft.threshold(0.7).areas().sum().item() == 0


def test_masklist_cat_pads_and_checks_size():
    a = MaskList.from_dense(_random_masks(2, 20, 20, 1))
    b = MaskList.from_dense(_random_masks(3, 20, 20, 2), pad=4)
    c = MaskList.cat([a, b])
    assert torch.equal(c.to_dense(), torch.cat([a.to_dense(), b.to_dense()]))
    with pytest.raises(ValueError, match="image sizes differ"):
        MaskList.cat([a, MaskList.empty((5, 5))])


def test_instances_indexing_and_validation():
    dense = _random_masks(4, 16, 16)
    ml = MaskList.from_dense(dense)
    inst = Instances((16, 16), ml.tight_boxes(), torch.arange(4), torch.rand(4), ml)
    sub = inst[torch.tensor([True, False, True, False])]
    assert len(sub) == 2 and torch.equal(sub.labels, torch.tensor([0, 2]))
    assert torch.equal(sub.masks.to_dense(), dense[[0, 2]])
    with pytest.raises(ValueError, match="masks holds"):
        Instances((16, 16), ml.tight_boxes(), torch.arange(4), None, ml[[0]])
    with pytest.raises(ValueError, match="labels"):
        Instances((16, 16), ml.tight_boxes(), torch.arange(3))


def test_sample_checks_image_size():
    inst = Instances.empty((10, 12))
    Sample(torch.zeros(1, 10, 12), inst, "a")
    with pytest.raises(ValueError, match="img7"):
        Sample(torch.zeros(1, 12, 10), inst, "img7")


def test_image_list_pads_to_multiple():
    il = ImageList.from_tensors([torch.ones(3, 10, 40), torch.ones(3, 33, 5)], size_divisibility=32)
    assert il.tensor.shape == (2, 3, 64, 64)
    assert il.image_sizes == [(10, 40), (33, 5)]
    assert il.tensor[0, :, 10:].abs().sum() == 0 and il.tensor[1, :, :33, :5].min() == 1


def test_box_iou_hand_values():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 0, 0]])
    b = torch.tensor([[5.0, 5, 15, 15], [0, 0, 10, 10]])
    iou = box_iou(a, b)
    assert iou[0, 0].item() == pytest.approx(25 / 175)
    assert iou[0, 1].item() == pytest.approx(1.0)
    assert iou[1].abs().sum() == 0  # degenerate boxes have IoU 0, not NaN
    assert clip_boxes(torch.tensor([[-3.0, 2, 50, 70]]), (60, 40)).tolist() == [[0.0, 2.0, 40.0, 60.0]]
