"""Box regression targets: (dx, dy, dw, dh) of a box relative to a reference box.

For a reference box of width ``w``, height ``h`` and centre ``(x, y)`` (xyxy, no ``+1``) and a
target box ``(w', h', x', y')``: ``dx = wx (x' - x) / w``, ``dy = wy (y' - y) / h``,
``dw = ww log(w' / w)``, ``dh = wh log(h' / h)`` (Girshick et al. 2014), with weights
``(wx, wy, ww, wh)``: ``(1, 1, 1, 1)`` in the RPN and ``(10, 10, 5, 5)`` in the box head.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

# Largest dw/dh applied when decoding: a box can grow at most 1000/16 times its reference.
SCALE_CLAMP = math.log(1000.0 / 16)


def encode_boxes(reference: Tensor, target: Tensor, weights: Sequence[float]) -> Tensor:
    """Deltas ``Tensor[N, 4]`` that turn ``reference (Tensor[N, 4])`` into ``target (Tensor[N, 4])``."""
    wx, wy, ww, wh = weights
    reference = reference.float()
    target = target.float()
    rw = reference[:, 2] - reference[:, 0]
    rh = reference[:, 3] - reference[:, 1]
    rx = reference[:, 0] + 0.5 * rw
    ry = reference[:, 1] + 0.5 * rh
    tw = target[:, 2] - target[:, 0]
    th = target[:, 3] - target[:, 1]
    tx = target[:, 0] + 0.5 * tw
    ty = target[:, 1] + 0.5 * th
    return torch.stack(
        [wx * (tx - rx) / rw, wy * (ty - ry) / rh, ww * torch.log(tw / rw), wh * torch.log(th / rh)], dim=1
    )


def decode_boxes(deltas: Tensor, reference: Tensor, weights: Sequence[float]) -> Tensor:
    """Apply ``deltas (Tensor[N, 4k])`` to ``reference (Tensor[N, 4])`` -> boxes ``Tensor[N, 4k]``.

    ``k > 1`` holds class-specific deltas (one set of 4 per class). Computed in float32.
    """
    wx, wy, ww, wh = weights
    deltas = deltas.float()
    reference = reference.float()
    n = deltas.shape[0]
    d = deltas.reshape(n, deltas.shape[-1] // 4, 4)
    rw = (reference[:, 2] - reference[:, 0])[:, None]
    rh = (reference[:, 3] - reference[:, 1])[:, None]
    rx = reference[:, 0, None] + 0.5 * rw
    ry = reference[:, 1, None] + 0.5 * rh
    cx = d[..., 0] / wx * rw + rx
    cy = d[..., 1] / wy * rh + ry
    w = torch.exp((d[..., 2] / ww).clamp(max=SCALE_CLAMP)) * rw
    h = torch.exp((d[..., 3] / wh).clamp(max=SCALE_CLAMP)) * rh
    boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    return boxes.reshape(n, deltas.shape[-1])
