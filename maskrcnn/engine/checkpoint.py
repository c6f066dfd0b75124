"""Writing training checkpoints: atomic saves, RNG state and the run directory's files. Reading
them (``load_checkpoint``, ``load_model``) is ``maskrcnn.inference.checkpoint``.

A training checkpoint is one ``torch.save``'d dict:

    {"model": state_dict, "config": to_dict(cfg), "iteration": int,
     "optimizer": ..., "scheduler": ..., "scaler": ... | None,
     "rng": [per-rank RNG state], "loader": {"epoch": int, "batch": int},
     "best": {"score": float | None, "iteration": int | None}, "world_size": int}

Only plain Python values and tensors are stored (numpy RNG keys become a tensor), so every file
loads with ``torch.load(..., weights_only=True)``.

Files in a run directory (``train.output_dir``):
- ``model_<iteration:07d>.pth``: periodic full checkpoints (the last ``train.keep_checkpoints``);
- ``last_checkpoint``: a text file naming the newest full checkpoint (what ``--resume`` reads);
- ``model_final.pth``: the full checkpoint at ``max_iter``;
- ``model_best.pth``: model + config of the best validation score (no optimiser state).
"""
from __future__ import annotations

import os
import random
import re
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from maskrcnn.fileio import atomic_open, atomic_write_text

LAST_CHECKPOINT = "last_checkpoint"
FINAL = "model_final.pth"
BEST = "model_best.pth"
_PERIODIC = re.compile(r"^model_(\d{7,})\.pth$")


# --------------------------------------------------------------------------- atomic writes
def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through a temp file in the same folder, fsync and ``os.replace``.

    A reader never sees a partial file: on any failure (disk full, a pickling error, an
    interrupt) the temp file is removed and ``path`` keeps its old content, if any.
    """
    with atomic_open(path, "wb", fsync=True) as f:
        torch.save(obj, f)


# ------------------------------------------------------------------------------ RNG state
def capture_rng_state() -> Dict[str, Any]:
    """Python, numpy, torch (CPU) and CUDA generator states as weights_only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state``; CUDA states are restored when the device count matches."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------------------ checks
def nonfinite_tensors(state_dict: Dict[str, torch.Tensor]) -> List[str]:
    """Names of floating tensors of ``state_dict`` holding NaN or inf."""
    return [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------------- run directory
class RunDirectory:
    """The checkpoint files of one run directory (rank 0 writes; every rank may read)."""

    def __init__(self, output_dir: str, keep: int = 2):
        self.output_dir = output_dir
        self.keep = keep

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
        periodic = sorted(n for n in os.listdir(self.output_dir) if _PERIODIC.match(n))
        for n in periodic[: max(len(periodic) - self.keep, 0)]:
            if n != keep_name:
                os.remove(self.path(n))
