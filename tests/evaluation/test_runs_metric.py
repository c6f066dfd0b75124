"""Scoring CSV files works on run lists (RunMasks): the same pairs and scores as crops."""
import numpy as np
import pytest

from maskrcnn.evaluation.kaggle import candidate_pairs, image_precisions
from maskrcnn.evaluation.run_masks import RunMasks
from maskrcnn.formats.rle import encode
from tests.evaluation.shapes import dense, jittered_case
from tests.evaluation.test_kaggle import reference_precisions


def _runs(masks, H, W, order="row"):
    return RunMasks.from_rles([encode(m, order) for m in masks], H, W, order)


@pytest.mark.parametrize("seed", range(6))
def test_run_lists_give_the_pairs_and_scores_of_crops_and_of_the_dense_reference(seed):
    h, w = 64, 80
    pred, gt = jittered_case(seed, h, w)
    crops = candidate_pairs(dense(pred, (h, w)), dense(gt, (h, w)))
    for order in ("row", "col"):
        runs = candidate_pairs(_runs(pred, h, w, order), _runs(gt, h, w, "row"))
        for field in ("pred_idx", "gt_idx", "inter", "union"):
            np.testing.assert_array_equal(np.sort(getattr(runs, field)), np.sort(getattr(crops, field)))
        mixed = candidate_pairs(dense(pred, (h, w)), _runs(gt, h, w, order))  # a MaskList against runs
        np.testing.assert_array_equal(np.sort(mixed.inter), np.sort(crops.inter))
        np.testing.assert_allclose(image_precisions(_runs(pred, h, w, order), _runs(gt, h, w, order)),
                                   reference_precisions(pred, gt), rtol=0, atol=1e-12)


def test_iou_exactly_half_is_not_a_candidate_on_run_lists():
    H, W = 6, 8
    gt = np.zeros((1, H, W), dtype=bool)
    gt[0, 1:3, 1:5] = True  # 8 pixels
    half = np.zeros((1, H, W), dtype=bool)
    half[0, [1, 1, 2, 2], [1, 4, 2, 3]] = True  # 4 pixels spanning gt's box: IoU 4 / 8 = 0.5 exactly
    more = half.copy()
    more[0, 1, 2] = True  # 5 pixels: IoU 5 / 8 > 0.5
    assert len(candidate_pairs(_runs(half, H, W), _runs(gt, H, W)).pred_idx) == 0
    c = candidate_pairs(_runs(more, H, W), _runs(gt, H, W))
    assert (c.inter.tolist(), c.union.tolist()) == ([5], [8])
