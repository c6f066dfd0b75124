"""Kaggle run-length encoding: the one codec of the package (docs/conventions.md).

An RLE string is space-separated ``start length`` pairs, starts 1-indexed. Pixels are numbered
row-major (``order="row"``: Sartorius; decode with ``reshape(height, width)``) or column-major
(``order="col"``: the 2018 Data Science Bowl's own files).
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from maskrcnn.errors import UserError

ORDERS = ("row", "col")


class RLEError(UserError, ValueError):
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
    except OverflowError:
        raise RLEError(f"{where}RLE holds a number too large for a pixel index") from None
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
    ends = starts - 1 + np.minimum(lengths, n_pixels + 1)  # exclusive, 0-indexed (no int64 overflow)
    past = (starts > n_pixels) | (ends > n_pixels)
    if past.any():
        k = int(np.argmax(past))
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
    lengths = runs[:, 1]
    # One index per foreground pixel (cost ~ object size, not image size).
    idx = np.arange(int(lengths.sum())) + np.repeat(runs[:, 0] - (np.cumsum(lengths) - lengths), lengths)
    mask = np.zeros(int(height) * int(width), dtype=bool)
    mask[idx] = True
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


def _text(rle) -> str:
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return ""
    return str(rle).strip()


def parse_rle_batch(rles: Sequence[str], height: int, width: int, strict: bool = True
                    ) -> Tuple[np.ndarray, np.ndarray, List[int]]:
    """Parse and check many RLE strings of one image at once.

    Returns:
        ``(runs int64[K, 2], owner int64[K], bad)``: 0-indexed ``(start, length)`` runs, the index
        (into ``rles``) of the string each run comes from (a string's runs stay in order), and the
        indices of the strings that fail ``parse_rle``'s checks, whose runs are left out. Callers
        that need the reason run ``parse_rle`` on one of those (``decode_crops`` raises with it;
        submission validation lists every one).
    """
    n = len(rles)
    texts = [_text(r) for r in rles]
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64), []
    # One C-level parse of all strings joined by a -1 sentinel (a valid RLE holds no negative
    # number); any other outcome is sorted out string by string.
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            nums = np.fromstring(" -1 ".join(texts), dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            nums = None
    if nums is None or int((nums == -1).sum()) != n - 1:
        return _parse_one_by_one(texts, height, width, strict)
    sentinel = nums == -1
    owner = np.cumsum(sentinel)[~sentinel]
    nums = nums[~sentinel]
    bad_str = np.bincount(owner, minlength=n) % 2 == 1
    keep = ~bad_str[owner]  # the numbers of strings with an even count
    runs = nums[keep].reshape(-1, 2)
    owner = owner[keep][0::2]
    starts, lengths = runs[:, 0], runs[:, 1]
    n_pixels = int(height) * int(width)
    ends = starts - 1 + np.minimum(lengths, n_pixels + 1)  # no int64 overflow
    bad_run = (starts < 1) | (lengths < 1) | (starts > n_pixels) | (ends > n_pixels)
    if strict and runs.shape[0] > 1:
        same = owner[1:] == owner[:-1]
        bad_run[1:] |= same & (starts[1:] - 1 < ends[:-1])
    bad_str[owner[bad_run]] = True
    ok = ~bad_str[owner]
    return np.stack([starts[ok] - 1, lengths[ok]], axis=1), owner[ok], np.flatnonzero(bad_str).tolist()


def _parse_one_by_one(texts: Sequence[str], height: int, width: int, strict: bool):
    runs, owner, bad = [np.zeros((0, 2), dtype=np.int64)], [np.zeros(0, dtype=np.int64)], []
    for k, t in enumerate(texts):  # the error path only
        try:
            r = parse_rle(t, height, width, strict=strict)
        except RLEError:
            bad.append(k)
            continue
        runs.append(r)
        owner.append(np.full(len(r), k, dtype=np.int64))
    return np.concatenate(runs), np.concatenate(owner), bad


def decode_crops(rles: Sequence[str], height: int, width: int, order: str = "row", pad: int = 1, *,
                 source: Optional[str] = None, rows: Optional[Sequence[int]] = None, strict: bool = True):
    """Decode many RLE strings of one image straight into a bool ``MaskList`` (crops, no full-image masks).

    ``strict=False`` accepts unsorted or overlapping runs (label files). Raises RLEError for the first
    malformed string, naming ``source`` and its row (``rows[k]`` if given, else ``k``).
    Returns ``runs_to_crops`` of the parsed runs.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    runs, owner = parse_rles(rles, height, width, source=source, rows=rows, strict=strict)
    return runs_to_crops(runs, owner, len(rles), height, width, order, pad)


def parse_rles(rles: Sequence[str], height: int, width: int, *, source: Optional[str] = None,
               rows: Optional[Sequence[int]] = None, strict: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """``(runs, owner)`` of ``parse_rle_batch``, or RLEError for the first malformed string, naming
    ``source`` and its row (``rows[k]`` if given, else ``k``) with ``parse_rle``'s precise message."""
    runs, owner, bad = parse_rle_batch(rles, height, width, strict)
    if bad:
        k = bad[0]
        parse_rle(_text(rles[k]), height, width, source=source, row=k if rows is None else rows[k], strict=strict)
        raise AssertionError("unreachable: parse_rle_batch rejected a string that parse_rle accepts")
    return runs, owner


def runs_to_crops(runs: np.ndarray, owner: np.ndarray, n: int, height: int, width: int, order: str = "row",
                  pad: int = 1):
    """Bool ``MaskList`` of ``n`` objects from their parsed runs (``parse_rle_batch``).

    Runs are split where they wrap from one image line to the next, each object's extent is found
    from its runs, and all crops are filled at once (one index per foreground pixel, no loop).
    Crops are the tight box plus ``pad`` pixels; an object without runs gets an all-zero crop near
    (0, 0) (readers decide whether that is an error).

    Args:
        runs (int64[K, 2]): 0-indexed ``(start, length)``; owner (int64[K]): the object of each run.
    Returns:
        MaskList: ``crops (Tensor[n, h, w] bool)``, ``origins (Tensor[n, 2])``, ``image_size (height, width)``.
    """
    from maskrcnn.structures import MaskList

    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    H, W = int(height), int(width)
    if n == 0:
        return MaskList.empty((H, W))
    L = W if order == "row" else H  # pixels per line (a line is a row, or a column for "col")
    seg_line, seg_a, seg_b, seg_owner = _line_segments(runs, owner, L)
    # Per-object extent in (line, position); objects without runs get an empty crop at 0.
    big = np.iinfo(np.int64).max
    lmin = np.full(n, big)
    lmax = np.full(n, -1)
    pmin = np.full(n, big)
    pmax = np.full(n, -1)
    np.minimum.at(lmin, seg_owner, seg_line)
    np.maximum.at(lmax, seg_owner, seg_line)
    np.minimum.at(pmin, seg_owner, seg_a)
    np.maximum.at(pmax, seg_owner, seg_b - 1)
    empty = lmax < 0
    lmin[empty], lmax[empty], pmin[empty], pmax[empty] = 0, 0, 0, 0
    ol = lmin - pad
    op = pmin - pad
    hl = int((lmax - lmin).max()) + 1 + 2 * pad
    wp = int((pmax - pmin).max()) + 1 + 2 * pad
    # Set every foreground pixel directly: segment k covers flat crop indices
    # [start_k, start_k + len_k); one repeat + arange enumerates them all (cost ~ object pixels).
    lengths = seg_b - seg_a
    start = (seg_owner * hl + (seg_line - ol[seg_owner])) * wp + (seg_a - op[seg_owner])
    total = int(lengths.sum())
    idx = np.arange(total) + np.repeat(start - (np.cumsum(lengths) - lengths), lengths)
    flat = np.zeros(n * hl * wp, dtype=bool)
    flat[idx] = True
    crops = flat.reshape(n, hl, wp)
    if order == "row":
        origins = np.stack([op, ol], 1)  # (x0, y0)
    else:
        crops = crops.transpose(0, 2, 1)
        origins = np.stack([ol, op], 1)
    return MaskList(torch.from_numpy(np.ascontiguousarray(crops)), torch.from_numpy(origins.astype(np.int64)), (H, W))


def _line_segments(runs: np.ndarray, owner: np.ndarray, L: int):
    """Runs split where they wrap from one line of ``L`` pixels to the next: per segment its line,
    its first and one-past-last position in the line, and its object."""
    runs = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    owner = np.asarray(owner, dtype=np.int64)
    s = runs[:, 0]
    e = s + runs[:, 1]  # exclusive
    line0 = s // L
    nseg = (e - 1) // L - line0 + 1
    seg_run = np.repeat(np.arange(s.size), nseg)
    first = np.cumsum(nseg) - nseg
    seg_line = line0[seg_run] + (np.arange(seg_run.size) - first[seg_run])
    base = seg_line * L
    seg_a = np.maximum(s[seg_run], base) - base  # position in the line, inclusive
    seg_b = np.minimum(e[seg_run], base + L) - base  # exclusive
    return seg_line, seg_a, seg_b, owner[seg_run]
