import torch
import torch.nn.functional as F

from maskrcnn.model.mask_head import mask_loss, mask_targets, paste_masks
from maskrcnn.model.roi_heads import MultiLevelRoIPooler, assign_fpn_levels, box_inference
from maskrcnn.ops import roi_align
from maskrcnn.structures import MaskList, clip_boxes


def test_fpn_level_assignment():
    sizes = torch.tensor([20.0, 111.0, 112.0, 224.0, 447.0, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros(7), torch.zeros(7), sizes, sizes], dim=1)
    # level k0 + log2(s / 224), floor, clamped to 2..5 -> offsets from P2
    assert assign_fpn_levels(boxes).tolist() == [0, 0, 1, 2, 2, 3, 3]


def test_pooler_uses_each_boxes_level():
    torch.manual_seed(0)
    feats = [torch.randn(2, 3, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    boxes = [torch.tensor([[1.0, 2.0, 20.0, 30.0], [0.0, 0.0, 63.0, 63.0]]), torch.tensor([[5.0, 5.0, 60.0, 40.0]])]
    pooler = MultiLevelRoIPooler(7, (4, 8, 16, 32), sampling_ratio=2, canonical_size=32.0)
    out = pooler(feats, boxes)
    all_boxes = torch.cat(boxes)
    levels = assign_fpn_levels(all_boxes, canonical_size=32.0)
    bidx = torch.tensor([0.0, 0.0, 1.0])
    assert len(set(levels.tolist())) > 1  # the case exercises several levels
    for k in range(3):
        lvl = int(levels[k])
        want = roi_align(feats[lvl], torch.cat([bidx[k:k + 1], all_boxes[k]])[None], 7, 1 / (4 * 2 ** lvl), 2, True)
        torch.testing.assert_close(out[k:k + 1], want)


def _random_masks(n, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    cy = torch.randint(0, H, (n,), generator=g)
    cx = torch.randint(0, W, (n,), generator=g)
    r = torch.randint(2, 9, (n,), generator=g)
    dense = ((yy[None] - cy[:, None, None]) ** 2 + ((xx[None] - cx[:, None, None]) ** 2) * 2) < (r ** 2)[:, None, None]
    return dense


def test_mask_targets_from_crops_equal_dense_roialign():
    H, W = 40, 50
    dense = _random_masks(6, H, W)
    ml = MaskList.from_dense(dense)
    gt_index = torch.tensor([0, 1, 2, 3, 4, 5, 0, 3])
    boxes = ml.tight_boxes()[gt_index] + torch.tensor([[-2.0, -1.5, 2.5, 3.0]])  # RoIs bigger than the masks
    boxes = clip_boxes(boxes, (H, W))  # as proposals are
    boxes[6] = torch.tensor([-5.0, -5.0, 60.0, 45.0])  # past the image, around a mask away from the edge
    got = mask_targets(ml, gt_index, boxes, 14)
    rois = torch.cat([gt_index[:, None].float(), boxes], dim=1)
    want = (roi_align(dense[:, None].float(), rois, 14, 1.0, 0, True)[:, 0] >= 0.5).float()
    tb = ml.tight_boxes()[gt_index]
    at_edge = (tb[:, 0] == 0) | (tb[:, 1] == 0) | (tb[:, 2] == W) | (tb[:, 3] == H)
    assert at_edge.any() and (~at_edge).sum() >= 3
    torch.testing.assert_close(got[~at_edge], want[~at_edge])
    # At the image edge a dense mask replicates its border row while a crop sees zeros beyond the
    # image: the targets may differ in a bin touching the edge, nowhere else.
    diff = (got[at_edge] != want[at_edge]).flatten(1).sum(1)
    assert (diff <= 2).all()
    assert mask_targets(ml, gt_index[:0], boxes[:0], 14).shape == (0, 14, 14)


def _paste_reference(masks, boxes, H, W):
    """Dense per-box paste over the whole image, limited to the box + 1 px window."""
    out = torch.zeros(masks.shape[0], H, W)
    xs = torch.arange(W) + 0.5
    ys = torch.arange(H) + 0.5
    for i, (m, b) in enumerate(zip(masks, boxes)):
        gx = (xs - b[0]) / (b[2] - b[0]) * 2 - 1
        gy = (ys - b[1]) / (b[3] - b[1]) * 2 - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
        v = F.grid_sample(m[None, None], grid, align_corners=False)[0, 0]
        x0, y0 = int(torch.floor(b[0])) - 1, int(torch.floor(b[1])) - 1
        x1, y1 = int(torch.ceil(b[2])) + 1, int(torch.ceil(b[3])) + 1
        win = torch.zeros(H, W, dtype=torch.bool)
        win[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
        out[i] = v * win
    return out


def test_paste_masks_matches_dense_reference_and_chunks():
    torch.manual_seed(0)
    H, W = 30, 40
    masks = torch.rand(5, 7, 7)
    boxes = torch.tensor([[3.2, 4.7, 12.9, 20.1], [0.0, 0.0, 40.0, 30.0], [35.5, 25.2, 39.9, 29.8],
                          [10.0, 10.0, 11.0, 11.0], [-3.0, 5.0, 6.0, 8.0]])
    ml = paste_masks(masks, boxes, (H, W))
    assert ml.is_soft and ml.image_size == (H, W)
    assert ml.crops.shape[1:] == (30, 40)  # the largest window (box 1) clipped to the image
    assert (ml.origins >= 0).all()
    want = _paste_reference(masks, boxes, H, W)
    torch.testing.assert_close(ml.to_dense(), want, atol=1e-5, rtol=0)
    small = paste_masks(masks, boxes, (H, W), max_elements=1)  # one mask per chunk
    torch.testing.assert_close(small.crops, ml.crops)
    assert paste_masks(masks[:0], boxes[:0], (H, W)).crops.shape[0] == 0


def test_paste_masks_crop_is_box_plus_one_pixel():
    ml = paste_masks(torch.ones(1, 28, 28), torch.tensor([[10.0, 20.0, 30.0, 25.0]]), (100, 100))
    assert ml.origins.tolist() == [[9, 19]]
    assert tuple(ml.crops.shape[1:]) == (7, 22)
    binary = ml.threshold(0.5)
    torch.testing.assert_close(binary.tight_boxes(), torch.tensor([[10.0, 20.0, 30.0, 25.0]]))


def test_box_inference_caps_thresholds_and_clips():
    torch.manual_seed(0)
    R, K = 300, 2
    props = [torch.rand(R, 2) * 50, torch.rand(R, 2) * 50]
    props = [torch.cat([p, p + 5 + torch.rand(R, 2) * 20], dim=1) for p in props]
    logits = torch.randn(2 * R, K + 1) * 3
    deltas = torch.randn(2 * R, 4 * K) * 0.5
    out = box_inference(logits, deltas, props, [(60, 70), (40, 50)], (10, 10, 5, 5), 0.2, 0.5, 17)
    assert len(out) == 2
    for (boxes, scores, labels), (h, w) in zip(out, [(60, 70), (40, 50)]):
        assert boxes.shape[0] == 17 == scores.shape[0] == labels.shape[0]
        assert (scores > 0.2).all() and (scores[:-1] >= scores[1:]).all()
        assert labels.min() >= 0 and labels.max() < K
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all() and (boxes >= 0).all()
    none = box_inference(logits, deltas, props, [(60, 70), (40, 50)], (10, 10, 5, 5), 1.0, 0.5, 17)
    assert all(b.shape[0] == 0 for b, _, _ in none)


def test_mask_loss_uses_gt_class_channel():
    targets = (torch.rand(3, 8, 8) > 0.5).float()
    good = (targets * 2 - 1) * 20
    logits = torch.randn(3, 2, 8, 8) * 20
    classes = torch.tensor([1, 0, 1])
    logits[torch.arange(3), classes] = good
    assert mask_loss(logits, classes, targets) < 1e-6
    assert mask_loss(logits, 1 - classes, targets) > 1.0
    empty = torch.zeros(0, 2, 8, 8, requires_grad=True)
    loss = mask_loss(empty, classes[:0], targets[:0])
    loss.backward()
    assert float(loss.detach()) == 0.0
