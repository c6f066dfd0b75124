import math

import pytest
import torch
from torch import nn

from maskrcnn.config import ConfigError, SolverConfig
from maskrcnn.engine.schedule import build_lr_scheduler, build_optimizer, lr_factor


def _lrs(cfg: SolverConfig, n: int):
    """The learning rate used by each of the first ``n`` optimiser steps."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = build_lr_scheduler(opt, cfg)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_multistep():
    cfg = SolverConfig(lr=1.0, max_iter=20, steps=(10, 15), gamma=0.1, warmup_iters=4, warmup_factor=0.2)
    lrs = _lrs(cfg, 20)
    # Linear from warmup_factor at step 0 to 1 at warmup_iters.
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.1)  # the decay applies from iteration == step
    assert lrs[14] == pytest.approx(0.1)
    assert lrs[15] == pytest.approx(0.01)
    assert lrs[19] == pytest.approx(0.01)


def test_warmup_multiplies_a_decay_inside_it():
    cfg = SolverConfig(lr=1.0, max_iter=10, steps=(2,), gamma=0.5, warmup_iters=4, warmup_factor=0.0 + 1e-3)
    assert lr_factor(cfg, 3) == pytest.approx(0.5 * (1e-3 * 0.25 + 0.75))


def test_cosine_values():
    cfg = SolverConfig(lr=2.0, schedule="cosine", max_iter=100, warmup_iters=0, steps=())
    lrs = _lrs(cfg, 100)
    assert lrs[0] == pytest.approx(2.0)
    assert lrs[50] == pytest.approx(1.0)
    assert lrs[25] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lrs[99] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.99)))
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_factor(cfg, 100) == pytest.approx(0.0, abs=1e-12)


def test_cosine_with_warmup_and_steps_ignored():
    cfg = SolverConfig(lr=1.0, schedule="cosine", max_iter=10, warmup_iters=5, warmup_factor=0.1, steps=(3,))
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_scheduler_state_round_trip_continues_the_schedule():
    cfg = SolverConfig(lr=1.0, max_iter=20, steps=(6,), warmup_iters=4, warmup_factor=0.1)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_lr_scheduler(opt, cfg)
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    p2 = nn.Parameter(torch.zeros(1))
    opt2 = torch.optim.SGD([p2], lr=1.0)
    opt2.load_state_dict(opt.state_dict())
    sched2 = build_lr_scheduler(opt2, cfg)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 7
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1)
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_factor(cfg, 8))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_no_decay_on_norm_and_bias():
    net = _Net()
    opt = build_optimizer(net, SolverConfig(weight_decay=1e-4))
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert by_id[id(net.conv.weight)] == 1e-4
    assert by_id[id(net.fc.weight)] == 1e-4
    for p in (net.conv.bias, net.fc.bias, net.gn.weight, net.gn.bias):
        assert by_id[id(p)] == 0.0
    assert id(net.frozen.weight) not in by_id  # frozen parameters are not optimised
    opt = build_optimizer(net, SolverConfig(weight_decay=1e-4, no_decay_norm_bias=False))
    assert all(g["weight_decay"] == 1e-4 for g in opt.param_groups)


def test_optimizer_kinds():
    net = _Net()
    sgd = build_optimizer(net, SolverConfig(optimizer="sgd", momentum=0.8, lr=0.3))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8 and sgd.defaults["lr"] == 0.3
    adamw = build_optimizer(net, SolverConfig(optimizer="adamw", lr=1e-4, betas=(0.8, 0.99)))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.99)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"optimizer": "adam"}, ["solver.optimizer", "adam", "sgd"]),
        ({"schedule": "poly"}, ["solver.schedule", "poly"]),
        ({"steps": (500, 1200), "max_iter": 1000}, ["solver.steps", "1200", "max_iter"]),
        ({"steps": (800, 700)}, ["strictly increasing"]),
        ({"accum_steps": 0}, ["solver.accum_steps", "0"]),
        ({"amp": "fp8"}, ["solver.amp", "fp8"]),
        ({"lr": 0.0}, ["solver.lr"]),
        ({"warmup_iters": 2000}, ["solver.warmup_iters"]),
        ({"warmup_factor": 0.0}, ["solver.warmup_factor"]),
        ({"clip_grad_norm": -1.0}, ["solver.clip_grad_norm"]),
    ],
)
def test_bad_solver_values_are_clear_errors(changes, words):
    with pytest.raises(ConfigError) as e:
        SolverConfig(**changes).validate()
    for w in words:
        assert w in str(e.value)


def test_steps_are_not_checked_for_cosine_and_do_not_apply():
    cfg = SolverConfig(schedule="cosine", steps=(5000,), max_iter=100, warmup_iters=10)
    cfg.validate()  # no error for a step past max_iter: cosine has no steps
    cfg = SolverConfig(schedule="cosine", steps=(20, 40), gamma=0.1, max_iter=100, warmup_iters=10)
    assert lr_factor(cfg, 50) == pytest.approx(0.5)  # 0.5 (1 + cos(pi / 2)); the steps are ignored
    assert lr_factor(cfg, 25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
