"""The per-class values of ``TestConfig``'s thresholds (``score_thresh``, ``mask_thresh``, ``min_area``),
read the same way by merging, filtering and validation: one value per class, or one for all."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def per_class(values: Sequence[float], labels: Tensor, name: str, dtype=torch.float32) -> Tensor:
    """``Tensor[N]`` of ``values[labels]``, or ``values[0]`` for all when one value is given.

    Raises ValueError naming the field when a label has no value.
    """
    vals = torch.as_tensor(list(values), dtype=dtype, device=labels.device)
    if vals.numel() == 0:
        raise ValueError(f"test.{name} is empty; give one value per class or one for all")
    if vals.numel() == 1:
        return vals.expand(labels.shape[0]).clone()
    if labels.numel() and (int(labels.max()) >= vals.numel() or int(labels.min()) < 0):
        bad = int(labels.max()) if int(labels.max()) >= vals.numel() else int(labels.min())
        raise ValueError(f"test.{name} has {vals.numel()} values (one per class), but class {bad} was predicted")
    return vals[labels]
