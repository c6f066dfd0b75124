"""The training loop: AMP, gradient accumulation and clipping, exact resume, DDP, validation.

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
import math
import os
import random
import sys
import time
import warnings
from collections import defaultdict
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, DistributedSampler
from tqdm import tqdm

from maskrcnn.config import Config, ConfigError, check_class_counts, dump_config, resume_changes, to_dict
from maskrcnn.device import resolve_device
from maskrcnn.engine import distributed as du
from maskrcnn.engine.checkpoint import (
    BEST,
    CONFIG_FILE,
    FINAL,
    LAST_CHECKPOINT,
    RUN_MARKER,
    ResumeError,
    RunDirectory,
    RunDirectoryError,
    capture_rng_state,
    nonfinite_tensors,
    restore_rng_state,
    unwrap,
)
from maskrcnn.engine.curves import CURVES_FILE, MetricsLog, draw_curves, read_metrics
from maskrcnn.engine.schedule import build_lr_scheduler, build_optimizer, set_schedule_position
from maskrcnn.engine.validate import run_validation
from maskrcnn.inference.checkpoint import load_checkpoint
from maskrcnn.progress import format_seconds

logger = logging.getLogger("maskrcnn.engine")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; training stopped without writing a checkpoint."""


def check_train_config(cfg: Config) -> None:
    """Raise ``ConfigError`` naming the key for values the trainer cannot run with: the training
    sections' declared checks (``maskrcnn.config``), one threshold per class or one for all."""
    cfg.solver.validate()
    cfg.train.validate()
    check_class_counts(cfg.test, cfg.model.roi_heads.num_classes)


def _why_fixed(key: str) -> str:
    if key.startswith("model."):
        return "the model the checkpoint holds"
    if key.startswith("data."):
        return "the training data and its train/val split"
    if key.startswith("solver."):
        return "the saved optimiser state"
    if key == "train.seed":
        return "the data order of the epoch in progress"
    return "not resumable"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_context(device: torch.device, mode: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for ``solver.amp`` (``""`` = full precision)."""
    if not mode:
        return contextlib.nullcontext
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError("solver.amp: bf16 is not supported on this GPU; use fp16")
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _build_loader(dataset: Dataset, cfg: Config, rank: int, world_size: int):
    """The resumable training loader: batches of ``list[Sample]``, this rank's shard."""
    from maskrcnn.data import build_loader

    seed = cfg.train.seed
    shard = None
    if world_size > 1:  # pads by wrapping so that every rank gets as many batches
        shard = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    return build_loader(
        dataset, cfg.data.batch_size, shuffle=True, num_workers=cfg.data.num_workers, sampler=shard, seed=seed
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
            keys ``maskrcnn.config`` declares resumable may differ from the checkpoint's config and apply from the resume
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
            ck = self._read_resume_checkpoint(self.resume_path)

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
        self.autocast = amp_context(self.device, cfg.solver.amp)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.solver.amp == "fp16" else None

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
        self.loader = _build_loader(train_dataset, cfg, self.rank, self.world_size)
        self.iteration = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of this epoch already consumed (per rank)
        self.best_score: Optional[float] = None
        self.best_iteration: Optional[int] = None
        self.last_val: Dict[str, float] = {}
        if ck is not None:
            self.load_state_dict(ck, self.resume_path)
            if self.is_main:
                logger.info("resumed from %s at iteration %d (epoch %d, batch %d)",
                            self.resume_path, self.iteration, self.epoch, self.batch_in_epoch)

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
        out = self.cfg.train.output_dir
        notes: List[str] = []
        stale = self.run_dir.lock()
        self._resources.callback(self.run_dir.unlock)
        if stale:
            notes.append(stale)
        removed = self.run_dir.remove_orphan_temp_files()
        if removed:
            notes.append(f"removed {len(removed)} temp file(s) of writes killed before they finished: {', '.join(removed)}")
        path = self.run_dir.latest() if self.resume else None
        self._check_foreign_files(out)
        if path is None:
            earlier = self.run_dir.checkpoint_files()
            if earlier and not self.overwrite:
                what = f"last_checkpoint names {self._marker_name()}" if LAST_CHECKPOINT in earlier else "no last_checkpoint"
                files = ", ".join(n for n in earlier if n != LAST_CHECKPOINT)
                if self.resume:
                    raise RunDirectoryError(
                        f"nothing to resume in train.output_dir ({what}) but it holds an earlier run's {files}: "
                        f"start over with --overwrite (removes them) or choose another train.output_dir ({out})"
                    )
                raise RunDirectoryError(
                    f"train.output_dir holds an earlier run ({what}; {files}): continue it with --resume, replace it "
                    f"with --overwrite (removes its checkpoints), or choose another train.output_dir ({out})"
                )
            if self.overwrite:
                removed = self.run_dir.remove_run_files()
                if removed:
                    notes.append(f"--overwrite: removed the earlier run's {', '.join(removed)}")
            if self.resume:
                notes.append(f"--resume: no checkpoint in {out}; starting a new run")
        # Logging starts here, once log.txt's folder is ours.
        self._resources.enter_context(_run_logging(out, console=True))
        for note in notes:
            logger.warning(note)
        return path

    def _check_foreign_files(self, out: str) -> None:
        """RunDirectoryError when the run would replace or remove files train.py did not write: run
        file names in a folder without a run marker (a user's own ``config.yaml``), or this run's
        inputs (backbone weights, pseudo-labels) among the folder's run files."""
        foreign = self.run_dir.unmarked_run_files()
        if foreign:
            raise RunDirectoryError(
                f"train.output_dir holds {', '.join(foreign)} but no run marker ({RUN_MARKER}): train.py did not "
                f"write them and would replace{' (--overwrite: remove)' if self.overwrite else ''} them; move them or "
                f"choose another train.output_dir ({out})")
        d = self.cfg.data
        inputs = self.run_dir.inputs_among_run_files([self.cfg.model.backbone.weights, d.pseudo.path, d.train_ids_file,
                                                      d.ann_file])
        if inputs and (self.overwrite or not self.resume):
            raise RunDirectoryError(
                f"{inputs[0]} is an input of this run and a file of its train.output_dir that the run replaces or "
                f"--overwrite removes: copy it elsewhere first or choose another train.output_dir ({out})")

    def _marker_name(self) -> str:
        try:
            with open(self.run_dir.path(LAST_CHECKPOINT)) as f:
                return f.read().strip() or "nothing"
        except OSError:
            return "?"

    # ------------------------------------------------------------------ resume
    def _read_resume_checkpoint(self, path: str) -> Dict[str, Any]:
        """The checkpoint to resume from, refused (``ResumeError``) when its config differs in keys
        a resumed run cannot change, or its weights hold NaN/inf."""
        try:
            ck = load_checkpoint(path)
        except RuntimeError as e:
            raise ResumeError(f"cannot resume from an unreadable checkpoint: {e}") from None
        if not isinstance(ck.get("config") or {}, dict):
            raise ResumeError(f"the checkpoint's config is not a mapping (a {type(ck['config']).__name__}): "
                              f"not a checkpoint train.py wrote ({path})")
        changes, refused = resume_changes(ck.get("config") or {}, to_dict(self.cfg))
        if refused:
            parts = "; ".join(f"{k}: {a!r} -> {b!r} ({_why_fixed(k)})" for k, a, b in refused)
            raise ResumeError(
                f"--resume cannot change {parts}. Set them back to the run's values (its "
                f"{CONFIG_FILE}) or train in another train.output_dir ({path})"
            )
        bad = nonfinite_tensors(ck["model"])
        if bad:
            first = ck["model"][bad[0]]
            kind = "NaN" if bool(torch.isnan(first).any()) else "inf"
            earlier = [n for n in self.run_dir.periodic_files() if self.run_dir.path(n) != path]
            raise ResumeError(
                f"the checkpoint's weights are not finite: {bad[0]} holds {kind}"
                + (f" ({len(bad) - 1} more tensors too)" if len(bad) > 1 else "")
                + ". Resume from an earlier checkpoint (write its name"
                + (f", e.g. {earlier[-1]}," if earlier else "")
                + f" into {LAST_CHECKPOINT}) or start over with --overwrite ({path})"
            )
        if self.is_main:
            for k, a, b in changes:
                logger.warning("resuming with %s changed: %r -> %r (applies from iteration %s on)", k, a, b, ck.get("iteration"))
        return ck

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """The full checkpoint (collective: gathers every rank's RNG state; call on all ranks)."""
        rng = du.all_gather_object(capture_rng_state())
        return {
            "model": unwrap(self.model).state_dict(),
            "config": to_dict(self.cfg),
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng,
            "loader": {
                "epoch": self.epoch,
                "batch": self.batch_in_epoch,
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
            unwrap(self.model).load_state_dict(ck["model"])
        except RuntimeError as e:
            raise ResumeError(f"the checkpoint's weights do not fit the model: {str(e).splitlines()[0]} ({path})") from None
        # This config's hyperparameters (lr, weight decay, momentum, betas) win over the saved ones;
        # the optimiser's per-parameter state (momentum buffers, Adam moments) is the checkpoint's.
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError) as e:
            raise ResumeError(f"the checkpoint's optimiser state does not fit this model and optimiser: {e} ({path})") from None
        for group, values in zip(self.optimizer.param_groups, fresh):
            group.update(values)
        self._check_finite_optimizer_state(path)
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
        self.epoch, self.batch_in_epoch = int(loader.get("epoch", 0)), int(loader.get("batch", 0))
        old_world = int(ck.get("world_size", 1))
        rng = ck.get("rng") or []
        if old_world != self.world_size or loader.get("batch_size", self.cfg.data.batch_size) != self.cfg.data.batch_size:
            # The per-rank position means something else now: keep the number of images seen.
            seen = self.batch_in_epoch * int(loader.get("batch_size", self.cfg.data.batch_size)) * old_world
            self.batch_in_epoch = seen // (self.cfg.data.batch_size * self.world_size)
            logger.warning(
                "%s was written by %d process(es) with batch size %s; resuming with %d x %d: the data "
                "order and random draws will not replay the original run exactly",
                path, old_world, loader.get("batch_size"), self.world_size, self.cfg.data.batch_size,
            )
        if self.rank < len(rng):
            restore_rng_state(rng[self.rank])
        else:
            seed_everything(self.cfg.train.seed + self.rank + self.iteration)

    def _check_finite_optimizer_state(self, path: str) -> None:
        names = {id(p): n for n, p in unwrap(self.model).named_parameters()}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                for key, value in self.optimizer.state.get(p, {}).items():
                    if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                        raise ResumeError(
                            f"the checkpoint's optimiser state is not finite: {key} of {names.get(id(p), '?')}. Resume "
                            f"from an earlier checkpoint (write its name into {LAST_CHECKPOINT}) or start over with "
                            f"--overwrite ({path})"
                        )

    # ------------------------------------------------------------------- data
    def _batches(self) -> Iterator[list]:
        """Endless batches from the resumed position, advancing ``epoch``/``batch_in_epoch``."""
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

    # ------------------------------------------------------------------- train
    def train(self) -> Dict[str, Any]:
        """Run to ``solver.max_iter``; returns ``{"iteration", "best_score", "best_iteration", "last_val"}``.

        The run directory is released at the end, also when training fails or is interrupted.
        """
        if self._closed:
            raise RuntimeError("this Trainer has finished (or was closed); build a new one to train again")
        cfg = self.cfg
        try:
            if self.is_main:
                self._start_files()
            du.barrier()
            model = self.model
            if self.world_size > 1:
                ids = [self.device.index] if self.device.type == "cuda" else None
                model = nn.parallel.DistributedDataParallel(
                    self.model, device_ids=ids, find_unused_parameters=cfg.train.find_unused_parameters
                )
            self._loop(model)
            if self.is_main:
                self._draw()
        finally:
            self.close()
        return {
            "iteration": self.iteration,
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
            "last_val": dict(self.last_val),
        }

    def _start_files(self) -> None:
        """Rank 0, before the first step: the metrics file, the checkpoints and the config match the
        point the run starts from."""
        out = self.cfg.train.output_dir
        if self.resume_path is None:
            self.metrics.reset()
        else:
            self.metrics.truncate_after(self.iteration)
            aside = self.run_dir.set_aside_best(self.iteration)
            if aside:
                logger.warning("model_best.pth was saved after iteration %d by the run being resumed; kept as %s",
                               self.iteration, aside)
            if os.path.basename(self.resume_path) == FINAL and self.iteration < self.cfg.solver.max_iter:
                name = self.run_dir.demote_final(self.iteration)
                if name:
                    logger.info("continuing a finished run to iteration %d: %s is now %s",
                                self.cfg.solver.max_iter, FINAL, name)
        if not os.path.isfile(self.run_dir.path(RUN_MARKER)):
            self.run_dir.mark()
        dump_config(self.cfg, os.path.join(out, CONFIG_FILE))

    def _loop(self, model: nn.Module) -> None:
        cfg, s = self.cfg, self.cfg.solver
        max_iter, accum = s.max_iter, s.accum_steps
        imgs_per_iter = cfg.data.batch_size * accum * self.world_size
        if self.iteration >= max_iter:
            if self.is_main:
                logger.info("already at iteration %d >= solver.max_iter %d: nothing to train", self.iteration, max_iter)
            return
        if self.is_main:
            n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            logger.info(
                "training %d iterations from %d on %s (%d process(es), %d CPU threads each; %d images/iter, "
                "%.2fM trainable params) -> %s",
                max_iter - self.iteration, self.iteration, self.device, self.world_size, torch.get_num_threads(),
                imgs_per_iter, n_params / 1e6, cfg.train.output_dir,
            )
        bar = tqdm(total=max_iter, initial=self.iteration, disable=not (self.progress and self.is_main), dynamic_ncols=True, unit="it")
        batches = self._batches()
        window: Dict[str, List[float]] = defaultdict(list)
        is_ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        try:
            while self.iteration < max_iter:
                t_start = time.perf_counter()
                self.optimizer.zero_grad(set_to_none=True)
                components, data_time = self._forward_backward(model, batches, accum, is_ddp)
                step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used (logged)
                grad_norm = self._step()
                with warnings.catch_warnings():
                    # fp16: the scaler skips steps whose gradients overflowed, and torch then warns
                    # that the scheduler stepped first; the schedule follows the iteration anyway.
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                    self.scheduler.step()
                self.iteration += 1

                components["loss"] = sum(components.values())
                for k, v in components.items():
                    window[k].append(v)
                elapsed = time.perf_counter() - t_start
                window["time"].append(elapsed)
                window["data_time"].append(data_time)
                window["lr"] = [step_lr]
                if grad_norm is not None:
                    window["grad_norm"].append(grad_norm)
                bar.update(1)
                if self.is_main and bar.disable is False:
                    bar.set_postfix_str(
                        " ".join(f"{k.replace('loss_', '')}={v:.3f}" for k, v in components.items())
                        + f" lr={step_lr:.2e} img/s={imgs_per_iter / max(elapsed, 1e-9):.1f}",
                        refresh=False,
                    )
                at_end = self.iteration == max_iter
                if (cfg.train.log_period and self.iteration % cfg.train.log_period == 0) or at_end:
                    self._log_train(window, imgs_per_iter)
                    window = defaultdict(list)
                if cfg.train.eval_period and (self.iteration % cfg.train.eval_period == 0 or at_end):
                    self._validate()
                if at_end:
                    self._checkpoint(FINAL)
                elif self.iteration % cfg.train.checkpoint_period == 0:
                    self._checkpoint(self.run_dir.periodic_name(self.iteration))
        finally:
            bar.close()

    def _forward_backward(self, model: nn.Module, batches: Iterator[list], accum: int,
                          is_ddp: bool) -> Tuple[Dict[str, float], float]:
        """Losses and gradients of one optimiser step over ``accum`` micro-batches.

        Returns the loss components averaged over the micro-batches, and the seconds spent
        waiting for data.
        """
        data_time = 0.0
        components: Dict[str, float] = defaultdict(float)
        for micro in range(accum):
            t_data = time.perf_counter()
            batch = next(batches)
            images = [smp.image.to(self.device, non_blocking=True) for smp in batch]
            targets = [smp.instances.to(self.device) for smp in batch]
            data_time += time.perf_counter() - t_data
            sync = model.no_sync() if is_ddp and micro < accum - 1 else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    losses = model(images, targets)
                total = sum(v.float() for v in losses.values())
                # One device sync for all components (they are logged every iteration anyway).
                host = torch.stack([v.detach().float() for v in losses.values()] + [total.detach()]).tolist()
                values = dict(zip(losses.keys(), host[:-1]))
                self._check_finite(host[-1], values)
                scaled = total / accum
                if self.scaler is not None:
                    scaled = self.scaler.scale(scaled)
                scaled.backward()
            for k, v in values.items():
                components[k] += v / accum
        return dict(components), data_time

    def _check_finite(self, total: float, values: Dict[str, float]) -> None:
        bad = not math.isfinite(total)
        if du.any_true(bad):  # every rank stops together (a lone rank leaving would hang the others)
            last = None
            try:
                last = self.run_dir.latest()
            except FileNotFoundError:
                pass
            parts = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            raise NonFiniteLossError(
                f"non-finite loss at iteration {self.iteration + 1} (rank {self.rank}: loss={total:.4g}; {parts}). "
                f"Training stopped without writing a checkpoint; the last good one is "
                f"{last or 'none (no checkpoint was written yet)'}. Lower solver.lr, lengthen solver.warmup_iters, "
                f"set solver.clip_grad_norm, or check the data; then --resume."
            )

    def _step(self) -> Optional[float]:
        """Optimiser step with optional clipping and loss scaling; the pre-clip grad norm or None."""
        clip = self.cfg.solver.clip_grad_norm
        grad_norm = None
        if self.scaler is not None:
            if clip > 0:
                self.scaler.unscale_(self.optimizer)
                grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), clip))
            self.scaler.step(self.optimizer)  # skips the step when fp16 gradients overflowed
            self.scaler.update()
        else:
            if clip > 0:
                grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), clip))
            self.optimizer.step()
        return grad_norm

    # ---------------------------------------------------------------- logging
    def _log_train(self, window: Dict[str, List[float]], imgs_per_iter: int) -> None:
        means = {k: sum(v) / len(v) for k, v in window.items() if v}
        means = du.reduce_mean(means)
        if not self.is_main:
            return
        t = max(means.pop("time", 0.0), 1e-9)
        record = {"iteration": self.iteration, "epoch": self.epoch, "lr": means.pop("lr")}
        record["loss"] = means.pop("loss")
        record.update({k: means[k] for k in sorted(means) if k.startswith("loss_")})
        record.update(
            {
                "time": t,
                "data_time": means.get("data_time", 0.0),
                "it_per_s": 1.0 / t,
                "img_per_s": imgs_per_iter / t,
            }
        )
        if "grad_norm" in means:
            record["grad_norm"] = means["grad_norm"]
        self.metrics.write(record)
        # Always in log.txt; on the console only without the bar (whose postfix shows the losses).
        comps = "  ".join(f"{k}: {record[k]:.4f}" for k in record if k.startswith("loss"))
        eta = format_seconds((self.cfg.solver.max_iter - self.iteration) * t)  # training steps only, not validation
        logger.info(
            "iter %d/%d  %s  lr: %.3g  %.2f it/s  %.1f img/s  ETA %s",
            self.iteration, self.cfg.solver.max_iter, comps, record["lr"], record["it_per_s"], record["img_per_s"], eta,
            extra={"console": not self.progress},
        )

    def _draw(self) -> None:
        records = read_metrics(self.metrics.path)
        draw_curves(records, os.path.join(self.cfg.train.output_dir, CURVES_FILE), self.cfg.solver.max_iter, title=self.cfg.train.output_dir)

    # ------------------------------------------------------------- validation
    def _validate(self) -> None:
        if self.val_dataset is None:
            return
        t0 = time.perf_counter()
        scores = run_validation(
            unwrap(self.model),
            self.val_dataset,
            self.cfg.test,
            self.device,
            batch_size=self.cfg.data.batch_size,
            max_images=self.cfg.train.max_eval_images,
            autocast=self.autocast,
            progress="bar" if self.progress else "off",
            coco=self.cfg.train.eval_coco,
            class_names=getattr(self.val_dataset, "class_names", ()),
        )
        self.last_val = scores
        score = scores["val/mAP"]
        improved = self.best_score is None or score > self.best_score
        if improved:
            self.best_score, self.best_iteration = score, self.iteration
        if self.is_main:
            self.metrics.write({"iteration": self.iteration, **scores, "val_time": time.perf_counter() - t0})
            coco = "".join(f", COCO {t} AP {scores[f'val/{t}/AP']:.4f}" for t in ("segm", "bbox")
                           if f"val/{t}/AP" in scores)
            logger.info(
                "iter %d: validation mAP %.4f on %d images (best %.4f at %d)%s",
                self.iteration, score, scores.get("val/num_images", 0), self.best_score, self.best_iteration, coco,
            )
            if improved:
                self.run_dir.save(
                    {
                        "model": unwrap(self.model).state_dict(),
                        "config": to_dict(self.cfg),
                        "iteration": self.iteration,
                        "score": score,
                    },
                    BEST,
                    mark_last=False,
                )
            self._draw()

    def _checkpoint(self, name: str) -> None:
        state = self.state_dict()  # collective
        if self.is_main:
            path = self.run_dir.save(state, name)
            logger.info("iter %d: saved %s", self.iteration, path)
            self._draw()
        du.barrier()


def train(
    cfg: Config,
    resume: bool = False,
    **kwargs,
) -> Dict[str, Any]:
    """Build a ``Trainer`` for ``cfg`` and run it (see ``Trainer`` for the keyword arguments)."""
    return Trainer(cfg, resume=resume, **kwargs).train()
