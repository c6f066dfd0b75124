"""Reading checkpoints: the one checkpoint -> model loader (predict, ablations, tools, notebooks)
and the one checkpoint reader (also the trainer's ``--resume``).

A checkpoint is the dict the trainer saves (``{"model": state_dict, "config": dict, "iteration":
int, ...}``; the full layout is in ``maskrcnn.engine.checkpoint``) or a bare ``state_dict``, whose
config comes from a YAML file. Files are read with ``torch.load(..., weights_only=True)``: tensors
and plain values only, never arbitrary pickled objects. Saved configs go through
``maskrcnn.config.from_dict``, so keys that older versions wrote still load (``RETIRED_KEYS``).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from maskrcnn.config import Config, ConfigError, from_dict, load_config


def _read(path: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, or a pickle of arbitrary objects
        raise RuntimeError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None


def load_checkpoint(path: str) -> Dict[str, Any]:
    """The checkpoint dict at ``path`` on the CPU; clear errors for a missing or unreadable file."""
    ck = _read(path)
    if not isinstance(ck, dict) or "model" not in ck:
        raise RuntimeError(f"{path}: not a maskrcnn checkpoint (expected a dict with a 'model' state_dict)")
    return ck


def load_model(path: str, device: Union[str, torch.device] = "cpu", config: Optional[str] = None,
               overrides: Sequence[str] = ()) -> Tuple[nn.Module, Config]:
    """Rebuild the model of a checkpoint and load its weights.

    Args:
        path: a trainer checkpoint (periodic, final or best) or a bare state dict.
        device: where to put the model.
        config: a YAML config that replaces the checkpoint's own (needed for a bare state dict).
        overrides: ``key=value`` changes to that config (e.g. the input normalisation).
    Returns:
        ``(model, cfg)``: the model in eval mode on ``device`` and its ``Config``. Backbone weight
        files named in the config are never read (the checkpoint holds every weight; Kaggle
        kernels run offline).
    """
    from maskrcnn.model import build_model

    ck = _read(path)
    if isinstance(ck, dict) and isinstance(ck.get("model"), dict):
        state, saved = ck["model"], ck.get("config")
    elif isinstance(ck, dict) and ck and all(isinstance(v, Tensor) for v in ck.values()):
        state, saved = ck, None
    else:
        raise ValueError(f"{path}: neither a checkpoint with a 'model' entry nor a state dict")
    if config:
        cfg, source = load_config(config, overrides), config
    elif saved is not None:
        try:
            cfg, source = from_dict(saved, overrides, source=path), "its saved config"
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    else:
        raise ValueError(f"{path} is a bare state dict without a config: pass --config CONFIG.yaml")
    model = build_model(cfg.model, load_weights=False, verbose=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: the weights do not fit the model built from {source}: missing {list(missing)[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {list(unexpected)[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    return model.to(device).eval(), cfg
