"""Optimiser steps through the Trainer against a reference worked out another way (by hand).

The exact-resume tests compare two runs of the same code, which cannot see a bug on the path both
share (clipping after the step, a missing ``unscale_``). Here a two-parameter stand-in has the loss
``a_k . p`` at its k-th forward call, so its gradient is ``a_k`` whatever the images, and each step
is written out: ``clip_grad_norm_`` scales by ``max_norm / (norm + 1e-6)`` when the norm exceeds
``max_norm``; SGD with momentum keeps ``buf = m * buf + g``; AdamW decays the weights by
``lr * wd`` first, then steps by the bias-corrected moments (eps 1e-8); fp16 with a GradScaler
must unscale the gradients *before* clipping, so the step equals the fp32 one.
"""
import json
import math

import pytest
import torch
from torch import nn

from maskrcnn.config import load_config
from maskrcnn.inference.checkpoint import load_checkpoint
from maskrcnn.engine.trainer import Trainer
from tests.engine.standins import TinyDataset

torch.set_num_threads(1)

P0 = (1.0, -2.0)


class _Linear(nn.Module):
    """Loss ``grads[k] . p`` at forward call k (a 2-D weight: it gets weight decay)."""

    def __init__(self, grads):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([P0]))  # [1, 2]
        self.grads = [torch.tensor(g) for g in grads]
        self.calls = 0

    def forward(self, images, targets=None):
        a = self.grads[min(self.calls, len(self.grads) - 1)]
        self.calls += 1
        return {"loss_mask": (self.weight[0] * a).sum()}


def _cfg(out, steps, **solver):
    overrides = [f"train.output_dir={out}", "train.device=cpu", "train.eval_period=0", "train.checkpoint_period=100",
                 "data.batch_size=1", "data.num_workers=0", f"solver.max_iter={steps}", f"solver.steps=[{steps}]",
                 "solver.warmup_iters=0"] + [f"solver.{k}={v}" for k, v in solver.items()]
    return load_config(None, overrides)


def _train(tmp_path, grads, **solver):
    model = _Linear(grads)
    Trainer(_cfg(tmp_path, len(grads), **solver), model=model, train_dataset=TinyDataset(4), progress=False).train()
    return model.weight.detach()[0].tolist()


def _clipped(g, max_norm):
    norm = math.sqrt(sum(v * v for v in g))
    f = max_norm / (norm + 1e-6)
    return [v * f for v in g] if f < 1 else list(g)


def test_two_clipped_sgd_steps_with_momentum_by_hand(tmp_path):
    # |(3, 4)| = 5 is clipped to 2: (1.2, 1.6); |(0.3, -0.4)| = 0.5 is not.
    g1, g2 = _clipped((3.0, 4.0), 2.0), _clipped((0.3, -0.4), 2.0)
    buf = g1
    p = [x - 0.1 * b for x, b in zip(P0, buf)]
    buf = [0.9 * b + g for b, g in zip(buf, g2)]
    p = [x - 0.1 * b for x, b in zip(p, buf)]
    got = _train(tmp_path, [(3.0, 4.0), (0.3, -0.4)], optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0,
                 clip_grad_norm=2.0)
    assert got == pytest.approx(p, rel=1e-5)


def test_two_clipped_adamw_steps_by_hand(tmp_path):
    lr, wd, b1, b2, eps = 0.01, 0.1, 0.9, 0.999, 1e-8
    m, v, p = [0.0, 0.0], [0.0, 0.0], list(P0)
    for t, g in enumerate([_clipped((3.0, 4.0), 2.0), _clipped((0.3, -0.4), 2.0)], start=1):
        p = [x * (1 - lr * wd) for x in p]
        m = [b1 * a + (1 - b1) * gi for a, gi in zip(m, g)]
        v = [b2 * a + (1 - b2) * gi * gi for a, gi in zip(v, g)]
        p = [x - lr * (a / (1 - b1 ** t)) / (math.sqrt(s / (1 - b2 ** t)) + eps) for x, a, s in zip(p, m, v)]
    got = _train(tmp_path, [(3.0, 4.0), (0.3, -0.4)], optimizer="adamw", lr=lr, weight_decay=wd, clip_grad_norm=2.0)
    assert got == pytest.approx(p, rel=1e-5)


@pytest.mark.parametrize("clip", [2.0, 0.0])
def test_fp16_scaler_unscales_before_clipping_and_steps_like_fp32(tmp_path, clip):
    # The scaler multiplies the loss by 2^16; unscale_ must divide the gradients back before the
    # clip, so that clipping sees |(3, 4)| = 5 and the SGD step is -0.1 * (1.2, 1.6), as in fp32.
    g = _clipped((3.0, 4.0), clip) if clip else [3.0, 4.0]
    want = [x - 0.1 * gi for x, gi in zip(P0, g)]
    got = _train(tmp_path, [(3.0, 4.0)], optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0,
                 clip_grad_norm=clip, amp="fp16")
    assert got == pytest.approx(want, rel=1e-5)
    scaler = load_checkpoint(str(tmp_path / "model_final.pth"))["scaler"]
    assert scaler["scale"] == 2.0 ** 16 and scaler["_growth_tracker"] == 1  # one good step, no overflow


def test_logged_grad_norm_is_the_norm_before_clipping(tmp_path):
    _train(tmp_path, [(3.0, 4.0)], optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, clip_grad_norm=2.0)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    norms = [r["grad_norm"] for r in rows if "grad_norm" in r]
    assert norms == [pytest.approx(5.0, rel=1e-6)]
