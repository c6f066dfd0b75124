"""The trainer: builds one run (its folder, resume, model, optimiser, data) and the loop that runs
it (``maskrcnn.engine.loop`` with the hooks of ``maskrcnn.engine.hooks``).

One *iteration* is one optimiser step over ``solver.accum_steps`` micro-batches of
``data.batch_size`` images per process, so an iteration sees
``batch_size * accum_steps * world_size`` images.

Exact resume: a checkpoint holds the model, optimiser, LR schedule, grad scaler, the iteration,
every rank's RNG states and the data position (epoch, batches consumed in it). The data loader
(``maskrcnn.data.build_loader``) draws each epoch's order from ``(seed, epoch)`` and each
sample's augmentation from ``(seed, epoch, index)``, and ``loader.set_epoch(epoch, start_batch)``
starts part-way through an epoch, so ``--resume`` replays exactly the batches and random draws
the uninterrupted run would have made (bitwise on CPU; on GPU up to the non-determinism of the
kernels).
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, DistributedSampler
from tqdm import tqdm

from maskrcnn.config import Config, ConfigError, check_class_counts, to_dict
from maskrcnn.device import resolve_device
from maskrcnn.engine import distributed as du
from maskrcnn.engine.curves import MetricsLog
from maskrcnn.engine.hooks import (
    CheckpointHook,
    CurvesHook,
    LRScheduleHook,
    MetricsHook,
    NonFiniteLossGuard,
    ProgressHook,
    RunFilesHook,
    ValidationHook,
)
from maskrcnn.engine.loop import DataStream, HookBase, TrainLoop, TrainStep
from maskrcnn.engine.resume import (
    capture_rng_state,
    check_finite_optimizer_state,
    read_resume_checkpoint,
    restore_rng_state,
)
from maskrcnn.engine.run_directory import ResumeError, RunDirectory, RunDirectoryError, choose_start
from maskrcnn.engine.schedule import build_lr_scheduler, build_optimizer, set_schedule_position

logger = logging.getLogger("maskrcnn.engine")


def check_train_config(cfg: Config) -> None:
    """Raise ``ConfigError`` naming the key for values the trainer cannot run with: the training
    sections' declared checks (``maskrcnn.config``), one threshold per class or one for all."""
    cfg.solver.validate()
    cfg.train.validate()
    check_class_counts(cfg.test, cfg.model.roi_heads.num_classes)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_amp(device: torch.device, mode: str) -> str:
    """The precision ``solver.amp`` runs on ``device``: ``auto`` becomes ``bf16`` where the device
    computes bf16 natively (:func:`maskrcnn.device.native_bf16`) and ``""`` (float32) elsewhere;
    the other modes as given (bf16 on a GPU without it is a ConfigError)."""
    from maskrcnn.device import native_bf16

    if mode == "auto":
        return "bf16" if native_bf16(device) else ""
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("solver.amp: bf16 is not supported on this GPU; use fp16")
    return mode


