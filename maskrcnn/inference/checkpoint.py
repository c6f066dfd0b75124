"""Checkpoints, read and written: the one checkpoint -> model loader (predict, ablations, tools,
notebooks), the one checkpoint reader (also the trainer's ``--resume``) and the atomic writer.

A training checkpoint is one ``torch.save``'d dict:

    {"model": state_dict, "config": to_dict(cfg), "iteration": int,
     "optimizer": ..., "scheduler": ..., "scaler": ... | None,
     "rng": [per-rank RNG state], "loader": {"epoch": int, "batch": int},
     "best": {"score": float | None, "iteration": int | None}, "world_size": int}

Only plain Python values and tensors are stored (numpy RNG keys become a tensor), so every file
loads with ``torch.load(..., weights_only=True)``: tensors and plain values only, never arbitrary
pickled objects. ``model_best.pth`` holds the model, config, iteration and score only; a bare
``state_dict`` is read too, its config coming from a YAML file. A path that is not a file may name
a model of the zoo (``--weights nuclei``: ``maskrcnn.inference.zoo``). Saved configs go through
``maskrcnn.config.from_dict``, so keys that older versions wrote still load (``RETIRED_KEYS``).
The run directory's files around them are ``maskrcnn.engine.run_directory``'s.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from maskrcnn.config import Config, ConfigError, from_dict, load_config, to_dict
from maskrcnn.fileio import atomic_open
from maskrcnn.inference.zoo import resolve_weights
from maskrcnn.model.weight_files import WeightsError, nonfinite_kind, nonfinite_tensors, why_unreadable


class CheckpointError(WeightsError, RuntimeError):
    """A checkpoint that cannot be read or used: not a checkpoint, NaN/inf weights, another
    architecture than its config's. The message names the file (and the tensor)."""


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through a temp file in the same folder, fsync and ``os.replace``.

    A reader never sees a partial file: on any failure (disk full, a pickling error, an
    interrupt) the temp file is removed and ``path`` keeps its old content, if any.
    """
    with atomic_open(path, "wb", fsync=True) as f:
        torch.save(obj, f)


def _read(path: str) -> Any:
    path = resolve_weights(path)  # a file, or a model zoo name (``maskrcnn.inference.zoo``)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, a text file, or a pickle of arbitrary objects
        raise CheckpointError(why_unreadable(path, e, "checkpoint (.pth written by train.py)")) from None


def load_checkpoint(path: str) -> Dict[str, Any]:
    """The checkpoint dict at ``path`` on the CPU; clear errors for a missing or unreadable file."""
    ck = _read(path)
    if not isinstance(ck, dict) or "model" not in ck:
        raise CheckpointError(f"not a maskrcnn checkpoint: expected a dict with a 'model' state dict ({path})")
    return ck


def check_finite(state: Dict[str, Tensor], path: str) -> None:
    """Refuse weights holding NaN or inf (``CheckpointError`` naming the first bad tensor): a model
    with them predicts nothing or garbage, which would look like a valid, empty submission."""
    bad = nonfinite_tensors(state)
    if bad:
        kind = nonfinite_kind(state[bad[0]])
        more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        raise CheckpointError(f"non-finite weights: {bad[0]} holds {kind}{more}; refusing to predict with them ({path})")


def _check_fits(model: nn.Module, state: Dict[str, Tensor], path: str, source: str) -> None:
    """``CheckpointError`` naming the first tensor that is missing, unexpected or of another shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or shapes):
        return
    if shapes:
        k = shapes[0]
        what = (f"{k} is {list(state[k].shape)} in the file but {list(own[k].shape)} in the model"
                + (f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""))
    elif missing:
        what = f"{len(missing)} tensor(s) missing, e.g. {missing[0]}"
    else:
        what = f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}"
    raise CheckpointError(f"the weights do not fit the model built from {source}: {what} ({path})")


def read_checkpoint(path: str) -> Any:
    """The object in a checkpoint file (a trainer checkpoint or a bare state dict) on the CPU, read
    with ``weights_only=True``; clear errors for a missing or unreadable file."""
    return _read(path)


def load_model(path: str, device: Union[str, torch.device] = "cpu", config: Union[str, Config, None] = None,
               overrides: Sequence[str] = ()) -> Tuple[nn.Module, Config]:
    """Rebuild the model of a checkpoint and load its weights.

    Args:
        path: a trainer checkpoint (periodic, final or best), a bare state dict, or the name of a
            model zoo entry (e.g. ``"nuclei"``; its fp16 weights load as float32).
        device: where to put the model.
        config: a YAML config (or a ``Config``) that replaces the checkpoint's own (needed for a bare
            state dict).
        overrides: ``key=value`` changes to that config (e.g. the input normalisation).
    Returns:
        ``(model, cfg)``: the model in eval mode on ``device`` and its ``Config``. Backbone weight
        files named in the config are never read (the checkpoint holds every weight; Kaggle
        kernels run offline).
    Raises:
        CheckpointError: not a checkpoint, weights holding NaN/inf, or weights of another
            architecture than the config's (each names the file, and the tensor where it applies).
    """
    return model_from_checkpoint(_read(path), path, device, config, overrides)


def model_from_checkpoint(ck: Any, path: str, device: Union[str, torch.device] = "cpu",
                          config: Union[str, Config, None] = None, overrides: Sequence[str] = ()) -> Tuple[nn.Module, Config]:
    """``load_model`` of a checkpoint already read (``read_checkpoint``); ``path`` names it in errors."""
    from maskrcnn.model import build_model

    if isinstance(ck, dict) and isinstance(ck.get("model"), dict):
        state, saved = ck["model"], ck.get("config")
    elif isinstance(ck, dict) and ck and all(isinstance(v, Tensor) for v in ck.values()):
        state, saved = ck, None
    else:
        raise CheckpointError(f"neither a checkpoint with a 'model' entry nor a state dict of tensors ({path})")
    check_finite(state, path)
    if isinstance(config, Config):
        cfg, source = (from_dict(to_dict(config), overrides) if overrides else config), "the given config"
    elif config:
        cfg, source = load_config(config, overrides), config
    elif saved is not None:
        try:
            cfg, source = from_dict(saved, overrides, source=path), "its saved config"
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    else:
        raise CheckpointError(f"a bare state dict without a config: pass --config CONFIG.yaml ({path})")
    model = build_model(cfg.model, load_weights=False, verbose=False)
    _check_fits(model, state, path, source)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg
