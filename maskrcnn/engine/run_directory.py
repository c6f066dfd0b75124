"""The run directory (``train.output_dir``): one run at a time, its files, and where a run starts.
Checkpoints are read and written by ``maskrcnn.inference.checkpoint``.

Files in a run directory (``train.output_dir``):
- ``model_<iteration:07d>.pth``: periodic full checkpoints (the last ``train.keep_checkpoints``);
- ``last_checkpoint``: a text file naming the newest full checkpoint (what ``--resume`` reads);
- ``model_final.pth``: the full checkpoint at ``max_iter``;
- ``model_best.pth``: model + config of the best validation score (no optimiser state);
- ``run.lock``: present while a run uses the directory (its pid, host and start time): one run
  per directory (``RunDirectory.lock``).
"""
from __future__ import annotations

import os
import re
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from maskrcnn.engine.curves import CURVES_FILE, METRICS_FILE
from maskrcnn.errors import UserError
from maskrcnn.fileio import FolderLock, FolderLocked, atomic_write_text, describe_holder, orphan_temp_files
from maskrcnn.inference.checkpoint import atomic_save, load_checkpoint
from maskrcnn.model.weight_files import nonfinite_tensors

LAST_CHECKPOINT = "last_checkpoint"
FINAL = "model_final.pth"
BEST = "model_best.pth"
CONFIG_FILE = "config.yaml"
LOCK_FILE = "run.lock"
RUN_MARKER = "run_marker.json"  # written when a run claims its folder: the run files here are train.py's
_PERIODIC = re.compile(r"^model_(\d{7,})\.pth$")
_CHECKPOINT = re.compile(r"^model_.*\.pth$")  # periodic, final, best and superseded bests


class RunError(UserError, RuntimeError):
    """A training run refused at start, before it changed anything; the message is one line,
    ``what (where)``. The front end reports it without a traceback (exit code 2)."""


class RunDirectoryError(RunError):
    """``train.output_dir`` cannot be used as asked: another run holds it, or it holds an earlier
    run's checkpoints and neither resume nor overwrite was asked for."""


class ResumeError(RunError):
    """A run cannot be resumed as asked: a config change it cannot honour, a checkpoint with
    non-finite values, unreadable or not fitting the model, or a training set that changed."""


