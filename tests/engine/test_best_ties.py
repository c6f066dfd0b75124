"""A tie in the validation score keeps the earlier best checkpoint (``>``, not ``>=``): a later model
with the same score is no better, and the reported best iteration must not drift to it.

The stand-in's eval predictions do not depend on its weights, so every validation scores the same.
Worked out: validation every 2 iterations of 6 -> at 2, 4 and 6, all equal: the best stays at 2.
"""
import os

import torch

from maskrcnn.inference.checkpoint import load_checkpoint
from maskrcnn.engine.curves import read_metrics
from maskrcnn.engine.trainer import Trainer
from maskrcnn.structures import Instances, MaskList
from tests.engine.standins import TinyDataset, TinyModel, tiny_config

torch.set_num_threads(1)


class _Constant(TinyModel):
    """Trains like TinyModel; predicts one instance, the bright pixels of the image, whatever its weights
    (a perfect prediction for the images that hold one cell)."""

    def forward(self, images, targets=None):
        if self.training:
            return super().forward(images, targets)
        out = []
        for im in images:
            h, w = im.shape[-2:]
            masks = MaskList((im[:1] > 0.5).float(), torch.zeros(1, 2, dtype=torch.long), (h, w))
            out.append(Instances((h, w), torch.tensor([[0.0, 0.0, float(w), float(h)]]), torch.zeros(1, dtype=torch.long),
                                 torch.tensor([0.9]), masks))
        return out


def test_a_tied_validation_score_keeps_the_first_best(tmp_path):
    cfg = tiny_config(str(tmp_path), "train.eval_period=2")
    out = Trainer(cfg, model=_Constant(), train_dataset=TinyDataset(5), val_dataset=TinyDataset(3, seed=1),
                  progress=False).train()
    scores = [r["val/mAP"] for r in read_metrics(os.path.join(tmp_path, "metrics.jsonl")) if "val/mAP" in r]
    assert len(scores) == 3 and len(set(scores)) == 1 and scores[0] > 0  # a real, tied score
    assert out["best_iteration"] == 2 and out["best_score"] == scores[0]
    assert load_checkpoint(os.path.join(tmp_path, "model_best.pth"))["iteration"] == 2
