"""The model's numbers against values worked out by hand (never taken from the code under test).

Box encode/decode on non-square boxes with asymmetric weights, anchor widths and heights per
level and aspect ratio (and with two scales per octave), RPN and RoI sampling counts, labels and
losses on small hand-built cases, mask targets (RoIAlign of a GT crop), box inference (decode,
clip, score threshold, per-class NMS), FPN level assignment through the built pooler, and the
mapping of detections back to the input image. Each case says how its numbers were obtained.
"""
import math

import pytest
import torch

from maskrcnn.model import build_model
from maskrcnn.model.anchors import AnchorGenerator
from maskrcnn.model.box_coder import decode_boxes, encode_boxes
from maskrcnn.model.mask_head import mask_probabilities, mask_targets
from maskrcnn.model.matching import match_boxes
from maskrcnn.model.roi_heads import RoIHeads, box_inference, box_losses
from maskrcnn.model.rpn import rpn_losses
from maskrcnn.structures import MaskList, clip_boxes
from tests.model.helpers import disks_sample, tiny_model_config

S2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------------- box coder
def test_encode_non_square_boxes_with_asymmetric_weights():
    # reference (10, 20, 30, 60): w 20, h 40, centre (20, 40); target (14, 10, 44, 90): w 30, h 80,
    # centre (29, 50). Weights (wx, wy, ww, wh) = (10, 5, 2, 1):
    # dx = 10 * 9 / 20 = 4.5, dy = 5 * 10 / 40 = 1.25, dw = 2 ln(30 / 20), dh = 1 ln(80 / 40).
    ref = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    tgt = torch.tensor([[14.0, 10.0, 44.0, 90.0]])
    got = encode_boxes(ref, tgt, (10.0, 5.0, 2.0, 1.0))
    torch.testing.assert_close(got, torch.tensor([[4.5, 1.25, 2 * math.log(1.5), math.log(2.0)]]))


def test_decode_non_square_boxes_with_asymmetric_weights():
    # Same reference and weights; deltas (1, -2, 0, ln 3): centre (20 + 1/10 * 20, 40 - 2/5 * 40)
    # = (22, 24), w = 20, h = 40 * 3 = 120 -> (12, -36, 32, 84). A second class's deltas
    # (0, 0, 2 ln 2, 0): w = 20 * exp(ln 2) = 40 about the same centre (20, 40) -> (0, 20, 40, 60).
    ref = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    deltas = torch.tensor([[1.0, -2.0, 0.0, math.log(3.0), 0.0, 0.0, 2 * math.log(2.0), 0.0]])
    got = decode_boxes(deltas, ref, (10.0, 5.0, 2.0, 1.0))
    torch.testing.assert_close(got, torch.tensor([[12.0, -36.0, 32.0, 84.0, 0.0, 20.0, 40.0, 60.0]]))


def test_decode_clamps_growth_at_1000_over_16():
    # A huge dw grows a 20-px box to 20 * 1000 / 16 = 1250 px, centred at 10.
    got = decode_boxes(torch.tensor([[0.0, 0.0, 100.0, 0.0]]), torch.tensor([[0.0, 0.0, 20.0, 20.0]]), (1, 1, 1, 1))
    torch.testing.assert_close(got, torch.tensor([[10.0 - 625.0, 0.0, 10.0 + 625.0, 20.0]]))


def test_clip_boxes_on_a_non_square_image():
    # Image 50 high, 100 wide: x in [0, 100], y in [0, 50].
    got = clip_boxes(torch.tensor([[-5.0, -5.0, 120.0, 80.0], [60.0, 40.0, 99.0, 49.0]]), (50, 100))
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.0, 100.0, 50.0], [60.0, 40.0, 99.0, 49.0]]))


# ------------------------------------------------------------------------------------- anchors
def _wh(anchors):
    return torch.stack([anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]], 1)


