"""The training loop: steps and the hooks around them (logging, validation, checkpoints, NaN guard,
schedule, run files: ``maskrcnn.engine.hooks``).

``TrainLoop.train()`` calls, in the hooks' order, ``before_train``; then per iteration
``before_step``, one optimiser step (``TrainStep``), ``after_step`` (``loop.iteration`` already
counts the step); ``after_train`` once the loop reached ``max_iter``; and ``close`` in reverse
order at the end, on errors too. ``after_losses`` runs for each micro-batch between its forward
and its backward pass.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn


class HookBase:
    """A hook of ``TrainLoop``; ``self.loop`` is set when the loop registers it."""

    loop: "TrainLoop"

    def before_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_losses(self, total: float, values: Dict[str, float]) -> None:
        """``total``: this micro-batch's loss; ``values``: its components (host floats)."""

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        """Called when the loop reached ``max_iter`` (not when it stopped on an error)."""

    def close(self) -> None:
        """Called at the end, also when training failed or was interrupted."""


@dataclass
class StepResult:
    """What one optimiser step measured (logged by the metrics and progress hooks)."""

    components: Dict[str, float]  # loss components averaged over micro-batches, and their sum "loss"
    lr: float  # the rate this step used
    grad_norm: Optional[float]  # the pre-clip gradient norm (None without clipping)
    time: float  # seconds of the whole step
    data_time: float  # seconds spent waiting for data


class DataStream:
    """Endless training batches from a resumable position: ``epoch`` and ``batch_in_epoch``
    (batches of this epoch already consumed, per rank) advance as batches are taken."""

    def __init__(self, loader):
        self.loader = loader
        self.epoch = 0
        self.batch_in_epoch = 0

    def __iter__(self) -> Iterator[list]:
        while True:
            self.loader.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
            # A DataLoader without its own generator draws its workers' base seed from the global
            # torch generator when an iterator starts, and a resumed run starts one mid-epoch:
            # keep any such draw off the global stream.
            state = torch.get_rng_state()
            it = iter(self.loader)
            torch.set_rng_state(state)
            produced = False
            for batch in it:
                produced = True
                self.batch_in_epoch += 1
                yield batch
            if not produced and self.batch_in_epoch == 0:
                raise RuntimeError("the training loader produced no batch for a whole epoch")
            self.epoch += 1
            self.batch_in_epoch = 0


class TrainStep(HookBase):
    """One optimiser step over ``accum`` micro-batches: AMP, gradient scaling and clipping, DDP's
    gradient sync on the last micro-batch only. Registered as a hook too: ``before_train`` wraps
    the model in DistributedDataParallel under several processes (once the run files are ready)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator[list],
                 device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager],
                 scaler: Optional[torch.amp.GradScaler], accum: int, clip_grad_norm: float,
                 world_size: int = 1, find_unused_parameters: bool = False):
        self.model = model
        self.params = model.parameters
        self.world_size = world_size
        self.find_unused_parameters = find_unused_parameters
        self.optimizer = optimizer
        self.batches = batches
        self.device = device
        self.autocast = autocast
        self.scaler = scaler
        self.accum = accum
        self.clip = clip_grad_norm

    def before_train(self) -> None:
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=self.find_unused_parameters)

    def __call__(self, after_losses: Callable[[float, Dict[str, float]], None]) -> StepResult:
        t_start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        components, data_time = self._forward_backward(after_losses)
        step_lr = self.optimizer.param_groups[0]["lr"]
        grad_norm = self._optimizer_step()
        return StepResult(components, step_lr, grad_norm, time.perf_counter() - t_start, data_time)

    def _forward_backward(self, after_losses) -> "tuple[Dict[str, float], float]":
        """Losses (averaged over the micro-batches, plus their sum ``loss``) and gradients of one
        step, and the seconds spent waiting for data."""
        data_time = 0.0
        components: Dict[str, float] = defaultdict(float)
        is_ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
        for micro in range(self.accum):
            t_data = time.perf_counter()
            batch = next(self.batches)
            images = [smp.image.to(self.device, non_blocking=True) for smp in batch]
            targets = [smp.instances.to(self.device) for smp in batch]
            data_time += time.perf_counter() - t_data
            sync = self.model.no_sync() if is_ddp and micro < self.accum - 1 else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    losses = self.model(images, targets)
                total = sum(v.float() for v in losses.values())
                # One device sync for all components (they are logged every iteration anyway).
                host = torch.stack([v.detach().float() for v in losses.values()] + [total.detach()]).tolist()
                values = dict(zip(losses.keys(), host[:-1]))
                after_losses(host[-1], values)
                scaled = total / self.accum
                if self.scaler is not None:
                    scaled = self.scaler.scale(scaled)
                scaled.backward()
            for k, v in values.items():
                components[k] += v / self.accum
        out = dict(components)
        out["loss"] = sum(out.values())
        return out, data_time

    def _optimizer_step(self) -> Optional[float]:
        """Optimiser step with optional clipping and loss scaling; the pre-clip grad norm or None."""
        grad_norm = None
        if self.scaler is not None:
            if self.clip > 0:
                self.scaler.unscale_(self.optimizer)
                grad_norm = float(nn.utils.clip_grad_norm_(self.params(), self.clip))
            self.scaler.step(self.optimizer)  # skips the step when fp16 gradients overflowed
            self.scaler.update()
        else:
            if self.clip > 0:
                grad_norm = float(nn.utils.clip_grad_norm_(self.params(), self.clip))
            self.optimizer.step()
        return grad_norm


class TrainLoop:
    """Runs steps from ``iteration`` to ``max_iter`` with hooks around each step.

    State the hooks read: ``iteration`` (steps done), ``max_iter``, ``last`` (the ``StepResult`` of
    the latest step).
    """

    def __init__(self, iteration: int, max_iter: int):
        self.hooks: List[HookBase] = []
        self.iteration = iteration
        self.max_iter = max_iter
        self.last: Optional[StepResult] = None

    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        for h in hooks:
            h.loop = self
            self.hooks.append(h)

    def train(self, step: Callable[[Callable[[float, Dict[str, float]], None]], StepResult]) -> None:
        """Run ``step`` (e.g. a ``TrainStep``) until ``max_iter``."""
        try:
            for h in self.hooks:
                h.before_train()
            while self.iteration < self.max_iter:
                for h in self.hooks:
                    h.before_step()
                self.last = step(self._after_losses)
                self.iteration += 1
                for h in self.hooks:
                    h.after_step()
            for h in self.hooks:
                h.after_train()
        finally:
            for h in reversed(self.hooks):
                h.close()

    def _after_losses(self, total: float, values: Dict[str, float]) -> None:
        for h in self.hooks:
            h.after_losses(total, values)
