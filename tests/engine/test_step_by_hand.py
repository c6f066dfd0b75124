"""One optimiser step worked out by hand: the loss components, accumulation and the learning rate.

A one-parameter stand-in with losses ``p`` and ``2 p`` has the gradient 3 whatever the images; one
SGD step (no momentum, no weight decay, no warmup) at lr 0.1 takes p = 1 to 0.7, with or without
accumulation over micro-batches (each divided by ``accum_steps``).
"""
import pytest
import torch
from torch import nn

from maskrcnn.config import load_config
from maskrcnn.inference.checkpoint import load_checkpoint
from maskrcnn.engine.trainer import Trainer
from tests.engine.standins import TinyDataset
from tests.engine.test_fp16_resume import OverflowModel

torch.set_num_threads(1)


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1))

    def forward(self, images, targets=None):
        return {"loss_mask": self.p.sum(), "loss_cls": 2 * self.p.sum()}


def _cfg(out, batch_size=2, accum=1, **solver):
    overrides = [f"train.output_dir={out}", "train.device=cpu", "train.eval_period=0", "train.checkpoint_period=1",
                 f"data.batch_size={batch_size}", "data.num_workers=0", "solver.max_iter=1", "solver.steps=[1]",
                 "solver.warmup_iters=0", "solver.momentum=0.0", "solver.weight_decay=0.0", "solver.lr=0.1",
                 f"solver.accum_steps={accum}"] + [f"solver.{k}={v}" for k, v in solver.items()]
    return load_config(None, overrides)


@pytest.mark.parametrize("batch_size, accum", [(2, 1), (1, 2), (1, 3)])
def test_one_sgd_step_by_hand(tmp_path, batch_size, accum):
    model = _Linear()
    Trainer(_cfg(tmp_path, batch_size, accum), model=model, train_dataset=TinyDataset(4), progress=False).train()
    assert float(model.p.detach()) == pytest.approx(1.0 - 0.1 * 3.0)
    assert load_checkpoint(str(tmp_path / "model_final.pth"))["scheduler"]["last_epoch"] == 1


def test_warmup_starts_the_first_step_at_the_warmup_factor(tmp_path):
    # Warmup from factor 0.25: the first step uses lr 0.1 * 0.25.
    model = _Linear()
    cfg = _cfg(tmp_path, warmup_iters=1, warmup_factor=0.25)
    Trainer(cfg, model=model, train_dataset=TinyDataset(4), progress=False).train()
    assert float(model.p.detach()) == pytest.approx(1.0 - 0.025 * 3.0)


def _one_step(tmp_path, batch_size, accum):
    cfg = _cfg(tmp_path, batch_size, accum, lr=0.5)
    model = OverflowModel(mask_loss_only=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(cfg, model=model, train_dataset=TinyDataset(4), progress=False).train()
    return before, model.state_dict()


def test_accumulated_micro_batches_step_like_one_batch(tmp_path):
    # The stand-in's losses are means over the batch's pixels: two micro-batches of one image,
    # each divided by accum_steps = 2, must give the gradient of one batch of both images.
    before, big = _one_step(tmp_path / "b2", 2, 1)
    _, accumulated = _one_step(tmp_path / "b1x2", 1, 2)
    moved = 0.0
    for k in big:
        torch.testing.assert_close(accumulated[k], big[k], rtol=1e-5, atol=1e-6)
        moved += float((big[k].float() - before[k].float()).abs().sum())
    assert moved > 1e-3  # the step did change the weights