def test_anchor_widths_and_heights_per_level_and_ratio():
    # Ratio r = h / w at area S^2: (w, h) = (S / sqrt(r), S sqrt(r)).
    # P2 (S = 8): r 0.5 -> (8 sqrt2, 4 sqrt2); r 1 -> (8, 8); r 2 -> (4 sqrt2, 8 sqrt2).
    gen = AnchorGenerator([8, 16, 32, 64, 128], [0.5, 1.0, 2.0], [4, 8, 16, 32, 64])
    anchors = gen([torch.zeros(1, 1, 2, 3)] * 5)
    assert gen.num_anchors == 3
    torch.testing.assert_close(_wh(anchors[0][:3]), torch.tensor([[8 * S2, 4 * S2], [8.0, 8.0], [4 * S2, 8 * S2]]))
    for level, size in enumerate([8.0, 16.0, 32.0, 64.0, 128.0]):
        a = anchors[level]
        assert a.shape == (2 * 3 * 3, 4)
        want = torch.tensor([[size * S2, size / S2], [size, size], [size / S2, size * S2]]).repeat(6, 1)
        torch.testing.assert_close(_wh(a), want)
        # cell (y=1, x=2) at ((2 + 0) * stride, (1 + 0) * stride) with offset 0
        stride = 4 * 2 ** level
        centre = (a[(1 * 3 + 2) * 3 + 1, :2] + a[(1 * 3 + 2) * 3 + 1, 2:]) / 2
        torch.testing.assert_close(centre, torch.tensor([2.0 * stride, 1.0 * stride]))


def test_anchor_sizes_with_two_scales_per_octave():
    # Sizes S and S sqrt2 per level, sizes outer, ratios inner: at P2 (S = 8, S sqrt2 = 8 sqrt2)
    # widths 8 sqrt2, 8, 4 sqrt2, 16, 8 sqrt2, 8 and heights 4 sqrt2, 8, 8 sqrt2, 8, 8 sqrt2, 16.
    gen = AnchorGenerator([8, 16, 32, 64, 128], [0.5, 1.0, 2.0], [4, 8, 16, 32, 64], scales_per_octave=2)
    assert gen.num_anchors == 6
    a = gen([torch.zeros(1, 1, 1, 1)] * 5)
    want_p2 = torch.tensor([[8 * S2, 4 * S2], [8.0, 8.0], [4 * S2, 8 * S2], [16.0, 8.0], [8 * S2, 8 * S2], [8.0, 16.0]])
    torch.testing.assert_close(_wh(a[0]), want_p2)
    torch.testing.assert_close(_wh(a[4]), want_p2 * 16)  # P6: S = 128


def test_built_model_has_one_rpn_output_per_anchor():
    cfg = tiny_model_config("model.anchors.scales_per_octave=2", "model.anchors.sizes=[16,32,64,128,256]")
    model = build_model(cfg)
    feats = [torch.zeros(1, cfg.fpn.out_channels, 8 // 2 ** i + 1, 10 // 2 ** i + 1) for i in range(5)]
    logits, deltas = model.rpn.head(feats)
    anchors = model.rpn.anchor_generator(feats)
    for lg, dl, an in zip(logits, deltas, anchors):
        assert lg.shape[1] == an.shape[0] == dl.shape[1]
    # P3 with sizes 32 and 32 sqrt2: the square anchors are 32 and 45.25 wide.
    torch.testing.assert_close(_wh(anchors[1][[1, 4]]), torch.tensor([[32.0, 32.0], [32 * S2, 32 * S2]]))


# -------------------------------------------------------------------------------------------- RPN
GT_RPN = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 120.0, 120.0], [500.0, 500.0, 510.0, 510.0]])
ANCHORS_RPN = torch.tensor([
    [0.0, 0.0, 10.0, 10.0],          # IoU 1 with gt 0: foreground
    [0.0, 0.0, 10.0, 13.0],          # IoU 100 / 130 = 0.77 >= 0.7: foreground
    [0.0, 0.0, 10.0, 20.0],          # IoU 0.5: between 0.3 and 0.7, ignored
    [200.0, 200.0, 210.0, 210.0],    # background
    [100.0, 100.0, 110.0, 110.0],    # IoU 100 / 400 = 0.25 with gt 1, its best anchor: foreground (low quality)
    [300.0, 300.0, 310.0, 310.0],    # background
])  # gt 2 overlaps no anchor: it must not make anything foreground


def _smooth_l1(x, beta):
    x = abs(x)
    return 0.5 * x * x / beta if x < beta else x - 0.5 * beta


def test_rpn_labels_on_a_hand_built_case():
    matched, labels = match_boxes(GT_RPN, ANCHORS_RPN, 0.7, 0.3, allow_low_quality=True)
    assert labels.tolist() == [1, 1, -1, 0, 1, 0]
    assert matched[[0, 1, 4]].tolist() == [0, 0, 1]


