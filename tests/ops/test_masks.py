"""Mask IoU and mask NMS on crops: hand cases and the compiled kernels vs dense references."""
import pytest
import torch

from maskrcnn.ops import (
    crop_mask_intersection_reference,
    crop_mask_iou,
    crop_mask_nms,
    crop_pair_intersections,
    greedy_suppress_reference,
    mask_iou,
    mask_iou_dense_reference,
    mask_nms,
)
from maskrcnn.structures import MaskList
from tests.ops.conftest import DEVICES, cuda_only


def random_blobs(g, n, h, w, max_r=12, empty_every=7):
    """Dense bool masks [n, h, w] of ellipses, some crossing the image edge, some empty."""
    yy = torch.arange(h)[None, :, None]
    xx = torch.arange(w)[None, None, :]
    cy = torch.randint(-4, h + 4, (n, 1, 1), generator=g)
    cx = torch.randint(-4, w + 4, (n, 1, 1), generator=g)
    ry = torch.randint(1, max_r, (n, 1, 1), generator=g)
    rx = torch.randint(1, max_r, (n, 1, 1), generator=g)
    masks = ((yy - cy) ** 2) * rx**2 + ((xx - cx) ** 2) * ry**2 <= (rx * ry) ** 2
    masks[::empty_every] = False
    return masks


def to_crops(dense, pad):
    ml = MaskList.from_dense(dense, pad=pad)
    return ml.crops, ml.origins


def test_hand_case():
    # a = rows/cols 1..3 (9 px), b = rows/cols 2..4 (9 px): 4 shared pixels, union 14.
    a = torch.zeros(1, 6, 6, dtype=torch.bool)
    a[0, 1:4, 1:4] = True
    b = torch.zeros(1, 6, 6, dtype=torch.bool)
    b[0, 2:5, 2:5] = True
    want = torch.tensor([[4 / 14]])
    torch.testing.assert_close(mask_iou(a, b), want)
    # The same masks as crops with a negative origin, running past the image edge.
    ac = torch.zeros(1, 5, 5, dtype=torch.bool)
    ac[0, 2:5, 2:5] = True  # crop origin (-1, -1): crop (2, 2) is image (1, 1)
    bc = torch.zeros(1, 3, 8, dtype=torch.uint8)
    bc[0, :, 0:3] = 1  # origin (2, 2), 8 wide: runs past the 6-pixel image
    ao = torch.tensor([[-1, -1]])
    bo = torch.tensor([[2, 2]])
    torch.testing.assert_close(crop_mask_iou(ac, ao, bc, bo), want)
    assert crop_mask_intersection_reference(ac, ao, bc, bo).tolist() == [[4]]


def test_iou_of_masklists_of_different_padding():
    dense = torch.zeros((2, 8, 8), dtype=torch.bool)
    dense[0, 0:4, 0:4] = True  # 16 px
    dense[1, 2:6, 2:6] = True  # 16 px, 4 in common
    a, b = MaskList.from_dense(dense), MaskList.from_dense(dense, pad=3)
    iou = crop_mask_iou(a.crops, a.origins, b.crops, b.origins)
    assert iou[0, 1].item() == pytest.approx(4 / 28) and iou[1, 0].item() == pytest.approx(4 / 28)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pad_a,pad_b", [(0, 0), (2, 1)])
def test_compiled_matches_dense_reference(ext, device, pad_a, pad_b):
    g = torch.Generator().manual_seed(20)
    H, W = 48, 70
    a = random_blobs(g, 60, H, W)
    b = torch.cat([a[:20], random_blobs(g, 25, H, W)])  # some identical masks
    ac, ao = to_crops(a, pad_a)
    bc, bo = to_crops(b, pad_b)
    if pad_a:  # padded crops of masks at the edge start before it and run past it
        assert ao.min() < 0 and (ao[:, 0] + ac.shape[2]).max() > W
    want = mask_iou_dense_reference(a, b)
    got = crop_mask_iou(ac.to(device), ao.to(device), bc.to(device), bo.to(device))
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-6)
    inter = ext.crop_mask_intersection(ac.to(device), ao.to(device), bc.to(device), bo.to(device)).cpu()
    want_inter = (a.flatten(1).double() @ b.flatten(1).double().T).long()
    assert torch.equal(inter, want_inter)
    assert torch.equal(crop_mask_intersection_reference(ac, ao, bc, bo), want_inter)


