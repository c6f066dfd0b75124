"""Optimiser and learning-rate schedule builders.

The schedule is a pure function of the iteration (``lr_factor``), so that a resumed run sets
exactly the learning rate the uninterrupted run would have had; ``WarmupSchedule`` wraps it as a
``torch.optim.lr_scheduler.LRScheduler`` whose ``state_dict`` is saved in checkpoints.

Linear warmup: the factor rises from ``warmup_factor`` at iteration 0 to 1 at ``warmup_iters``
(Goyal et al. 2017, "Accurate, Large Minibatch SGD"), multiplied into the main schedule:
- multistep: ``gamma ** (number of steps <= iteration)``;
- cosine: ``0.5 * (1 + cos(pi * iteration / max_iter))``, from 1 at iteration 0 to 0 at
  ``max_iter`` (Loshchilov & Hutter 2017, SGDR, without restarts).
"""
from __future__ import annotations

import bisect
import math
from typing import List

import torch
from torch import nn

from maskrcnn.config import SCHEDULES, ConfigError, SolverConfig

# Parameters of these layers get no weight decay when ``solver.no_decay_norm_bias`` is set:
# decaying a norm layer's scale towards 0 fights the normalisation and helps nothing.
_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm2d,
    nn.LocalResponseNorm,
)


def lr_factor(cfg: SolverConfig, iteration: int) -> float:
    """Multiplier of ``cfg.lr`` for the optimiser step that follows ``iteration`` completed steps."""
    if cfg.schedule == "multistep":
        factor = cfg.gamma ** bisect.bisect_right(list(cfg.steps), iteration)
    elif cfg.schedule == "cosine":
        t = min(max(iteration, 0), cfg.max_iter) / cfg.max_iter
        factor = 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        raise ConfigError(f"solver.schedule: unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1.0 - alpha) + alpha
    return factor


class WarmupSchedule(torch.optim.lr_scheduler.LRScheduler):
    """``lr = base_lr * lr_factor(cfg, last_epoch)`` per parameter group; step once per iteration."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SolverConfig, last_epoch: int = -1):
        # Plain values only: the LRScheduler state_dict saves the instance __dict__.
        self.schedule = cfg.schedule
        self.max_iter = cfg.max_iter
        self.steps = tuple(cfg.steps)
        self.gamma = cfg.gamma
        self.warmup_iters = cfg.warmup_iters
        self.warmup_factor = cfg.warmup_factor
        super().__init__(optimizer, last_epoch)

    def _cfg(self) -> SolverConfig:
        return SolverConfig(
            schedule=self.schedule,
            max_iter=self.max_iter,
            steps=self.steps,
            gamma=self.gamma,
            warmup_iters=self.warmup_iters,
            warmup_factor=self.warmup_factor,
        )

    def get_lr(self) -> List[float]:
        f = lr_factor(self._cfg(), self.last_epoch)
        return [base * f for base in self.base_lrs]


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> List[dict]:
    """Split trainable parameters into a decayed group and (optionally) a no-decay group.

    No-decay: biases, and every parameter of a normalisation layer. Frozen parameters
    (``requires_grad=False``, e.g. FrozenBatchNorm buffers or frozen stages) are left out.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if no_decay_norm_bias and (is_norm or name == "bias" or p.dim() <= 1):
                no_decay.append(p)
            else:
                decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    return groups


def build_optimizer(model: nn.Module, cfg: SolverConfig) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW over ``model``'s trainable parameters."""
    cfg.validate()
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_norm_bias)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: SolverConfig) -> WarmupSchedule:
    """The warmup + multistep/cosine schedule; ``scheduler.step()`` once per optimiser step."""
    cfg.validate()
    return WarmupSchedule(optimizer, cfg)


def set_schedule_position(scheduler: WarmupSchedule, iteration: int) -> List[float]:
    """Put ``scheduler`` (built from the current config) after ``iteration`` completed steps and set
    the optimiser's rates to what the schedule gives there; returns those rates.

    A resumed run does this instead of restoring the saved scheduler: the schedule is a pure
    function of (config, iteration), so with an unchanged config the rates are the saved ones, and
    with a changed ``lr``, ``max_iter``, ``steps``... the new schedule applies from ``iteration`` on.
    """
    scheduler.last_epoch = iteration
    lrs = scheduler.get_lr()
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)
    return lrs
