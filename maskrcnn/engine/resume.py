"""The resume policy: which config changes a resumed run honours, the checks a checkpoint must
pass before a run continues from it, and the RNG state a checkpoint carries.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from maskrcnn.config import Config, resume_changes, to_dict
from maskrcnn.engine.run_directory import CONFIG_FILE, LAST_CHECKPOINT, ResumeError, RunDirectory
from maskrcnn.inference.checkpoint import load_checkpoint
from maskrcnn.model.weight_files import nonfinite_kind, nonfinite_tensors

logger = logging.getLogger("maskrcnn.engine")

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


def check_resume_compatible(saved: Dict[str, Any], cfg: Config, path: str) -> List[Tuple[str, Any, Any]]:
    """The config changes from the checkpoint's ``saved`` config to ``cfg`` that a resumed run
    applies; ``ResumeError`` naming each key it cannot change (each key's ``resume`` declaration,
    ``maskrcnn.config.resume_changes``)."""
    changes, refused = resume_changes(saved, to_dict(cfg))
    if refused:
        parts = "; ".join(f"{k}: {a!r} -> {b!r} ({_why_fixed(k)})" for k, a, b in refused)
        raise ResumeError(
            f"--resume cannot change {parts}. Set them back to the run's values (its "
            f"{CONFIG_FILE}) or train in another train.output_dir ({path})"
        )
    return changes


def read_resume_checkpoint(path: str, cfg: Config, run_dir: RunDirectory, is_main: bool) -> Dict[str, Any]:
    """The checkpoint to resume from, refused (``ResumeError``) when its config differs in keys
    a resumed run cannot change, or its weights hold NaN/inf."""
    try:
        ck = load_checkpoint(path)
    except RuntimeError as e:
        raise ResumeError(f"cannot resume from an unreadable checkpoint: {e}") from None
    if not isinstance(ck.get("config") or {}, dict):
        raise ResumeError(f"the checkpoint's config is not a mapping (a {type(ck['config']).__name__}): "
                          f"not a checkpoint train.py wrote ({path})")
    changes = check_resume_compatible(ck.get("config") or {}, cfg, path)
    bad = nonfinite_tensors(ck["model"])
    if bad:
        earlier = [n for n in run_dir.periodic_files() if run_dir.path(n) != path]
        raise ResumeError(
            f"the checkpoint's weights are not finite: {bad[0]} holds {nonfinite_kind(ck['model'][bad[0]])}"
            + (f" ({len(bad) - 1} more tensors too)" if len(bad) > 1 else "")
            + ". Resume from an earlier checkpoint (write its name"
            + (f", e.g. {earlier[-1]}," if earlier else "")
            + f" into {LAST_CHECKPOINT}) or start over with --overwrite ({path})"
        )
    if is_main:
        for k, a, b in changes:
            logger.warning("resuming with %s changed: %r -> %r (applies from iteration %s on)", k, a, b, ck.get("iteration"))
    return ck


def check_finite_optimizer_state(optimizer: torch.optim.Optimizer, names: Dict[int, str], path: str) -> None:
    """``ResumeError`` naming the first optimiser state tensor holding NaN/inf (``names``: parameter
    names by ``id``)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            bad = nonfinite_tensors(optimizer.state.get(p, {}))
            if bad:
                raise ResumeError(
                    f"the checkpoint's optimiser state is not finite: {bad[0]} of {names.get(id(p), '?')}. Resume "
                    f"from an earlier checkpoint (write its name into {LAST_CHECKPOINT}) or start over with "
                    f"--overwrite ({path})"
                )


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
