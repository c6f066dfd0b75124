"""NMS and batched NMS: hand cases, ties, compiled vs twin, greedy suppression on IoU matrices."""
import pytest
import torch

from maskrcnn.ops import batched_nms, greedy_suppress, greedy_suppress_reference, nms, nms_reference
from maskrcnn.structures import box_iou
from tests.ops.conftest import DEVICES, cuda_only


def random_boxes(g, n, size=200.0, max_wh=60.0, dtype=torch.float32):
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * max_wh
    return torch.cat([xy, xy + wh], 1).to(dtype)


def greedy_by_hand(boxes, scores, thr):
    """The definition, one box at a time (tiny inputs only)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    iou = box_iou(boxes.double(), boxes.double())
    kept = []
    for i in order:
        if all(iou[i, k] <= thr for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("device", DEVICES)
def test_hand_case_threshold_is_strict(ext, device):
    # A and B overlap with IoU exactly 50 / 100; C stands apart with the top score.
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]], dtype=torch.float32, device=device)
    scores = torch.tensor([0.9, 0.8, 0.95], device=device)
    assert nms(boxes, scores, 0.5).tolist() == [2, 0, 1]  # IoU 0.5 is not > 0.5: B kept
    assert nms(boxes, scores, 0.49).tolist() == [2, 0]
    assert nms_reference(boxes, scores, 0.5).tolist() == [2, 0, 1]
    assert nms_reference(boxes, scores, 0.49).tolist() == [2, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_ties_keep_lower_index_first(ext, device):
    # Two identical boxes with equal scores: the lower index survives; disjoint ties keep index order.
    boxes = torch.tensor(
        [[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10], [100, 0, 110, 10], [50, 50, 60, 60]],
        dtype=torch.float32, device=device,
    )
    scores = torch.tensor([0.5, 0.5, 0.5, 0.7, 0.5], device=device)
    assert nms(boxes, scores, 0.5).tolist() == [3, 0, 1]
    assert nms_reference(boxes, scores, 0.5).tolist() == [3, 0, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_degenerate_boxes_are_never_suppressed(ext, device):
    # Zero-area boxes have IoU 0 with everything (no 0/0), so they are all kept.
    boxes = torch.tensor([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10], [3, 3, 3, 9]], dtype=torch.float32, device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    assert nms(boxes, scores, 0.1).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_compiled_matches_twin(ext, device, dtype, thr):
    g = torch.Generator().manual_seed(10)
    boxes = random_boxes(g, 700, dtype=dtype)
    scores = torch.rand(700, generator=g)
    scores[::7] = scores[1::7][: len(scores[::7])]  # some exact ties
    boxes[600:] = boxes[:100]  # duplicates
    boxes, scores = boxes.to(device), scores.to(device)
    assert torch.equal(nms(boxes, scores, thr), nms_reference(boxes, scores, thr))


def test_twin_equals_definition_on_small_inputs():
    g = torch.Generator().manual_seed(11)
    for _ in range(5):
        boxes = random_boxes(g, 30, size=50.0, max_wh=30.0)
        scores = (torch.rand(30, generator=g) * 4).floor()  # many ties
        assert nms_reference(boxes, scores, 0.4).tolist() == greedy_by_hand(boxes, scores, 0.4)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_single(ext, device):
    assert nms(torch.zeros((0, 4), device=device), torch.zeros(0, device=device), 0.5).shape == (0,)
    assert batched_nms(torch.zeros((0, 4), device=device), torch.zeros(0, device=device),
                       torch.zeros(0, dtype=torch.long, device=device), 0.5).shape == (0,)
    one = nms(torch.tensor([[1.0, 1, 2, 2]], device=device), torch.tensor([0.3], device=device), 0.5)
    assert one.tolist() == [0] and one.dtype == torch.long


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_equals_nms_per_group(ext, device):
    g = torch.Generator().manual_seed(12)
    boxes = random_boxes(g, 400, size=100.0).to(device)
    scores = torch.rand(400, generator=g).to(device)
    idxs = torch.randint(0, 4, (400,), generator=g).to(device)
    got = batched_nms(boxes, scores, idxs, 0.5)
    kept = []
    for c in range(4):  # a loop over groups, the definition
        sel = torch.nonzero(idxs == c).flatten()
        kept.append(sel[nms_reference(boxes[sel], scores[sel], 0.5)])
    kept = torch.cat(kept)
    want = kept[torch.sort(scores[kept], descending=True, stable=True).indices]
    assert torch.equal(got, want)
    # groups do interact when merged into one: the test above is not vacuous
    assert len(nms(boxes, scores, 0.5)) < len(got)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"scores must be \[3\]"):
        nms(torch.zeros(3, 4), torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match="square"):
        greedy_suppress(torch.zeros(3, 4), 0.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 300])
def test_greedy_suppress_compiled_matches_twin(ext, device, n):
    # Word boundaries of the CUDA bit masks (63/64/65) and a matrix that is not symmetric.
    g = torch.Generator().manual_seed(13 + n)
    iou = torch.rand(n, n, generator=g) ** 6
    iou = iou.to(device)
    got = greedy_suppress(iou, 0.3)
    assert torch.equal(got, greedy_suppress_reference(iou, 0.3))
    assert got.device.type == device


@cuda_only
def test_cuda_many_boxes_matches_cpu():
    # More than one scan word per row, and enough boxes to need several 64 x 64 tiles per row.
    g = torch.Generator().manual_seed(14)
    boxes = random_boxes(g, 5000, size=800.0, max_wh=80.0)
    scores = torch.rand(5000, generator=g)
    assert torch.equal(nms(boxes.cuda(), scores.cuda(), 0.5).cpu(), nms(boxes, scores, 0.5))