@pytest.mark.parametrize("batch_size, fraction, n_pos, n_neg", [(8, 0.5, 3, 2), (4, 0.5, 2, 2), (8, 0.25, 2, 2)])
def test_rpn_losses_on_a_hand_built_case(batch_size, fraction, n_pos, n_neg):
    # Two identical images. Objectness logits all L = 1.5, so that a sampled positive costs
    # softplus(-L) and a negative softplus(L) whichever are drawn; 3 positives, 1 ignored, 2 negatives.
    # Sampled: min(3, batch * fraction) positives, min(2, batch - positives) negatives.
    B, L, beta = 2, 1.5, 1.0 / 9.0
    logits = torch.full((B, 6), L)
    deltas = torch.zeros(B, 6, 4)
    out = rpn_losses(logits, deltas, ANCHORS_RPN, [GT_RPN, GT_RPN], 0.7, 0.3, batch_size, fraction, beta)
    sp = lambda v: math.log1p(math.exp(v))
    want_cls = B * (n_pos * sp(-L) + n_neg * sp(L)) / (batch_size * B)
    assert float(out["loss_rpn_cls"]) == pytest.approx(want_cls, rel=1e-5)
    if n_pos == 3:
        # Targets with weights (1, 1, 1, 1), predicted deltas 0:
        # anchor 0 -> gt 0: (0, 0, 0, 0); anchor 1 (w 10, h 13, centre (5, 6.5)) -> gt 0 (centre (5, 5)):
        # (0, -1.5 / 13, 0, ln(10 / 13)); anchor 4 (w 10, centre 105) -> gt 1 (w 20, centre 110):
        # (0.5, 0.5, ln 2, ln 2).
        per_image = sum(_smooth_l1(v, beta) for v in (-1.5 / 13, math.log(10 / 13), 0.5, 0.5, math.log(2), math.log(2)))
        assert float(out["loss_rpn_box"]) == pytest.approx(B * per_image / (batch_size * B), rel=1e-5)


# ------------------------------------------------------------------------------------ RoI heads
GT_ROI = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0]])
GT_ROI_LABELS = torch.tensor([1, 0])
PROPOSALS = torch.tensor([
    [0.0, 0.0, 10.0, 20.0],   # IoU exactly 0.5 with gt 0: foreground at fg_iou_thresh 0.5 -> class 1
    [1.0, 0.0, 10.0, 10.0],   # IoU 0.9 with gt 0 -> class 1
    [20.0, 20.0, 40.0, 34.0], # IoU 200 / 280 = 0.71 with gt 1 -> class 0
    [0.0, 0.0, 10.0, 21.0],   # IoU 100 / 210 < 0.5 -> background (class 2)
    [60.0, 60.0, 70.0, 70.0], # background
    [80.0, 80.0, 90.0, 90.0], # background
])
# Every candidate RoI (proposals, then the GT boxes appended) with its class and matched GT.
EXPECTED_CLASS = {tuple(b.tolist()): c for b, c in zip(torch.cat([PROPOSALS, GT_ROI]), [1, 1, 0, 2, 2, 2, 1, 0])}
EXPECTED_GT = {tuple(b.tolist()): g for b, g in zip(torch.cat([PROPOSALS, GT_ROI]), [0, 0, 1, -1, -1, -1, 0, 1])}


def _roi_heads(batch_size, fraction, append_gt=True):
    return RoIHeads(None, None, None, None, None, num_classes=2, batch_size_per_image=batch_size,
                    positive_fraction=fraction, fg_iou_thresh=0.5, bg_iou_thresh=0.5, proposal_append_gt=append_gt)


@pytest.mark.parametrize("batch_size, fraction, append_gt, n_fg, n_bg", [
    (64, 1.0, True, 5, 3),   # everything sampled: 3 foreground proposals + 2 GT boxes, 3 background
    (8, 0.25, True, 2, 3),   # at most 8 * 0.25 = 2 foreground, background fills up to 3 (all there is)
    (64, 1.0, False, 3, 3),  # without the GT boxes appended
])
def test_roi_sampling_counts_and_classes(batch_size, fraction, append_gt, n_fg, n_bg):
    rois, classes, matched, gt = _roi_heads(batch_size, fraction, append_gt).sample_proposals(
        [PROPOSALS], [GT_ROI], [GT_ROI_LABELS])
    assert bool((rois[:, 0] == 0).all()) and torch.equal(gt[0], GT_ROI)  # one image: index 0, its GT boxes
    rois = rois[:, 1:]
    assert int((classes < 2).sum()) == n_fg and int((classes == 2).sum()) == n_bg
    for box, c, m in zip(rois.tolist(), classes.tolist(), matched.tolist()):
        assert EXPECTED_CLASS[tuple(box)] == c, box
        if c < 2:
            assert EXPECTED_GT[tuple(box)] == m, box


