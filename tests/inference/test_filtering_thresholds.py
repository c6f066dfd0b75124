"""Post-processing at its thresholds: a score equal to ``test.score_thresh`` is kept, and a soft
mask pixel equal to ``test.mask_thresh`` is foreground (``>=``, the rule of ``MaskList.threshold``
and of the threshold-tuning sweep, so that tuned thresholds reproduce the tuned score).
"""
import torch

from maskrcnn import config
from maskrcnn.inference.filtering import filter_predictions
from maskrcnn.structures import Instances, MaskList


def _instances(dense, scores):
    ml = MaskList.from_dense(dense)
    n = dense.shape[0]
    return Instances(tuple(dense.shape[1:]), ml.tight_boxes(), torch.zeros(n, dtype=torch.long),
                     torch.tensor(scores, dtype=torch.float32), ml)


def _cfg(**kw):
    return config.TestConfig(**{"score_thresh": (0.5,), "mask_thresh": (0.5,), "min_area": (0,), "image_class": "none",
                                **kw})


def test_a_score_at_the_threshold_is_kept():
    d = torch.zeros(3, 20, 20)
    d[0, 0:4, 0:4] = d[1, 8:12, 8:12] = d[2, 14:18, 0:4] = 0.9
    out = filter_predictions(_instances(d, [0.5, 0.4999, 0.75]), _cfg(score_thresh=(0.5,)))
    assert out.scores.tolist() == [0.75, 0.5]
    thr = float(torch.tensor(0.3, dtype=torch.float32))  # a float32 score equal to a float64 threshold
    out = filter_predictions(_instances(d, [thr, 0.2, 0.75]), _cfg(score_thresh=(thr,)))
    assert len(out) == 2


def test_a_mask_value_at_the_threshold_is_foreground():
    d = torch.zeros(1, 10, 10)
    d[0, 2:6, 2:6] = 0.5  # exactly the threshold: 16 px in
    d[0, 6, 2:6] = 0.4999  # just under: out
    out = filter_predictions(_instances(d, [0.9]), _cfg(mask_thresh=(0.5,)))
    assert out.masks.areas().tolist() == [16.0]
    torch.testing.assert_close(out.boxes, torch.tensor([[2.0, 2.0, 6.0, 6.0]]))
