"""The documented contract of ``candidate_pairs``: the pairs with IoU > 0.5, exactly (a pair at
0.5 can never match at any threshold, so it is not a candidate)."""
import numpy as np

from maskrcnn.evaluation.kaggle import candidate_pairs, image_score
from tests.evaluation.shapes import dense, rect

H, W = 40, 48


def test_candidate_pairs_are_those_above_one_half():
    gt = dense([rect(H, W, 0, 10, 0, 10), rect(H, W, 20, 30, 20, 30)])
    # A checkerboard of gt 0's square: 50 of its 100 pixels, IoU 0.5 exactly, although the two
    # tight boxes coincide (so the box bound cannot rule the pair out). Then IoU 100 / 110.
    checker = rect(H, W, 0, 10, 0, 10) & ((np.add.outer(np.arange(H), np.arange(W)) % 2) == 0)
    pred = dense([checker, rect(H, W, 20, 30, 20, 31)])
    c = candidate_pairs(pred, gt)
    assert c.pred_idx.tolist() == [1] and c.gt_idx.tolist() == [1]
    assert c.inter.tolist() == [100] and c.union.tolist() == [110]
    # The pair at 0.5 counts at no threshold: TP 1 of 2 predictions and 2 GT objects at t < 100/110.
    assert image_score(pred, gt) == np.mean([1 / 3] * 9 + [0.0])