def test_box_losses_on_a_hand_built_case():
    # Three RoIs: two foreground (classes 1 and 0), one background; logits 0 -> cross entropy ln 3.
    # Targets with (10, 10, 5, 5), predicted deltas 0 for the RoI's own class:
    #   RoI (0, 0, 10, 20) -> gt (0, 0, 10, 10): (0, 10 * (5 - 10) / 20, 0, 5 ln(1 / 2)) = (0, -2.5, 0, -3.466)
    #   RoI (2, 0, 12, 10) -> gt (0, 0, 10, 10): (10 * (5 - 7) / 10, 0, 0, 0) = (-2, 0, 0, 0)
    # L1 (beta 0), summed over foreground, divided by all 3 sampled RoIs.
    proposals = torch.tensor([[0.0, 0.0, 10.0, 20.0], [2.0, 0.0, 12.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    classes = torch.tensor([1, 0, 2])
    logits = torch.zeros(3, 3)
    deltas = torch.zeros(3, 8)
    deltas[0, 0:4] = 100.0  # the other class's deltas of RoI 0: must not be read
    deltas[1, 4:8] = 100.0
    out = box_losses(logits, deltas, classes, proposals, gt, (10.0, 10.0, 5.0, 5.0), 0.0)
    assert float(out["loss_cls"]) == pytest.approx(math.log(3.0), rel=1e-6)
    assert float(out["loss_box"]) == pytest.approx((2.5 + 5 * math.log(2) + 2.0) / 3, rel=1e-5)


def _square_gt():
    # A 4 x 4 cell at x in [2, 6), y in [3, 7) of a 10 x 10 image.
    dense = torch.zeros(1, 10, 10, dtype=torch.bool)
    dense[0, 3:7, 2:6] = True
    return MaskList.from_dense(dense)


@pytest.mark.parametrize("box, want_row, want_col", [
    # The box itself: 1-px bins sampled at pixel centres, all inside.
    ((2.0, 3.0, 6.0, 7.0), [1, 1, 1, 1], [1, 1, 1, 1]),
    # 8 px wide: 2-px bins with 2 samples each at pixels (0, 1), (2, 3), (4, 5), (6, 7) -> 0, 1, 1, 0.
    ((0.0, 3.0, 8.0, 7.0), [0, 1, 1, 0], [1, 1, 1, 1]),
    # 8 px tall: rows (1, 2), (3, 4), (5, 6), (7, 8) -> 0, 1, 1, 0 down the target.
    ((2.0, 1.0, 6.0, 9.0), [1, 1, 1, 1], [0, 1, 1, 0]),
    # Shifted half a bin: samples at pixels (1, 2) -> 0.5 (>= 0.5 counts), (3, 4) -> 1, (5, 6) -> 0.5, (7, 8) -> 0.
    ((1.0, 3.0, 9.0, 7.0), [1, 1, 1, 0], [1, 1, 1, 1]),
])
def test_mask_targets_of_a_square_cell(box, want_row, want_col):
    got = mask_targets(_square_gt(), torch.tensor([0]), torch.tensor([box]), 4)
    want = torch.tensor(want_col, dtype=torch.float32)[:, None] * torch.tensor(want_row, dtype=torch.float32)[None, :]
    torch.testing.assert_close(got[0], want)


def test_mask_probabilities_read_each_detections_class():
    logits = torch.arange(3.0)[None, :, None, None].expand(2, 3, 2, 2)  # channel c holds c
    got = mask_probabilities(logits, torch.tensor([2, 1]))
    torch.testing.assert_close(got[:, 0, 0], torch.sigmoid(torch.tensor([2.0, 1.0])))


# ------------------------------------------------------------------------------- box inference
def test_box_inference_against_hand_decoded_detections():
    # One image 50 high and 100 wide, two classes (+ background last), weights (10, 10, 5, 5).
    probs = torch.tensor([
        [0.70, 0.20, 0.10],  # p0: class 0 (0.7) kept; class 1 (0.2) under the threshold
        [1 / 3, 1 / 3, 1 / 3],  # p1: both at the threshold exactly: dropped (score must be >)
        [0.10, 0.60, 0.30],  # p2: class 1 (0.6), pushed past the right edge and clipped
        [0.60, 0.30, 0.10],  # p3: class 0 (0.6) on p0's decoded box: suppressed by p0 (same class)
        [0.05, 0.90, 0.05],  # p4: class 1 (0.9) on p0's decoded box: kept (another class)
    ])
    logits = probs.log()
    thresh = float(torch.softmax(logits, -1)[1, 0])  # the threshold is p1's score, exactly
    proposals = torch.tensor([[10.0, 10.0, 30.0, 20.0], [40.0, 30.0, 70.0, 45.0], [80.0, 5.0, 99.0, 25.0],
                              [12.0, 3.0, 32.0, 23.0], [12.0, 3.0, 32.0, 23.0]])
    deltas = torch.zeros(5, 8)
    # p0 class 0: (1, -2, 0, 5 ln 2): centre (20 + 20 / 10, 15 - 2 * 10 / 10) = (22, 13), w 20, h 10 * 2
    # -> (12, 3, 32, 23).
    deltas[0, 0:4] = torch.tensor([1.0, -2.0, 0.0, 5 * math.log(2.0)])
    # p2 class 1: dx = 10 -> centre x 89.5 + 19 = 108.5, w 19 -> (99, 5, 118, 25), clipped to x <= 100.
    deltas[2, 4:8] = torch.tensor([10.0, 0.0, 0.0, 0.0])
    (boxes, scores, labels), = box_inference(logits, deltas, [proposals], [(50, 100)], (10.0, 10.0, 5.0, 5.0),
                                             thresh, 0.5, 10)
    torch.testing.assert_close(boxes, torch.tensor([[12.0, 3.0, 32.0, 23.0], [12.0, 3.0, 32.0, 23.0],
                                                    [99.0, 5.0, 100.0, 25.0]]))
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, 0.6]))
    assert labels.tolist() == [1, 0, 1]
    (capped, _, _), = box_inference(logits, deltas, [proposals], [(50, 100)], (10.0, 10.0, 5.0, 5.0), thresh, 0.5, 2)
    assert capped.shape[0] == 2