@pytest.mark.parametrize("device", DEVICES)
def test_wide_masks_span_several_words(ext, device):
    # Rows wider than 64 pixels, at origins that are not multiples of 64 apart.
    g = torch.Generator().manual_seed(21)
    H, W = 30, 260
    yy = torch.arange(H)[None, :, None]
    xx = torch.arange(W)[None, None, :]
    x0 = torch.randint(-20, 150, (12, 1, 1), generator=g)
    x1 = x0 + torch.randint(60, 200, (12, 1, 1), generator=g)
    noise = torch.rand(12, H, W, generator=g) < 0.7
    a = (xx >= x0) & (xx < x1) & (yy >= 2) & (yy < 27) & noise
    ac, ao = to_crops(a, 3)
    got = ext.crop_mask_intersection(ac.to(device), ao.to(device), ac.to(device), ao.to(device)).cpu()
    assert torch.equal(got, (a.flatten(1).double() @ a.flatten(1).double().T).long())


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs_and_empty_masks(ext, device):
    z = torch.zeros((0, 4, 4), dtype=torch.bool, device=device)
    zo = torch.zeros((0, 2), dtype=torch.long, device=device)
    one = torch.ones((2, 4, 4), dtype=torch.bool, device=device)
    oo = torch.tensor([[0, 0], [10, 10]], device=device)
    assert crop_mask_iou(z, zo, one, oo).shape == (0, 2)
    assert crop_mask_iou(one, oo, z, zo).shape == (2, 0)
    blank = torch.zeros((2, 4, 4), dtype=torch.bool, device=device)
    # Two empty masks at the same place: IoU 0, not NaN.
    assert crop_mask_iou(blank, oo, blank, oo).abs().sum().item() == 0
    assert crop_mask_nms(z, zo, torch.zeros(0, device=device), 0.5).shape == (0,)
    assert mask_iou(torch.zeros(0, 5, 5, dtype=torch.bool), torch.zeros(3, 5, 5, dtype=torch.bool)).shape == (0, 3)


def test_soft_crops_count_nonzero_pixels(ext):
    a = torch.zeros(1, 3, 3)
    a[0, 1, 1] = 0.2
    a[0, 0, 0] = 1.0
    b = torch.ones(1, 3, 3, dtype=torch.bool)
    o = torch.zeros(1, 2, dtype=torch.long)
    torch.testing.assert_close(crop_mask_iou(a, o, b, o), torch.tensor([[2 / 9]]))


def test_bad_inputs(ext):
    with pytest.raises(ValueError, match=r"crops must be \[N, h, w\]"):
        crop_mask_iou(torch.zeros(3, 3), torch.zeros(3, 2), torch.zeros(1, 3, 3), torch.zeros(1, 2))
    with pytest.raises(RuntimeError, match=r"a_origins must be \[2, 2\]"):
        ext.crop_mask_intersection(torch.zeros(2, 3, 3, dtype=torch.uint8), torch.zeros(3, 2, dtype=torch.long),
                                   torch.zeros(1, 3, 3, dtype=torch.uint8), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="one size"):
        mask_iou(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))


def mask_nms_by_definition(dense, scores, thr):
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = mask_iou_dense_reference(dense[order], dense[order])
    return order[greedy_suppress_reference(iou, thr)]


@pytest.mark.parametrize("device", DEVICES)
def test_mask_nms(ext, device):
    g = torch.Generator().manual_seed(22)
    dense = random_blobs(g, 80, 40, 40, max_r=10)
    dense[40:60] = dense[0:20]  # duplicates: must be suppressed
    dense[60:70] = dense[0:10] & (torch.rand(10, 40, 40, generator=g) < 0.8)  # near-duplicates
    scores = torch.rand(80, generator=g)
    scores[10] = scores[11]  # a tie
    want = mask_nms_by_definition(dense, scores, 0.5)
    got = mask_nms(dense.to(device), scores.to(device), 0.5)
    assert torch.equal(got.cpu(), want)
    crops, origins = to_crops(dense, 1)
    assert torch.equal(crop_mask_nms(crops.to(device), origins.to(device), scores.to(device), 0.5).cpu(), want)
    assert len(want) < 70  # the duplicates really were removed


@cuda_only
def test_cuda_matches_cpu_on_many_cells():
    g = torch.Generator().manual_seed(23)
    dense = random_blobs(g, 300, 130, 176, max_r=15)
    crops, origins = to_crops(dense, 1)
    cpu = crop_mask_iou(crops, origins, crops, origins)
    gpu = crop_mask_iou(crops.cuda(), origins.cuda(), crops.cuda(), origins.cuda())
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("max_elements", [1, 300, 1 << 22])
def test_crop_pair_intersections_in_chunks_with_mixed_sizes(max_elements):
    g = torch.Generator().manual_seed(7)
    h, w = 70, 90
    a = torch.cat([random_blobs(g, 12, h, w, max_r=6), random_blobs(g, 3, h, w, max_r=40, empty_every=9)])
    b = torch.cat([torch.roll(a, shifts=(1, 2), dims=(1, 2)), random_blobs(g, 4, h, w, max_r=10)])  # overlaps
    ma, mb = MaskList.from_dense(a, pad=1), MaskList.from_dense(b, pad=3)  # different crop sizes
    ii, jj = (x.reshape(-1) for x in torch.meshgrid(torch.arange(len(a)), torch.arange(len(b)), indexing="ij"))
    ba, bb = ma.tight_boxes().long(), mb.tight_boxes().long()
    window = torch.cat([torch.maximum(ba[ii, :2], bb[jj, :2]), torch.minimum(ba[ii, 2:], bb[jj, 2:])], dim=1)
    got = crop_pair_intersections(ma.crops, ma.origins, mb.crops, mb.origins, ii, jj, window, max_elements=max_elements)
    assert torch.equal(got, (a[ii] & b[jj]).flatten(1).sum(1))
    assert int((got > 0).sum()) >= 10 and int(got.max()) > 100  # small and large overlaps
