"""Random draws of the transforms, all from the ``torch.Generator`` passed to each call.

Every transform draws through these (or ``torch.rand``/``randn``/``randperm`` with the same
generator), so a pipeline's output depends only on its seed and the order of its draws.
"""
from __future__ import annotations

import torch


def uniform(g: torch.Generator, lo: float, hi: float) -> float:
    """Uniform float in ``[lo, hi)`` (one draw)."""
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (one draw)."""
    return int(torch.randint(lo, hi + 1, (), generator=g))
