import numpy as np
import pytest
import torch

from maskrcnn.evaluation.kaggle import (
    KaggleEvaluator,
    THRESHOLDS_PCT,
    greedy_match,
    image_precisions,
    image_score,
)
from maskrcnn.structures import Instances, MaskList
from tests.evaluation.shapes import dense, jittered_case, rect

H, W = 40, 48


# ------------------------------------------------------------------ hand-computed cases
def test_perfect_prediction_scores_one():
    gt = dense([rect(H, W, 2, 12, 3, 13), rect(H, W, 20, 30, 20, 34), rect(H, W, 0, 3, 40, 48)])
    assert image_score(gt, gt) == 1.0


def test_shifted_cell():
    # 10x10 square shifted 2 px: inter 80, union 120, IoU 2/3 -> matches at 0.50..0.65 (4 of 10).
    gt = dense(rect(H, W, 5, 15, 5, 15))
    pred = dense(rect(H, W, 5, 15, 7, 17))
    np.testing.assert_array_equal(image_precisions(pred, gt), [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert image_score(pred, gt) == pytest.approx(0.4)


def test_iou_exactly_half_does_not_match():
    gt = dense(rect(H, W, 0, 10, 0, 10))  # 100 px
    pred = dense(rect(H, W, 0, 5, 0, 10))  # 50 px inside: IoU = 50 / 100 = 0.5 exactly
    # No match at 0.5: TP 0, FP 1, FN 1.
    assert image_score(pred, gt) == 0.0


def test_iou_exactly_three_quarters():
    gt = dense(rect(H, W, 0, 10, 0, 10))  # 100 px
    pred = rect(H, W, 0, 5, 0, 10) | rect(H, W, 5, 10, 0, 5)  # 75 px inside: IoU 0.75 exactly
    np.testing.assert_array_equal(image_precisions(dense(pred), gt), [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])


@pytest.mark.parametrize("pct", [55, 60, 65, 70, 80, 85, 90, 95])
def test_iou_exactly_at_each_threshold(pct):
    # 100-px ground truth, prediction = the first `pct` pixels of it: IoU = pct / 100 exactly.
    gt = dense(rect(H, W, 0, 10, 0, 10))
    first = np.zeros(100, dtype=bool)
    first[:pct] = True
    pred = np.zeros((H, W), dtype=bool)
    pred[:10, :10] = first.reshape(10, 10)
    prec = image_precisions(dense(pred), gt)
    expected = (pct > THRESHOLDS_PCT).astype(float)
    np.testing.assert_array_equal(prec, expected)


def test_split_cell():
    # One 10x20 cell predicted as two pieces of 140 and 60 px: IoU 0.7 and 0.3.
    gt = dense(rect(H, W, 0, 10, 0, 20))
    pred = dense([rect(H, W, 0, 10, 0, 14), rect(H, W, 0, 10, 14, 20)])
    # t in 0.50..0.65: TP 1, FP 1, FN 0 -> 1/2; t >= 0.70: TP 0 -> 0/3.
    np.testing.assert_allclose(image_precisions(pred, gt), [0.5] * 4 + [0] * 6)
    assert image_score(pred, gt) == pytest.approx(0.2)


def test_merged_cells():
    # Two touching 10x10 cells predicted as one 10x20 mask: IoU 0.5 with each -> no match.
    gt = dense([rect(H, W, 0, 10, 0, 10), rect(H, W, 0, 10, 10, 20)])
    pred = dense(rect(H, W, 0, 10, 0, 20))
    assert image_score(pred, gt) == 0.0
    # Merged mask that covers one cell and a third of the other: IoU 100/130 with the first.
    pred = dense(rect(H, W, 0, 10, 0, 13))
    # matches at t < 0.769: 0.50..0.75 (6 thresholds): TP 1, FP 0, FN 1 -> 1/2.
    np.testing.assert_allclose(image_precisions(pred, gt), [0.5] * 6 + [0] * 4)


def test_one_missed_and_one_false_positive():
    gt = dense([rect(H, W, 0, 10, 0, 10), rect(H, W, 20, 30, 20, 30)])
    pred = dense([rect(H, W, 0, 10, 0, 10), rect(H, W, 30, 40, 35, 45)])
    assert image_score(pred, gt) == pytest.approx(1 / 3)  # TP 1, FP 1, FN 1 at every threshold


def test_empty_images():
    gt = dense(rect(H, W, 0, 10, 0, 10))
    none = MaskList.empty((H, W))
    assert image_score(none, gt) == 0.0  # ground truth, no prediction
    assert image_score(gt, none) == 0.0  # prediction, no ground truth
    assert image_score(none, none) == 1.0  # documented: nothing to find and nothing claimed


def test_empty_predicted_mask_is_a_false_positive():
    gt = dense(rect(H, W, 0, 10, 0, 10))
    pred = MaskList.cat([gt, MaskList(torch.zeros(1, 3, 3, dtype=torch.bool), torch.tensor([[5, 5]]), (H, W))])
    assert image_score(pred, gt) == pytest.approx(0.5)


def test_overlapping_ground_truth_is_matched_one_to_one():
    a = rect(H, W, 0, 10, 0, 10)
    # A duplicated annotation: one prediction can match only one of the two copies.
    gt = dense([a, a])
    assert image_score(dense(a), gt) == pytest.approx(0.5)  # TP 1, FN 1
    assert image_score(dense([a, a]), gt) == 1.0  # two predictions, two matches
    # Overlapping (not identical) cells: g1 = 10x10, g2 = g1 shifted 1 px; the prediction equals g1
    # (IoU 1 with g1, 90/110 with g2): it counts once, with g1; g2 is missed.
    g2 = rect(H, W, 0, 10, 1, 11)
    np.testing.assert_allclose(image_precisions(dense(a), dense([g2, a])), [0.5] * 10)


def test_soft_masks_are_thresholded():
    gt = dense(rect(H, W, 0, 10, 0, 10))
    soft = torch.zeros(1, H, W)
    soft[0, :10, :10] = 0.7
    soft[0, 10:20, :10] = 0.3  # below 0.5: not part of the mask
    pred = MaskList.from_dense(soft)
    assert pred.is_soft
    assert image_score(pred, gt) == 1.0
    assert image_score(pred, gt, mask_threshold=0.25) == 0.0  # now 200 px: IoU exactly 0.5


def test_instances_are_accepted_and_need_masks():
    gt = dense(rect(H, W, 0, 10, 0, 10))
    inst = Instances((H, W), torch.tensor([[0.0, 0, 10, 10]]), torch.zeros(1, dtype=torch.long), torch.ones(1), gt)
    assert image_score(inst, inst) == 1.0
    with pytest.raises(ValueError, match="without masks"):
        image_score(inst.replace(masks=None), gt)


def test_image_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="size"):
        image_score(dense(rect(10, 10, 0, 5, 0, 5)), dense(rect(H, W, 0, 5, 0, 5)))


# --------------------------------------------------------------- against a plain reference
def reference_precisions(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The obvious implementation: dense IoU, per threshold a sequential greedy by IoU."""
    P, G = len(pred), len(gt)
    inter = np.zeros((P, G))
    union = np.zeros((P, G))
    for i in range(P):
        for j in range(G):
            inter[i, j] = np.logical_and(pred[i], gt[j]).sum()
            union[i, j] = np.logical_or(pred[i], gt[j]).sum()
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    out = []
    for pct in range(50, 100, 5):
        t = pct / 100
        pairs = sorted(((-iou[i, j], i, j) for i in range(P) for j in range(G) if iou[i, j] > t))
        used_p, used_g, tp = set(), set(), 0
        for _, i, j in pairs:
            if i not in used_p and j not in used_g:
                used_p.add(i)
                used_g.add(j)
                tp += 1
        denom = P + G - tp
        out.append(tp / denom if denom else 1.0)
    return np.array(out)


@pytest.mark.parametrize("seed", range(6))
def test_matches_dense_reference_on_random_masks(seed):
    h, w = 64, 80
    pred, gt = jittered_case(seed, h, w)  # jittered copies of some GT cells plus random extras
    ours = image_precisions(dense(pred, (h, w)), dense(gt, (h, w)))
    np.testing.assert_allclose(ours, reference_precisions(pred, gt), rtol=0, atol=1e-12)


def sequential_greedy(p, g, iou):
    order = sorted(range(len(p)), key=lambda e: (-iou[e], p[e], g[e]))
    used_p, used_g, sel = set(), set(), np.zeros(len(p), dtype=bool)
    for e in order:
        if p[e] not in used_p and g[e] not in used_g:
            used_p.add(p[e])
            used_g.add(g[e])
            sel[e] = True
    return sel


@pytest.mark.parametrize("seed", range(20))
def test_greedy_match_equals_sequential_greedy_with_ties(seed):
    rng = np.random.default_rng(seed)
    pairs = {(int(a), int(b)) for a, b in rng.integers(0, 6, size=(int(rng.integers(1, 20)), 2))}
    p = np.array([a for a, _ in pairs])
    g = np.array([b for _, b in pairs])
    union = np.full(len(p), 10)
    inter = rng.integers(6, 11, size=len(p))  # few distinct values: many ties
    sel = greedy_match(p, g, inter, union)
    np.testing.assert_array_equal(sel, sequential_greedy(p, g, inter / union))


# -------------------------------------------------------------------------- evaluator
def test_evaluator_means_per_image_scores_and_per_class():
    ev = KaggleEvaluator()
    a = dense(rect(H, W, 0, 10, 0, 10))
    many = dense([rect(H, W, 0, 5, 5 * k, 5 * k + 4) for k in range(9)])
    ev.add("perfect", many, many, class_name="shsy5y")  # 9 cells, score 1
    ev.add("miss", MaskList.empty((H, W)), a, class_name="astro")  # score 0
    ev.add("shift", dense(rect(H, W, 5, 15, 7, 17)), dense(rect(H, W, 5, 15, 5, 15)), class_name="astro")  # 0.4
    s = ev.summary()
    assert s["num_images"] == 3
    assert s["mAP"] == pytest.approx((1 + 0 + 0.4) / 3)  # not pooled counts (those would give ~0.82)
    assert s["per_class"] == pytest.approx({"astro": 0.2, "shsy5y": 1.0})
    assert s["per_class_num_images"] == {"astro": 2, "shsy5y": 1}
    assert np.mean(s["per_threshold"]) == pytest.approx(s["mAP"])
    assert s["per_threshold"][0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="already"):
        ev.add("miss", a, a)


def test_evaluator_without_images():
    s = KaggleEvaluator().summary()
    assert s["num_images"] == 0 and np.isnan(s["mAP"])
