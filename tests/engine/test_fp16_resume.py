"""Mixed precision (fp16 with a gradient scaler) survives a crash and ``--resume`` exactly.

On the CPU, fp16 autocast and ``torch.amp.GradScaler("cpu")`` run the same code path as on a GPU:
the scaler multiplies the loss, skips a step whose gradients hold inf/NaN and halves its scale,
and counts good steps towards growing it. The stand-in model makes chosen iterations' gradients
infinite, so the scaler's state (scale and growth tracker) at the checkpoint differs from a fresh
scaler's: a resume that forgets it ends with another scale than the uninterrupted run.
"""
import os

import pytest
import torch

from maskrcnn.config import load_config
from maskrcnn.inference.checkpoint import load_checkpoint
from maskrcnn.engine.trainer import Trainer
from tests.engine.standins import TinyDataset, TinyModel, assert_same_weights_and_optimizer, tiny_config

torch.set_num_threads(1)


class _InfGrad(torch.autograd.Function):
    """Identity forward; an infinite gradient backward (as an fp16 overflow would give)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class OverflowModel(TinyModel):
    """TinyModel whose gradients overflow at the given forward calls (counted from 1 in this process)."""

    def __init__(self, inf_grad_at=(), mask_loss_only=False, **faults):
        torch.manual_seed(7)  # the same initial weights in every run
        super().__init__(**faults)
        self.inf_grad_at = set(inf_grad_at)
        self.mask_loss_only = mask_loss_only

    def forward(self, images, targets=None):
        out = super().forward(images, targets)
        if self.training and self.calls in self.inf_grad_at:
            out["loss_mask"] = _InfGrad.apply(out["loss_mask"])
        if self.training and self.mask_loss_only:  # loss_cls samples pixels at random
            out = {"loss_mask": out["loss_mask"]}
        return out


def _run(cfg, model, resume=False):
    return Trainer(cfg, resume=resume, model=model, train_dataset=TinyDataset(5, augment=True),
                   val_dataset=TinyDataset(3, seed=1), progress=False).train()


def test_fp16_resume_restores_the_scaler_and_matches_an_uninterrupted_run(tmp_path):
    ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    # Overflows at iterations 2 and 5; checkpoints every 2 iterations; 6 iterations.
    _run(tiny_config(ref_dir, amp="fp16"), OverflowModel(inf_grad_at=(2, 5)))
    with pytest.raises(RuntimeError, match="injected failure"):  # dies in iteration 5, after the checkpoint at 4
        _run(tiny_config(run_dir, amp="fp16"), OverflowModel(inf_grad_at=(2,), fail_at=5))
    at_crash = load_checkpoint(os.path.join(run_dir, "model_0000004.pth"))["scaler"]
    # Halved at iteration 2 (and at 1 too where the first step at 65536 overflows in fp16 for real,
    # as it does on this CPU), then two good steps (3, 4) counted towards growth: not a fresh scaler.
    assert at_crash["scale"] <= 32768.0 and at_crash["_growth_tracker"] == 2
    _run(tiny_config(run_dir, amp="fp16"), OverflowModel(inf_grad_at=(1,)), resume=True)  # call 1 = iteration 5

    a = load_checkpoint(os.path.join(ref_dir, "model_final.pth"))
    b = load_checkpoint(os.path.join(run_dir, "model_final.pth"))
    # Halved again at iteration 5, one good step (6) after it.
    assert a["scaler"]["scale"] == at_crash["scale"] / 2 and a["scaler"]["_growth_tracker"] == 1
    assert b["scaler"] == a["scaler"]
    assert a["iteration"] == b["iteration"] == 6
    assert_same_weights_and_optimizer(a, b)


def test_overflowing_steps_are_skipped(tmp_path):
    # A step whose gradients overflowed leaves the weights as they were (the scaler skips it).
    cfg = load_config(None, [f"train.output_dir={tmp_path}", "train.device=cpu", "train.eval_period=0",
                             "train.checkpoint_period=1", "train.keep_checkpoints=0", "data.batch_size=2",
                             "data.num_workers=0", "solver.max_iter=2", "solver.steps=[2]", "solver.warmup_iters=0",
                             "solver.amp=fp16"])
    Trainer(cfg, model=OverflowModel(inf_grad_at=(2,)), train_dataset=TinyDataset(4), progress=False).train()
    one = load_checkpoint(str(tmp_path / "model_0000001.pth"))
    two = load_checkpoint(str(tmp_path / "model_final.pth"))
    assert two["scaler"]["scale"] == one["scaler"]["scale"] / 2
    for k in one["model"]:
        assert torch.equal(one["model"][k], two["model"][k]), k
