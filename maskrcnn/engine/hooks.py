"""The training loop's hooks (``maskrcnn.engine.loop``), each one concern of a run.

The trainer registers them in this order; ``after_step`` hooks see ``loop.iteration`` after the
step, so a period ``p`` fires at iterations ``p, 2p, ...`` and at ``max_iter``:

- ``RunFilesHook``: rank 0's run files at the start (run marker, metrics, config, resume's
  set-aside best and demoted final), then a barrier; at the end the run lock (taken when the
  ``Trainer`` was built) is released;
- the ``TrainStep`` itself: wraps the model in DistributedDataParallel under several processes;
- ``NonFiniteLossGuard``: stops every rank on a NaN/inf loss before its backward pass;
- ``LRScheduleHook``: one scheduler step per optimiser step;
- ``MetricsHook``: the start line, loss means every ``train.log_period`` to ``metrics.jsonl`` and
  ``log.txt``;
- ``ProgressHook``: the tqdm bar (rank 0);
- ``ValidationHook``: validation every ``train.eval_period``, ``model_best.pth`` on improvement;
- ``CheckpointHook``: ``model_<iteration>.pth`` every ``train.checkpoint_period``, ``model_final.pth``
  at the end;
- ``CurvesHook``: ``curves.png`` at the end of the run.
"""
from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections import defaultdict
from typing import Any, Dict, List, Optional

import torch
from tqdm import tqdm

from maskrcnn.config import dump_config, to_dict
from maskrcnn.device import native_bf16
from maskrcnn.engine import distributed as du
from maskrcnn.engine.curves import CURVES_FILE, draw_curves, read_metrics
from maskrcnn.engine.loop import HookBase
from maskrcnn.engine.run_directory import BEST, CONFIG_FILE, FINAL, RUN_MARKER
from maskrcnn.engine.validate import run_validation
from maskrcnn.progress import format_seconds

# Hooks that take ``trainer`` read the run's state from the ``maskrcnn.engine.trainer.Trainer``
# that registers them (not imported here: the trainer imports this module).
Trainer = Any
logger = logging.getLogger("maskrcnn.engine")