# ------------------------------------------------------------------------- run directory
class RunDirectory:
    """The files of one run directory (rank 0 writes and holds the lock; every rank may read)."""

    def __init__(self, output_dir: str, keep: int = 2):
        self.output_dir = output_dir
        self.keep = keep
        self._lock: Optional[FolderLock] = None

    # ------------------------------------------------------------ one run at a time
    def lock(self) -> Optional[str]:
        """Take the directory for this process (creating it); returns a warning when the lock of a
        run that died was taken over, else None.

        Raises:
            RunDirectoryError: another live run holds it (the message names its pid and host).
        """
        os.makedirs(self.output_dir, exist_ok=True)
        lock = FolderLock(self.path(LOCK_FILE))
        try:
            stale = lock.acquire()
        except FolderLocked as e:
            raise RunDirectoryError(
                f"another training run is using train.output_dir ({e}): wait for it to end or choose another "
                f"train.output_dir ({self.path(LOCK_FILE)})"
            ) from None
        self._lock = lock
        if stale:
            return (f"took over {self.path(LOCK_FILE)} from {describe_holder(stale)}, which is no longer running "
                    f"(killed or crashed)")
        return None

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @staticmethod
    def is_run_file(name: str) -> bool:
        """Whether the trainer writes a file of this name (checkpoints, markers, logs, curves)."""
        return (name in (LAST_CHECKPOINT, CONFIG_FILE, METRICS_FILE, CURVES_FILE, RUN_MARKER)
                or bool(_CHECKPOINT.match(name)))

    def is_marked(self) -> bool:
        """Whether a run of train.py wrote this folder's run files (its marker, or ``last_checkpoint``
        of a run older than the marker)."""
        return os.path.isfile(self.path(RUN_MARKER)) or os.path.isfile(self.path(LAST_CHECKPOINT))

    def mark(self) -> None:
        """Write the run marker (rank 0, once the folder is claimed)."""
        import json

        atomic_write_text(self.path(RUN_MARKER), json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")

    def unmarked_run_files(self) -> List[str]:
        """Names of files here that train.py would replace or ``--overwrite`` remove, in a folder
        without a run marker: someone else's files (a user's ``config.yaml``)."""
        if not os.path.isdir(self.output_dir) or self.is_marked():
            return []
        return sorted(n for n in os.listdir(self.output_dir) if self.is_run_file(n) and os.path.isfile(self.path(n)))

    def inputs_among_run_files(self, inputs: Sequence[str]) -> List[str]:
        """The ``inputs`` (files a run reads: backbone weights, pseudo-labels) that are run files of
        this folder, which ``--overwrite`` would remove or the run replace."""
        here = os.path.realpath(self.output_dir)
        return [p for p in inputs if p and os.path.dirname(os.path.realpath(p)) == here
                and self.is_run_file(os.path.basename(os.path.realpath(p)))]

    def checkpoint_files(self) -> List[str]:
        """Names of checkpoints and the ``last_checkpoint`` marker present (an earlier run's work)."""
        if not os.path.isdir(self.output_dir):
            return []
        return sorted(n for n in os.listdir(self.output_dir) if n == LAST_CHECKPOINT or _CHECKPOINT.match(n))

    def periodic_files(self) -> List[str]:
        """Names of the periodic checkpoints ``model_<iteration>.pth`` present, oldest first."""
        if not os.path.isdir(self.output_dir):
            return []
        return sorted(n for n in os.listdir(self.output_dir) if _PERIODIC.match(n))

    def remove_orphan_temp_files(self) -> List[str]:
        """Remove temp files of writes killed before their rename (the lock holder alone calls this:
        no other process writes these names here); returns their names."""
        removed = []
        for path in orphan_temp_files(self.output_dir, self.is_run_file):
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            removed.append(os.path.basename(path))
        return removed

    def remove_run_files(self) -> List[str]:
        """Remove an earlier run's checkpoints, marker, metrics, curves and config (``--overwrite``);
        other files (``log.txt``, the user's own) stay. Returns the names removed."""
        removed = []
        for name in sorted(os.listdir(self.output_dir)):
            if self.is_run_file(name) and os.path.isfile(self.path(name)):
                os.remove(self.path(name))
                removed.append(name)
        return removed

    def demote_final(self, iteration: int) -> Optional[str]:
        """A finished run continued to a larger ``max_iter``: ``model_final.pth`` (at ``iteration``)
        becomes the periodic checkpoint of that iteration, so that the directory never holds a
        "final" checkpoint of an unfinished run. Returns the new name (None if nothing to do)."""
        final = self.path(FINAL)
        name = self.periodic_name(iteration)
        if not os.path.isfile(final) or os.path.exists(self.path(name)):
            return None
        os.replace(final, self.path(name))
        atomic_write_text(self.path(LAST_CHECKPOINT), name + "\n")
        return name

    def set_aside_best(self, iteration: int) -> Optional[str]:
        """On resume from ``iteration``: a ``model_best.pth`` saved after that iteration belongs to the
        trajectory being replaced; it is renamed ``model_best_<its iteration>_before_resume.pth``
        (kept, but no longer taken for this run's best). Returns the new name, or None."""
        path = self.path(BEST)
        if not os.path.isfile(path):
            return None
        try:
            best_iteration = int(load_checkpoint(path).get("iteration", -1))
        except (RuntimeError, TypeError, ValueError):
            return None  # unreadable: left as it is; the run overwrites it at its first improvement
        if best_iteration <= iteration:
            return None
        name = f"model_best_{best_iteration:07d}_before_resume.pth"
        os.replace(path, self.path(name))
        return name

    # ------------------------------------------------------------------ checkpoints

    def path(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    def periodic_name(self, iteration: int) -> str:
        return f"model_{iteration:07d}.pth"

    def latest(self) -> Optional[str]:
        """Path of the checkpoint named by ``last_checkpoint``, or None when there is none."""
        marker = self.path(LAST_CHECKPOINT)
        if not os.path.isfile(marker):
            return None
        with open(marker) as f:
            name = f.read().strip()
        path = self.path(name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{marker} names {name!r}, which does not exist in {self.output_dir}")
        return path

    def save(self, state: Dict[str, Any], name: str, mark_last: bool = True) -> str:
        """Write ``state`` to ``name`` atomically; point ``last_checkpoint`` at it; prune old ones."""
        bad = nonfinite_tensors(state.get("model", {}))
        if bad:
            raise FloatingPointError(
                f"refusing to write {name}: non-finite values in {', '.join(bad[:5])}"
                + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            )
        path = self.path(name)
        atomic_save(state, path)
        if mark_last:
            atomic_write_text(self.path(LAST_CHECKPOINT), name + "\n")
            self._prune(keep_name=name)
        return path

    def _prune(self, keep_name: str) -> None:
        if self.keep <= 0:
            return
        periodic = self.periodic_files()
        for n in periodic[: max(len(periodic) - self.keep, 0)]:
            if n != keep_name:
                os.remove(self.path(n))


# ---------------------------------------------------------------------- where a run starts
def choose_start(run_dir: RunDirectory, inputs: Sequence[str], resume: bool, overwrite: bool) -> Tuple[Optional[str], List[str]]:
    """Rank 0, holding the lock: the checkpoint to resume from (or None for a new run) and the notes
    to log. Removes temp files of killed writes and, with ``overwrite``, the earlier run's files.

    Raises:
        RunDirectoryError: the run would replace files train.py did not write or its own
            ``inputs``, or the folder holds an earlier run that neither ``resume`` nor
            ``overwrite`` addresses.
    """
    out = run_dir.output_dir
    notes: List[str] = []
    removed = run_dir.remove_orphan_temp_files()
    if removed:
        notes.append(f"removed {len(removed)} temp file(s) of writes killed before they finished: {', '.join(removed)}")
    path = run_dir.latest() if resume else None
    _check_foreign_files(run_dir, inputs, resume, overwrite)
    if path is None:
        earlier = run_dir.checkpoint_files()
        if earlier and not overwrite:
            what = f"last_checkpoint names {_marker_name(run_dir)}" if LAST_CHECKPOINT in earlier else "no last_checkpoint"
            files = ", ".join(n for n in earlier if n != LAST_CHECKPOINT)
            if resume:
                raise RunDirectoryError(
                    f"nothing to resume in train.output_dir ({what}) but it holds an earlier run's {files}: "
                    f"start over with --overwrite (removes them) or choose another train.output_dir ({out})"
                )
            raise RunDirectoryError(
                f"train.output_dir holds an earlier run ({what}; {files}): continue it with --resume, replace it "
                f"with --overwrite (removes its checkpoints), or choose another train.output_dir ({out})"
            )
        if overwrite:
            removed = run_dir.remove_run_files()
            if removed:
                notes.append(f"--overwrite: removed the earlier run's {', '.join(removed)}")
        if resume:
            notes.append(f"--resume: no checkpoint in {out}; starting a new run")
    return path, notes


def _check_foreign_files(run_dir: RunDirectory, inputs: Sequence[str], resume: bool, overwrite: bool) -> None:
    """RunDirectoryError when the run would replace or remove files train.py did not write: run
    file names in a folder without a run marker (a user's own ``config.yaml``), or this run's
    inputs (backbone weights, pseudo-labels) among the folder's run files."""
    out = run_dir.output_dir
    foreign = run_dir.unmarked_run_files()
    if foreign:
        raise RunDirectoryError(
            f"train.output_dir holds {', '.join(foreign)} but no run marker ({RUN_MARKER}): train.py did not "
            f"write them and would replace{' (--overwrite: remove)' if overwrite else ''} them; move them or "
            f"choose another train.output_dir ({out})")
    inside = run_dir.inputs_among_run_files(inputs)
    if inside and (overwrite or not resume):
        raise RunDirectoryError(
            f"{inside[0]} is an input of this run and a file of its train.output_dir that the run replaces or "
            f"--overwrite removes: copy it elsewhere first or choose another train.output_dir ({out})")


def _marker_name(run_dir: RunDirectory) -> str:
    try:
        with open(run_dir.path(LAST_CHECKPOINT)) as f:
            return f.read().strip() or "nothing"
    except OSError:
        return "?"