def amp_context(device: torch.device, mode: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for ``solver.amp`` (``""`` = full precision, ``auto``: see
    :func:`resolve_amp`)."""
    mode = resolve_amp(device, mode)
    if not mode:
        return contextlib.nullcontext
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _build_loader(dataset: Dataset, cfg: Config, rank: int, world_size: int):
    """The resumable training loader: batches of ``list[Sample]``, this rank's shard."""
    from maskrcnn.data import build_loader

    seed = cfg.train.seed
    shard = weights = None
    if cfg.data.balance_domains:
        from maskrcnn.data.loader import cell_type_weights

        if world_size > 1:
            raise ConfigError("data.balance_domains: not supported with several processes yet (set it to 0)")
        weights = cell_type_weights(dataset, cfg.data.balance_domains)
    if world_size > 1:  # pads by wrapping so that every rank gets as many batches
        shard = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    return build_loader(
        dataset, cfg.data.batch_size, shuffle=True, num_workers=cfg.data.num_workers, sampler=shard, seed=seed,
        weights=weights,
    )


class _TqdmHandler(logging.Handler):
    """Console log lines that do not break the progress bar. Records logged with
    ``extra={"console": False}`` go to ``log.txt`` only (the loss lines, which the bar shows)."""

    def filter(self, record):
        return getattr(record, "console", True) and super().filter(record)

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _run_logging(output_dir: Optional[str], console: bool):
    """Attach console and ``log.txt`` handlers to the engine's logger for one run (rank 0)."""
    handlers: List[logging.Handler] = []
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S")
    if console:
        handlers.append(_TqdmHandler())
    if output_dir:
        handlers.append(logging.FileHandler(os.path.join(output_dir, "log.txt")))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(old_level)


class Trainer:
    """Trains one model from a ``Config``; ``Trainer(cfg).train()`` is the whole run.

    Construction claims ``train.output_dir`` for this run before any expensive work: it takes the
    directory's lock (one run per directory), removes temp files of killed writes, refuses a new
    run over an earlier run's checkpoints unless ``overwrite``, and with ``resume`` checks the
    checkpoint (config changes it can honour, finite values) and restores it. ``train()`` releases
    the directory at the end, on errors too; call ``close()`` instead when not training.

    Args:
        cfg: the run's configuration (sections solver, train, data, model, test).
        resume: continue from ``<output_dir>/last_checkpoint`` when it exists; the keys in
            ``maskrcnn.engine.resume.RESUME_MAY_CHANGE`` may differ from the checkpoint's config and apply from the resume
            point on; other changes are refused (``ResumeError``).
        model: use this module instead of ``build_model(cfg.model)`` (tests use stand-ins).
        train_dataset, val_dataset: instead of ``build_dataset(cfg.data, "train"/"val")``;
            ``val_dataset=None`` with ``train.eval_period > 0`` builds the validation split.
        device: defaults to ``train.device`` (``cuda:LOCAL_RANK`` under torchrun).
        progress: show the tqdm bar on rank 0.
        overwrite: start a new run even where an earlier run left checkpoints (they are removed).

    Raises (at construction, before anything is changed):
        RunDirectoryError: another run holds ``train.output_dir``, or it holds an earlier run's
            checkpoints and neither ``resume`` nor ``overwrite`` is set.
        ResumeError: the checkpoint cannot be continued as asked.
    """

    def __init__(
        self,
        cfg: Config,
        resume: bool = False,
        model: Optional[nn.Module] = None,
        train_dataset: Optional[Dataset] = None,
        val_dataset: Optional[Dataset] = None,
        device: Optional[torch.device] = None,
        progress: bool = True,
        overwrite: bool = False,
    ):
        check_train_config(cfg)
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run or replace it")
        self.cfg = cfg
        self.resume = resume
        self.overwrite = overwrite
        self.rank, self.world_size = du.get_rank(), du.get_world_size()
        self.is_main = self.rank == 0
        self.device = device if device is not None else resolve_device(cfg.train.device, du.get_local_rank(), key="train.device")
        self.progress = progress
        self.run_dir = RunDirectory(cfg.train.output_dir, keep=cfg.train.keep_checkpoints)
        self.metrics = MetricsLog(cfg.train.output_dir)
        self._resources = contextlib.ExitStack()  # the directory's lock and the log handlers
        self._closed = False
        try:
            self._setup(model, train_dataset, val_dataset)
        except BaseException:
            self.close()
            raise

    def _setup(self, model: Optional[nn.Module], train_dataset: Optional[Dataset], val_dataset: Optional[Dataset]) -> None:
        cfg = self.cfg
        self.resume_path = self._claim_run_directory()
        ck = None
        if self.resume_path is not None:
            ck = read_resume_checkpoint(self.resume_path, cfg, self.run_dir, self.is_main)

        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        seed_everything(cfg.train.seed + self.rank)
        if model is None:
            from maskrcnn.model import build_model

            # A resumed run takes every weight from the checkpoint: the initial weights file is not read.
            model = build_model(cfg.model, load_weights=ck is None)
        self.model = model.to(self.device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, cfg.solver)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg.solver)
        self.amp = resolve_amp(self.device, cfg.solver.amp)  # "", bf16 or fp16: what runs here
        self.autocast = amp_context(self.device, self.amp)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == "fp16" else None

        if train_dataset is None or (val_dataset is None and cfg.train.eval_period > 0):
            from maskrcnn.data import build_dataset, build_reader

            reader = build_reader(cfg.data)  # one reader for both splits
            if train_dataset is None:
                train_dataset = build_dataset(cfg.data, split="train", augment=True, seed=cfg.train.seed, reader=reader)
            if val_dataset is None and cfg.train.eval_period > 0:
                val_dataset = build_dataset(cfg.data, split="val", reader=reader)
        if len(train_dataset) == 0:
            raise ValueError(f"the training split of data.format={cfg.data.format!r} (root {cfg.data.root!r}) is empty")
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset if val_dataset is not None and len(val_dataset) > 0 else None
        if cfg.train.eval_period > 0 and self.val_dataset is None:
            logger.warning("train.eval_period > 0 but the validation split is empty: no validation")
        self.data = DataStream(_build_loader(train_dataset, cfg, self.rank, self.world_size))
        self.loop = TrainLoop(iteration=0, max_iter=cfg.solver.max_iter)
        self.best_score: Optional[float] = None
        self.best_iteration: Optional[int] = None
        self.last_val: Dict[str, float] = {}
        if ck is not None:
            self.load_state_dict(ck, self.resume_path)
            if self.is_main:
                logger.info("resumed from %s at iteration %d (epoch %d, batch %d)",
                            self.resume_path, self.iteration, self.data.epoch, self.data.batch_in_epoch)

    @property
    def iteration(self) -> int:
        """Optimiser steps done (the loop's count)."""
        return self.loop.iteration

    @iteration.setter
    def iteration(self, value: int) -> None:
        self.loop.iteration = value

    def close(self) -> None:
        """Release the run directory and detach the log handlers (``train()`` does it at its end)."""
        self._closed = True
        self._resources.close()

    # --------------------------------------------------------- run directory
    def _claim_run_directory(self) -> Optional[str]:
        """Rank 0 takes the directory and decides where the run starts; every rank gets the answer
        (the checkpoint to resume from, or None) or raises the same error."""
        answer: Tuple[Optional[str], Optional[str]] = (None, None)
        error: Optional[BaseException] = None
        if self.is_main:
            try:
                answer = (self._claim_as_main(), None)
            except Exception as e:  # every rank must hear of it, or the others would wait forever
                error = e
                answer = (None, f"{type(e).__name__}: {e}")
        path, failure = du.broadcast_object(answer)
        if error is not None:
            raise error
        if failure is not None:
            raise RunDirectoryError(f"rank 0 could not start the run: {failure}")
        return path

    def _claim_as_main(self) -> Optional[str]:
        notes: List[str] = []
        stale = self.run_dir.lock()
        self._resources.callback(self.run_dir.unlock)
        if stale:
            notes.append(stale)
        d = self.cfg.data
        inputs = [self.cfg.model.backbone.weights, d.pseudo.path, d.train_ids_file, d.ann_file]
        path, more = choose_start(self.run_dir, inputs, self.resume, self.overwrite)
        # Logging starts here, once log.txt's folder is ours.
        self._resources.enter_context(_run_logging(self.cfg.train.output_dir, console=True))
        for note in notes + more:
            logger.warning(note)
        return path

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """The full checkpoint (collective: gathers every rank's RNG state; call on all ranks)."""
        rng = du.all_gather_object(capture_rng_state())
        return {
            "model": du.unwrap(self.model).state_dict(),
            "config": to_dict(self.cfg),
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng,
            "loader": {
                "epoch": self.data.epoch,
                "batch": self.data.batch_in_epoch,
                "batch_size": self.cfg.data.batch_size,
                "num_images": len(self.train_dataset),
            },
            "best": {"score": self.best_score, "iteration": self.best_iteration},
            "world_size": self.world_size,
        }

    def load_state_dict(self, ck: Dict[str, Any], path: str) -> None:
        """Restore a checkpoint into this trainer; the current config's solver settings (learning
        rate and schedule, optimiser hyperparameters) apply from the checkpoint's iteration on."""
        iteration = int(ck["iteration"])
        loader = ck.get("loader") or {}
        if "num_images" in loader and int(loader["num_images"]) != len(self.train_dataset):
            raise ResumeError(
                f"the training split has {len(self.train_dataset)} images but the checkpoint was trained on "
                f"{loader['num_images']}: the data changed, and the saved data position would mean other images "
                f"({path})"
            )
        saved_epoch = (ck.get("scheduler") or {}).get("last_epoch", iteration)
        if saved_epoch != iteration:
            raise ResumeError(f"the checkpoint is inconsistent: its scheduler is at step {saved_epoch} but its iteration is {iteration} ({path})")
        try:
            du.unwrap(self.model).load_state_dict(ck["model"])
        except RuntimeError as e:
            raise ResumeError(f"the checkpoint's weights do not fit the model: {str(e).splitlines()[0]} ({path})") from None
        self._load_optimizer(ck, path)
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.iteration = iteration
        old_lr = [g.get("lr") for g in (ck["optimizer"].get("param_groups") or [])]
        new_lr = set_schedule_position(self.scheduler, iteration)
        if self.is_main and old_lr and any(abs(a - b) > 1e-12 * max(abs(a), abs(b), 1e-30) for a, b in zip(old_lr, new_lr)):
            logger.warning("learning rate at iteration %d: %.4g (the checkpoint's) -> %.4g (this config's schedule)",
                           iteration, old_lr[0], new_lr[0])
        best = ck.get("best") or {}
        self.best_score, self.best_iteration = best.get("score"), best.get("iteration")
        self._restore_data_position(loader, int(ck.get("world_size", 1)), path)
        rng = ck.get("rng") or []
        if self.rank < len(rng):
            restore_rng_state(rng[self.rank])
        else:
            seed_everything(self.cfg.train.seed + self.rank + self.iteration)

    def _load_optimizer(self, ck: Dict[str, Any], path: str) -> None:
        """The checkpoint's per-parameter state (momentum buffers, Adam moments) with this config's
        hyperparameters (lr, weight decay, momentum, betas), which win over the saved ones."""
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError) as e:
            raise ResumeError(f"the checkpoint's optimiser state does not fit this model and optimiser: {e} ({path})") from None
        for group, values in zip(self.optimizer.param_groups, fresh):
            group.update(values)
        check_finite_optimizer_state(self.optimizer, {id(p): n for n, p in du.unwrap(self.model).named_parameters()}, path)

    def _restore_data_position(self, loader: Dict[str, Any], old_world: int, path: str) -> None:
        """The saved epoch and batch; converted by images seen when the batch size or the number of
        processes changed (the per-rank position means something else then)."""
        data, batch_size = self.data, self.cfg.data.batch_size
        data.epoch, data.batch_in_epoch = int(loader.get("epoch", 0)), int(loader.get("batch", 0))
        if old_world != self.world_size or loader.get("batch_size", batch_size) != batch_size:
            seen = data.batch_in_epoch * int(loader.get("batch_size", batch_size)) * old_world
            data.batch_in_epoch = seen // (batch_size * self.world_size)
            logger.warning(
                "%s was written by %d process(es) with batch size %s; resuming with %d x %d: the data "
                "order and random draws will not replay the original run exactly",
                path, old_world, loader.get("batch_size"), self.world_size, batch_size,
            )

    # ------------------------------------------------------------------- train
    def train(self) -> Dict[str, Any]:
        """Run to ``solver.max_iter``; returns ``{"iteration", "best_score", "best_iteration", "last_val"}``.

        The run directory is released at the end, also when training fails or is interrupted.
        """
        if self._closed:
            raise RuntimeError("this Trainer has finished (or was closed); build a new one to train again")
        try:
            step = TrainStep(
                self.model, self.optimizer, iter(self.data), self.device, self.autocast, self.scaler,
                self.cfg.solver.accum_steps, self.cfg.solver.clip_grad_norm, self.world_size,
                self.cfg.train.find_unused_parameters,
            )
            self.loop.register_hooks(self.build_hooks(step))
            self.loop.train(step)
        finally:
            self.close()
        return {
            "iteration": self.iteration,
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
            "last_val": dict(self.last_val),
        }

    def build_hooks(self, step: TrainStep) -> List[HookBase]:
        """The hooks of a run, in the order they are called (``maskrcnn.engine.hooks``)."""
        imgs_per_iter = self.cfg.data.batch_size * self.cfg.solver.accum_steps * self.world_size
        return [
            RunFilesHook(self),
            step,  # wraps the model in DistributedDataParallel
            NonFiniteLossGuard(self),
            LRScheduleHook(self.scheduler),
            MetricsHook(self),
            ProgressHook(self.progress and self.is_main, imgs_per_iter),
            ValidationHook(self),
            CheckpointHook(self),
            CurvesHook(self),
        ]


def train(
    cfg: Config,
    resume: bool = False,
    **kwargs,
) -> Dict[str, Any]:
    """Build a ``Trainer`` for ``cfg`` and run it (see ``Trainer`` for the keyword arguments)."""
    return Trainer(cfg, resume=resume, **kwargs).train()