def precision_note(requested: str, used: str) -> str:
    """The log's words for the precision a run uses: ``float32``, ``bf16 autocast`` ..., with
    ``(solver.amp auto)`` when it was chosen for this device."""
    words = {"": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[used]
    return f"{words} (solver.amp auto)" if requested == "auto" else words


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; training stopped without writing a checkpoint."""


def draw(trainer: Trainer) -> None:
    """Redraw ``curves.png`` from ``metrics.jsonl`` (rank 0)."""
    out = trainer.cfg.train.output_dir
    draw_curves(read_metrics(trainer.metrics.path), os.path.join(out, CURVES_FILE), trainer.cfg.solver.max_iter, title=out)


class RunFilesHook(HookBase):
    """Rank 0, before the first step: the metrics file, the checkpoints and the config match the
    point the run starts from; then every rank waits for it. At the end, also on errors, the run
    directory's lock and the log handlers are released (``Trainer.close``)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def before_train(self) -> None:
        if self.trainer.is_main:
            self._start_files()
        du.barrier()

    def close(self) -> None:
        self.trainer.close()

    def _start_files(self) -> None:
        tr = self.trainer
        run_dir, iteration, max_iter = tr.run_dir, tr.iteration, tr.cfg.solver.max_iter
        if tr.resume_path is None:
            tr.metrics.reset()
        else:
            tr.metrics.truncate_after(iteration)
            aside = run_dir.set_aside_best(iteration)
            if aside:
                logger.warning("model_best.pth was saved after iteration %d by the run being resumed; kept as %s",
                                  iteration, aside)
            if os.path.basename(tr.resume_path) == FINAL and iteration < max_iter:
                name = run_dir.demote_final(iteration)
                if name:
                    logger.info("continuing a finished run to iteration %d: %s is now %s", max_iter, FINAL, name)
        if not os.path.isfile(run_dir.path(RUN_MARKER)):
            run_dir.mark()
        dump_config(tr.cfg, os.path.join(tr.cfg.train.output_dir, CONFIG_FILE))


class NonFiniteLossGuard(HookBase):
    """``NonFiniteLossError`` on every rank together when any rank's loss is NaN or inf (a lone
    rank leaving would hang the others); nothing is written, the message names the last good
    checkpoint."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def after_losses(self, total: float, values: Dict[str, float]) -> None:
        bad = not math.isfinite(total)
        if du.any_true(bad):
            last = None
            try:
                last = self.trainer.run_dir.latest()
            except FileNotFoundError:
                pass
            parts = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            raise NonFiniteLossError(
                f"non-finite loss at iteration {self.loop.iteration + 1} (rank {self.trainer.rank}: loss={total:.4g}; "
                f"{parts}). Training stopped without writing a checkpoint; the last good one is "
                f"{last or 'none (no checkpoint was written yet)'}. Lower solver.lr, lengthen solver.warmup_iters, "
                f"set solver.clip_grad_norm, or check the data; then --resume."
            )


class LRScheduleHook(HookBase):
    """Steps the learning-rate schedule after each optimiser step."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler):
        self.scheduler = scheduler

    def after_step(self) -> None:
        with warnings.catch_warnings():
            # fp16: the scaler skips steps whose gradients overflowed, and torch then warns
            # that the scheduler stepped first; the schedule follows the iteration anyway.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
            self.scheduler.step()


class MetricsHook(HookBase):
    """The run's start line, and every ``train.log_period`` iterations (and at the end) the means
    of the steps since the last record: one ``metrics.jsonl`` record and one ``log.txt`` line."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        cfg = trainer.cfg
        self.period = cfg.train.log_period
        self.imgs_per_iter = cfg.data.batch_size * cfg.solver.accum_steps * trainer.world_size
        self.window: Dict[str, List[float]] = defaultdict(list)

    def before_train(self) -> None:
        tr, loop = self.trainer, self.loop
        if not tr.is_main:
            return
        if loop.iteration >= loop.max_iter:
            logger.info("already at iteration %d >= solver.max_iter %d: nothing to train", loop.iteration, loop.max_iter)
            return
        n_params = sum(p.numel() for p in tr.model.parameters() if p.requires_grad)
        logger.info(
            "training %d iterations from %d on %s (%d process(es), %d CPU threads each; %d images/iter, "
            "%.2fM trainable params; %s) -> %s",
            loop.max_iter - loop.iteration, loop.iteration, tr.device, tr.world_size, torch.get_num_threads(),
            self.imgs_per_iter, n_params / 1e6, precision_note(tr.cfg.solver.amp, tr.amp),
            tr.cfg.train.output_dir,
        )
        if tr.amp == "bf16" and not native_bf16(tr.device):
            logger.warning("solver.amp bf16: this %s has no bf16 instructions; it is emulated and slower than "
                           "float32 (solver.amp auto uses bf16 only where it is native)", tr.device.type.upper())

    def after_step(self) -> None:
        step, window = self.loop.last, self.window
        for k, v in step.components.items():
            window[k].append(v)
        window["time"].append(step.time)
        window["data_time"].append(step.data_time)
        window["lr"] = [step.lr]
        if step.grad_norm is not None:
            window["grad_norm"].append(step.grad_norm)
        it = self.loop.iteration
        if (self.period and it % self.period == 0) or it == self.loop.max_iter:
            self._write(window)
            self.window = defaultdict(list)

    def _write(self, window: Dict[str, List[float]]) -> None:
        tr = self.trainer
        means = {k: sum(v) / len(v) for k, v in window.items() if v}
        means = du.reduce_mean(means)
        if not tr.is_main:
            return
        t = max(means.pop("time", 0.0), 1e-9)
        record = {"iteration": self.loop.iteration, "epoch": tr.data.epoch, "lr": means.pop("lr")}
        record["loss"] = means.pop("loss")
        record.update({k: means[k] for k in sorted(means) if k.startswith("loss_")})
        record.update({"time": t, "data_time": means.get("data_time", 0.0), "it_per_s": 1.0 / t,
                       "img_per_s": self.imgs_per_iter / t})
        if "grad_norm" in means:
            record["grad_norm"] = means["grad_norm"]
        tr.metrics.write(record)
        # Always in log.txt; on the console only without the bar (whose postfix shows the losses).
        comps = "  ".join(f"{k}: {record[k]:.4f}" for k in record if k.startswith("loss"))
        max_iter = self.loop.max_iter
        eta = format_seconds((max_iter - self.loop.iteration) * t)  # training steps only, not validation
        logger.info(
            "iter %d/%d  %s  lr: %.3g  %.2f it/s  %.1f img/s  ETA %s",
            self.loop.iteration, max_iter, comps, record["lr"], record["it_per_s"], record["img_per_s"], eta,
            extra={"console": not tr.progress},
        )


class ProgressHook(HookBase):
    """The tqdm bar on rank 0 (with ``progress``): losses, learning rate and images/s."""

    def __init__(self, enabled: bool, imgs_per_iter: int):
        self.enabled = enabled
        self.imgs_per_iter = imgs_per_iter
        self.bar: Optional[tqdm] = None

    def before_train(self) -> None:
        loop = self.loop
        if loop.iteration < loop.max_iter:
            self.bar = tqdm(total=loop.max_iter, initial=loop.iteration, disable=not self.enabled,
                            dynamic_ncols=True, unit="it")

    def after_step(self) -> None:
        bar, step = self.bar, self.loop.last
        bar.update(1)
        if bar.disable is False:
            bar.set_postfix_str(
                " ".join(f"{k.replace('loss_', '')}={v:.3f}" for k, v in step.components.items())
                + f" lr={step.lr:.2e} img/s={self.imgs_per_iter / max(step.time, 1e-9):.1f}",
                refresh=False,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ValidationHook(HookBase):
    """Validation every ``train.eval_period`` iterations and at the end (every rank scores its
    shard); rank 0 writes the scores and, on improvement, ``model_best.pth``."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.period = trainer.cfg.train.eval_period

    def after_step(self) -> None:
        it = self.loop.iteration
        if self.period and (it % self.period == 0 or it == self.loop.max_iter):
            self.validate()

    def validate(self) -> None:
        tr = self.trainer
        if tr.val_dataset is None:
            return
        cfg, it = tr.cfg, self.loop.iteration
        t0 = time.perf_counter()
        scores = run_validation(
            du.unwrap(tr.model), tr.val_dataset, cfg.test, tr.device, batch_size=cfg.data.batch_size,
            max_images=cfg.train.max_eval_images, autocast=tr.autocast, progress="bar" if tr.progress else "off",
            coco=cfg.train.eval_coco, class_names=getattr(tr.val_dataset, "class_names", ()),
        )
        tr.last_val = scores
        score = scores["val/mAP"]
        improved = tr.best_score is None or score > tr.best_score
        if improved:
            tr.best_score, tr.best_iteration = score, it
        if not tr.is_main:
            return
        tr.metrics.write({"iteration": it, **scores, "val_time": time.perf_counter() - t0})
        coco = "".join(f", COCO {t} AP {scores[f'val/{t}/AP']:.4f}" for t in ("segm", "bbox") if f"val/{t}/AP" in scores)
        logger.info("iter %d: validation mAP %.4f on %d images (best %.4f at %d)%s",
                       it, score, scores.get("val/num_images", 0), tr.best_score, tr.best_iteration, coco)
        if improved:
            state = {"model": du.unwrap(tr.model).state_dict(), "config": to_dict(cfg), "iteration": it, "score": score}
            tr.run_dir.save(state, BEST, mark_last=False)
        draw(tr)


class CheckpointHook(HookBase):
    """The full checkpoint every ``train.checkpoint_period`` iterations and ``model_final.pth`` at
    ``max_iter`` (collective: every rank's RNG state goes in)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.period = trainer.cfg.train.checkpoint_period

    def after_step(self) -> None:
        it = self.loop.iteration
        if it == self.loop.max_iter:
            self.save(FINAL)
        elif it % self.period == 0:
            self.save(self.trainer.run_dir.periodic_name(it))

    def save(self, name: str) -> None:
        tr = self.trainer
        state = tr.state_dict()  # collective
        if tr.is_main:
            path = tr.run_dir.save(state, name)
            logger.info("iter %d: saved %s", self.loop.iteration, path)
            draw(tr)
        du.barrier()


class CurvesHook(HookBase):
    """``curves.png`` once the run reached ``max_iter`` (rank 0)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def after_train(self) -> None:
        if self.trainer.is_main:
            draw(self.trainer)
