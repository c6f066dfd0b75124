"""Box matching (``ops.best_matches``): the compiled CPU kernel against its twin, value for value, and
hand-computed cases."""
import pytest
import torch

import maskrcnn.ops as ops
from maskrcnn.model.anchors import AnchorGenerator


def _random_boxes(g, shape, span, size, integer=False):
    xy = torch.rand(*shape, 2, generator=g) * span
    wh = torch.rand(*shape, 2, generator=g) * size
    b = torch.cat([xy, xy + wh], -1)
    return b.round() if integer else b


def _assert_same(got, want):
    for x, y, name in zip(got, want, ("best_iou", "matched", "low_quality")):
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(x, y), f"{name}: {(x != y).sum().item()} of {x.numel()} differ"


@pytest.mark.parametrize("integer", [False, True])  # integer boxes: many exact ties
@pytest.mark.parametrize("per_image", [False, True])
def test_kernel_equals_twin(ext, integer, per_image):
    g = torch.Generator().manual_seed(7 + integer + 2 * per_image)
    B, G, A = 3, 17, 5000  # A spans three of the kernel's 2,048-box chunks
    gt = _random_boxes(g, (B, G), 100, 30, integer)
    valid = torch.rand(B, G, generator=g) > 0.25
    valid[1] = False  # an image without ground truth
    valid[2, 0] = False  # a hole before valid rows
    boxes = _random_boxes(g, (B, A) if per_image else (A,), 110, 25, integer)
    boxes[..., :3, 2:] = boxes[..., :3, :2]  # empty boxes: union 0 -> IoU 0
    got = ops.best_matches(gt, valid, boxes)
    want = ops.best_matches_reference(gt, valid, boxes)
    _assert_same(got, want)
    assert got[2].any() and (got[0][1] == -1).all()
    # The twin's chunking does not change its answer either.
    _assert_same(ops.best_matches_reference(gt, valid, boxes, max_elements=B * G * 700), want)


def test_kernel_equals_twin_on_anchors_of_the_dsb_recipe(ext):
    # The RPN's case: one 512 x 512 input's anchors (16-256 px, 3 ratios, P2-P6) against GT
    # boxes of nuclei, several GTs sharing their best anchor.
    feats = [torch.zeros(1, 1, 512 // s, 512 // s) for s in (4, 8, 16, 32, 64)]
    anchors = torch.cat(AnchorGenerator((16, 32, 64, 128, 256), (0.5, 1.0, 2.0), (4, 8, 16, 32, 64))(feats))
    g = torch.Generator().manual_seed(3)
    gt = _random_boxes(g, (4, 60), 480, 60)
    gt[0, 1] = gt[0, 0]  # identical GTs: the first wins the boxes, both mark the same best anchors
    valid = torch.ones(4, 60, dtype=torch.bool)
    valid[3, 40:] = False
    got = ops.best_matches(gt, valid, anchors)
    _assert_same(got, ops.best_matches_reference(gt, valid, anchors))
    assert got[1][0][got[0][0] > 0].eq(1).sum() == 0  # GT 1 never wins over its identical GT 0


def test_hand_computed_case():  # the compiled kernel when built, and the twin
    # GT 0 = [0, 0, 10, 10], GT 1 = [20, 0, 30, 10], GT 2 overlaps no box (its best IoU is 0: no
    # low-quality match), padding row 3 overlaps everything.
    gt = torch.tensor([[[0, 0, 10, 10], [20, 0, 30, 10], [200, 200, 210, 210], [0, 0, 40, 40.0]]])
    valid = torch.tensor([[True, True, True, False]])
    boxes = torch.tensor([
        [0, 0, 10, 5],     # IoU with GT 0: 50 / 100 = 0.5
        [5, 0, 15, 10],    # GT 0: 50 / 150 = 1/3
        [20, 0, 25, 10],   # GT 1: 50 / 100 = 0.5
        [22, 2, 28, 8],    # GT 1: 36 / 100 = 0.36
        [100, 100, 110, 110.0],  # nothing: 0, GT 0 (the first of equal maxima)
    ])
    for fn in (ops.best_matches, ops.best_matches_reference):
        best, matched, low = fn(gt, valid, boxes)
        torch.testing.assert_close(best, torch.tensor([[0.5, 1 / 3, 0.5, 0.36, 0.0]]), atol=1e-7, rtol=0)
        assert matched.tolist() == [[0, 0, 1, 1, 0]]
        assert low.tolist() == [[True, False, True, False, False]]


def test_bad_shapes_are_refused():
    gt = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="gt_valid must be bool"):
        ops.best_matches(gt, torch.ones(2, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"boxes must be \[A, 4\]"):
        ops.best_matches(gt, torch.ones(2, 3, dtype=torch.bool), torch.zeros(3, 5, 4))