# ------------------------------------------------------------------------------- whole model
def test_built_pooler_assigns_levels_by_box_size():
    # Constant feature maps (P2 = 1, P3 = 2, P4 = 3, P5 = 4): a box's pooled value names its level.
    # Level = floor(4 + log2(sqrt(area) / 224)), clamped to 2..5: 56 -> P2, 112 -> P3, 224 -> P4,
    # 447 -> P4, 448 -> P5, 20 -> P2.
    model = build_model(tiny_model_config())
    feats = [torch.full((1, 1, 512 // s, 512 // s), float(k + 1)) for k, s in enumerate((4, 8, 16, 32))]
    sizes = [56.0, 112.0, 224.0, 447.0, 448.0, 20.0]
    boxes = torch.tensor([[0.0, 0.0, s, s] for s in sizes])
    for pooler in (model.roi_heads.box_pooler, model.roi_heads.mask_pooler):
        out = pooler(feats, [boxes])
        assert out.mean(dim=(1, 2, 3)).tolist() == [1.0, 2.0, 3.0, 3.0, 4.0, 1.0]


def test_detections_are_mapped_back_to_the_input_pixels():
    # A detection at (20, 15, 60, 45) in an image resized by (sx, sy) = (2, 1.5) is (10, 10, 30, 30)
    # in the 40 x 50 (h x w) input; a mask of ones fills exactly that box.
    model = build_model(tiny_model_config())
    dets = [(torch.tensor([[20.0, 15.0, 60.0, 45.0]]), torch.tensor([0.9]), torch.tensor([1]), torch.ones(1, 28, 28))]
    (out,) = model.postprocess(dets, torch.tensor([[2.0, 1.5]]), [(40, 50)])
    torch.testing.assert_close(out.boxes, torch.tensor([[10.0, 10.0, 30.0, 30.0]]))
    torch.testing.assert_close(out.masks.threshold(0.5).tight_boxes(), torch.tensor([[10.0, 10.0, 30.0, 30.0]]))
    assert out.image_size == (40, 50) and out.labels.tolist() == [1]


def test_training_targets_are_moved_to_the_resized_image():
    # With model.input.scale 2 a 64 x 80 image is trained at 128 x 160: the RPN and RoI heads must
    # see the GT boxes doubled (and the mask targets stay in the original pixels).
    torch.manual_seed(0)
    model = build_model(tiny_model_config("model.input.scale=2.0"))
    image, gt = disks_sample(64, 80)
    seen = {}
    rpn_forward = model.rpn.forward

    def spy(features, image_sizes, gt_boxes=None):
        seen["sizes"], seen["boxes"] = list(image_sizes), [b.clone() for b in gt_boxes]
        return rpn_forward(features, image_sizes, gt_boxes)

    model.rpn.forward = spy
    model.train()
    losses = model([image], [gt])
    assert seen["sizes"] == [(128, 160)]
    torch.testing.assert_close(seen["boxes"][0], gt.boxes * 2)
    assert all(torch.isfinite(v) for v in losses.values())
