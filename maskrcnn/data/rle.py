"""Kaggle run-length encoding (../shared/CONVENTIONS.md).

An RLE string is space-separated ``start length`` pairs, starts 1-indexed. Pixels are numbered
row-major (``order="row"``: Sartorius; decode with ``reshape(height, width)``) or column-major
(``order="col"``: the 2018 Data Science Bowl's own files).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

ORDERS = ("row", "col")


class RLEError(ValueError):
    """A malformed run-length encoding; the message names the source, row and value."""


def _where(source: Optional[str], row: Optional[int]) -> str:
    parts = []
    if source:
        parts.append(str(source))
    if row is not None:
        parts.append(f"row {row}")
    return (": ".join(parts) + ": ") if parts else ""


def parse_rle(rle: str, height: int, width: int, *, source: Optional[str] = None, row: Optional[int] = None,
              strict: bool = True) -> np.ndarray:
    """Parse and validate ``rle`` into ``int64[K, 2]`` of 0-indexed ``(start, length)`` runs.

    Raises RLEError for: non-integers, an odd count of numbers, a start < 1, a length < 1, runs past
    the image (``height * width`` pixels), and (``strict``) runs not sorted or overlapping.
    """
    where = _where(source, row)
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        rle = ""
    text = str(rle).strip()
    if not text:
        return np.zeros((0, 2), dtype=np.int64)
    tokens = text.split()
    try:
        nums = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise RLEError(f"{where}RLE holds a non-integer value {bad!r}") from None
    if nums.size % 2:
        raise RLEError(f"{where}RLE has an odd number of values ({nums.size}); it must be start/length pairs")
    runs = nums.reshape(-1, 2)
    starts, lengths = runs[:, 0], runs[:, 1]
    n_pixels = int(height) * int(width)
    if (starts < 1).any():
        k = int(np.argmax(starts < 1))
        raise RLEError(f"{where}RLE pair {k} has start {starts[k]}; starts are 1-indexed and must be >= 1")
    if (lengths < 1).any():
        k = int(np.argmax(lengths < 1))
        raise RLEError(f"{where}RLE pair {k} has length {lengths[k]}; lengths must be >= 1")
    ends = starts - 1 + lengths  # exclusive, 0-indexed
    if (ends > n_pixels).any():
        k = int(np.argmax(ends > n_pixels))
        raise RLEError(
            f"{where}RLE pair {k} (start {starts[k]}, length {lengths[k]}) runs past the image's "
            f"{n_pixels} pixels ({height}x{width})"
        )
    if strict and runs.shape[0] > 1:
        bad = starts[1:] - 1 < ends[:-1]
        if bad.any():
            k = int(np.argmax(bad)) + 1
            raise RLEError(f"{where}RLE pair {k} (start {starts[k]}) is not sorted or overlaps the run before it")
    return np.stack([starts - 1, lengths], axis=1)


def decode(rle: str, height: int, width: int, order: str = "row", **kw) -> np.ndarray:
    """Decode one RLE string into a ``bool[height, width]`` mask."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    runs = parse_rle(rle, height, width, **kw)
    flat = np.zeros(int(height) * int(width) + 1, dtype=np.int32)
    np.add.at(flat, runs[:, 0], 1)
    np.add.at(flat, runs[:, 0] + runs[:, 1], -1)
    mask = np.cumsum(flat[:-1]) > 0
    if order == "row":
        return mask.reshape(height, width)
    return mask.reshape(width, height).T


def encode(mask: np.ndarray, order: str = "row") -> str:
    """Encode a binary ``mask[H, W]`` as an RLE string (empty string for an empty mask)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    m = np.asarray(mask).astype(bool)
    flat = m.reshape(-1) if order == "row" else m.T.reshape(-1)
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, stops = edges[0::2], edges[1::2]
    runs = np.stack([starts + 1, stops - starts], axis=1).reshape(-1)
    return " ".join(map(str, runs.tolist()))


def encode_crops(crops: torch.Tensor, origins: torch.Tensor, image_size, order: str = "row") -> list:
    """RLE strings of binary crop masks (``MaskList`` layout) without building full-image masks.

    Runs are found inside each crop, moved to image pixel numbers, and runs that touch across a
    row (column) boundary are joined, so the result equals ``encode`` of the dense mask.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    H, W = int(image_size[0]), int(image_size[1])
    c = (crops != 0).cpu().numpy()
    o = origins.cpu().numpy().astype(np.int64)
    n, h, w = c.shape
    if n == 0:
        return []
    ys = o[:, 1, None] + np.arange(h)  # [n, h]
    xs = o[:, 0, None] + np.arange(w)  # [n, w]
    inside = ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]
    c = c & inside
    if order == "col":  # column-major: transpose crops and swap roles of x and y
        c = c.transpose(0, 2, 1)
        ys, xs = xs, ys
        line_len = H
    else:
        line_len = W
    n, L, P = c.shape  # L lines (rows for row order), P pixels per line
    padded = np.zeros((n, L, P + 2), dtype=bool)
    padded[:, :, 1:-1] = c
    d = padded[:, :, 1:] != padded[:, :, :-1]
    inst, line, pos = np.nonzero(d)  # sorted by instance, line, position
    starts_local = pos[0::2]
    stops_local = pos[1::2]
    inst_r = inst[0::2]
    line_r = line[0::2]
    global_start = ys[inst_r, line_r] * line_len + xs[inst_r, starts_local]
    length = stops_local - starts_local
    # Join a run with the previous one when it begins exactly where that ended (same instance).
    out = []
    bounds = np.searchsorted(inst_r, np.arange(n + 1))
    for i in range(n):  # per-instance string building; the run maths above is vectorised
        s = global_start[bounds[i]:bounds[i + 1]]
        ln = length[bounds[i]:bounds[i + 1]]
        if s.size == 0:
            out.append("")
            continue
        e = s + ln
        new = np.ones(s.size, dtype=bool)
        new[1:] = s[1:] != e[:-1]
        grp = np.cumsum(new) - 1
        gs = s[new]
        ge = np.zeros(gs.size, dtype=np.int64)
        np.maximum.at(ge, grp, e)
        runs = np.stack([gs + 1, ge - gs], axis=1).reshape(-1)
        out.append(" ".join(map(str, runs.tolist())))
    return out


def decode_many(rles, height: int, width: int, order: str = "row", *, source: Optional[str] = None,
                rows=None) -> np.ndarray:
    """Decode several RLE strings of one image into ``bool[N, height, width]``."""
    masks = np.zeros((len(rles), height, width), dtype=bool)
    for k, r in enumerate(rles):
        masks[k] = decode(r, height, width, order, source=source, row=None if rows is None else rows[k])
    return masks
