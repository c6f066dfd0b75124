"""The one rule that turns a ``device`` setting (``train.device``, ``predict.py --device``, an
ablation's ``device``) into a ``torch.device``."""
from __future__ import annotations

from typing import Union

import torch


def resolve_device(device: Union[str, torch.device, None] = "auto", local_rank: int = 0,
                   key: str = "device") -> torch.device:
    """``auto`` (or None) -> CUDA when available, else CPU; ``cuda`` -> ``cuda:local_rank`` (one GPU
    per process under torchrun); ``cpu`` and ``cuda:N`` as given.

    Raises ValueError for any other value and RuntimeError for CUDA on a machine without it; both
    messages name ``key`` and the value.
    """
    device = "auto" if device is None else str(device)
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"{key}: unknown device {device!r}; choose auto, cpu, cuda or cuda:N")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"{key} is {device!r} but CUDA is not available on this machine")
        if device == "cuda":
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device(device)
