"""Validation scores with exact expected values: a stand-in model whose predictions are known,
images with and without ground truth, and the score worked out by hand from the Kaggle rules.

``kaggle_score_by_hand`` is a brute-force dense metric, the oracle of the trainer's validation
record in ``tests/engine/test_trainer.py``.
"""
import numpy as np
import pytest
import torch
from torch import nn

from maskrcnn import config
from maskrcnn.engine.validate import run_validation
from maskrcnn.structures import Instances, MaskList, Sample

S = 16


def _square(x0, y0, w, h):
    m = torch.zeros(S, S, dtype=torch.bool)
    m[y0:y0 + h, x0:x0 + w] = True
    return m


def _instances(masks, scores=None):
    if not masks:
        return Instances.empty((S, S), with_scores=scores is not None, with_masks=True)
    dense = torch.stack(masks)
    ml = MaskList.from_dense(dense if scores is None else dense.float())
    sc = None if scores is None else torch.tensor(scores)
    return Instances((S, S), ml.tight_boxes(), torch.zeros(len(masks), dtype=torch.long), sc, ml)


# (ground truth, prediction, class): the prediction is what the stand-in returns for the image.
CASES = [
    ([_square(1, 1, 4, 4), _square(8, 8, 5, 5)], [_square(1, 1, 4, 4), _square(8, 8, 5, 5)], "a"),  # perfect: 1
    ([], [], "a"),                                                                                # nothing, none: 1
    ([], [_square(2, 2, 3, 3)], "b"),                                                             # a false positive: 0
    ([_square(4, 4, 4, 4)], [_square(4, 4, 4, 3)], "b"),  # IoU 12 / 16 = 0.75: TP at t < 0.75 only: 0.5
]


class _Dataset(torch.utils.data.Dataset):
    def __len__(self):
        return len(CASES)

    def __getitem__(self, i):
        gt, _, cls = CASES[i]
        image = torch.full((1, S, S), 0.5)
        image[0, 0, 0] = i / 10.0  # tells the stand-in which image it sees
        return Sample(image, _instances(gt), f"img{i}", {"cell_type": cls})


class _KnownPredictions(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        out = []
        for im in images:
            _, pred, _ = CASES[int(round(float(im[0, 0, 0]) * 10))]
            out.append(_instances(pred, [0.9] * len(pred)))
        return out


@pytest.mark.parametrize("batch_size", [1, 3])
def test_validation_scores_known_predictions_exactly(batch_size):
    scores = run_validation(_KnownPredictions(), _Dataset(), config.TestConfig(score_thresh=(0.5,)), torch.device("cpu"),
                            batch_size=batch_size)
    # Per image: 1, 1, 0, 0.5 -> mAP = 2.5 / 4. At t = 0.50 the last image matches (1, 1, 0, 1);
    # at t = 0.75 it does not (IoU 0.75 is not > 0.75): (1, 1, 0, 0).
    assert scores["val/mAP"] == pytest.approx(0.625)
    assert scores["val/mAP@0.50"] == pytest.approx(0.75) and scores["val/mAP@0.70"] == pytest.approx(0.75)
    assert scores["val/mAP@0.75"] == pytest.approx(0.5) and scores["val/mAP@0.95"] == pytest.approx(0.5)
    assert scores["val/mAP/a"] == pytest.approx(1.0) and scores["val/mAP/b"] == pytest.approx(0.25)
    assert scores["val/num_images"] == 4


def test_validation_applies_the_test_score_threshold():
    # Predictions score 0.9: a threshold of 0.95 removes them all -> images with GT score 0, the
    # two without GT score 1 (nothing claimed, nothing to find): mAP 2 / 4.
    scores = run_validation(_KnownPredictions(), _Dataset(), config.TestConfig(score_thresh=(0.95,)), torch.device("cpu"))
    assert scores["val/mAP"] == pytest.approx(0.5)


# ------------------------------------------------------------------------ brute-force metric
def kaggle_score_by_hand(pred: np.ndarray, gt: np.ndarray) -> float:
    """Kaggle score of one image from dense masks ``[P, H, W]`` and ``[G, H, W]``, pair by pair.

    At each threshold t, pairs with IoU > t are matched one to one, best IoU first (the
    sequential greedy), and precision(t) = TP / (P + G - TP); no prediction and no GT scores 1.
    """
    P, G = len(pred), len(gt)
    if P == 0 and G == 0:
        return 1.0
    pairs = []
    for i in range(P):  # a test oracle: loops over the few objects
        for j in range(G):
            inter = int(np.logical_and(pred[i], gt[j]).sum())
            union = int(np.logical_or(pred[i], gt[j]).sum())
            pairs.append((inter, union, i, j))
    precisions = []
    for t_pct in range(50, 100, 5):
        used_p, used_g, tp = set(), set(), 0
        for inter, union, i, j in sorted(pairs, key=lambda q: (-q[0] / max(q[1], 1), q[2], q[3])):
            if 100 * inter > t_pct * union and i not in used_p and j not in used_g:
                used_p.add(i)
                used_g.add(j)
                tp += 1
        precisions.append(tp / (P + G - tp))
    return float(np.mean(precisions))


def test_brute_force_metric_on_the_cases_above():
    got = [kaggle_score_by_hand(np.stack([m.numpy() for m in p]) if p else np.zeros((0, S, S), bool),
                                np.stack([m.numpy() for m in g]) if g else np.zeros((0, S, S), bool))
           for g, p, _ in CASES]
    assert got == pytest.approx([1.0, 1.0, 0.0, 0.5])
