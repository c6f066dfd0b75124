"""Masks held as run lists (``RunMasks``): areas, tight boxes and pair intersections straight from
the runs of RLE strings, without drawing a pixel; the Kaggle metric scores CSV files this way.

The strings are parsed by ``maskrcnn.formats.rle`` (the one codec).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from maskrcnn.formats.rle import ORDERS, parse_rles, runs_to_crops


class RunMasks:
    """N binary masks of one image held as their runs: what an RLE file holds, at its cost.

    A ``MaskList`` pads every crop to the largest one, so one frame-shaped object among 999 tiny
    cells costs 1,000 full images; runs cost what the objects have (about one run per object row).
    Scoring CSV files (``maskrcnn.evaluation.kaggle``) works on runs: areas, tight boxes and the
    intersections of listed pairs come straight from them, bounded by the objects.

    Runs are kept row-major (pixel ``y * W + x``), sorted per object and merged (no two runs of one
    object overlap or touch); column-major input is converted once, at a cost ~ its pixels.

    Attributes:
        starts (int64[K]), lengths (int64[K]): 0-indexed runs, sorted by (object, start).
        owner (int64[K]): the object of each run, ascending.
        first (int64[N + 1]): runs of object ``i`` are ``first[i]:first[i + 1]``.
        image_size (tuple[int, int]): ``(H, W)``.
    """

    def __init__(self, runs: np.ndarray, owner: np.ndarray, n: int, height: int, width: int, order: str = "row"):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        H, W = int(height), int(width)
        runs = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
        owner = np.asarray(owner, dtype=np.int64).reshape(-1)
        if order == "col" and runs.shape[0]:
            runs, owner = _col_runs_to_row_runs(runs, owner, H, W)
        self.image_size = (H, W)
        self.n = int(n)
        self.starts, self.lengths, self.owner = _merge_runs(runs, owner, H * W)
        self.first = np.searchsorted(self.owner, np.arange(self.n + 1))

    @staticmethod
    def from_rles(rles: Sequence[str], height: int, width: int, order: str = "row", *, source: Optional[str] = None,
                  rows: Optional[Sequence[int]] = None, strict: bool = True) -> "RunMasks":
        """Parse RLE strings of one image (``decode_crops``'s checks and errors) into run lists."""
        runs, owner = parse_rles(rles, height, width, source=source, rows=rows, strict=strict)
        return RunMasks(runs, owner, len(rles), height, width, order)

    @staticmethod
    def empty(image_size) -> "RunMasks":
        return RunMasks(np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64), 0, *image_size)

    @staticmethod
    def from_masklist(masks) -> "RunMasks":
        """The runs of a ``MaskList`` (soft crops count where > 0); cost ~ its crops, once."""
        H, W = masks.image_size
        crops = masks.crops if masks.crops.dtype == torch.bool else masks.crops > 0
        n_idx, cy, cx = (t.cpu().numpy() for t in torch.nonzero(crops, as_tuple=True))
        org = masks.origins.cpu().numpy().astype(np.int64)
        y, x = org[n_idx, 1] + cy, org[n_idx, 0] + cx
        inside = (y >= 0) & (y < H) & (x >= 0) & (x < W)
        runs, owner = _pixels_to_runs(y[inside] * W + x[inside], n_idx[inside].astype(np.int64))
        return RunMasks(runs, owner, len(masks), H, W)

    def __len__(self) -> int:
        return self.n

    def areas(self) -> np.ndarray:
        """int64[N]: pixels of each mask."""
        return np.bincount(self.owner, weights=self.lengths, minlength=self.n).astype(np.int64)

    def tight_boxes(self) -> np.ndarray:
        """int64[N, 4] xyxy tight box of each mask (zeros for an empty one). A run that spans two or
        more rows covers the image's whole width between its two ends' x, so its box is x in [0, W)."""
        H, W = self.image_size
        boxes = np.zeros((self.n, 4), dtype=np.int64)
        if self.starts.size == 0:
            return boxes
        s, e = self.starts, self.starts + self.lengths - 1  # first and last pixel
        one_row = s // W == e // W
        x0 = np.where(one_row, s % W, 0)
        x1 = np.where(one_row, e % W + 1, W)
        has = self.first[1:] > self.first[:-1]
        first, last = self.first[:-1][has], self.first[1:][has] - 1
        # Each object's runs are contiguous and sorted: rows come from its first and last run,
        # columns from a min / max over its runs (reduceat over the contiguous blocks).
        boxes[has] = np.stack([np.minimum.reduceat(x0, first), s[first] // W,
                               np.maximum.reduceat(x1, first), e[last] // W + 1], 1)
        return boxes

    def to_masklist(self, pad: int = 0):
        """The same masks as a bool ``MaskList`` (crops padded to the largest: small N or tests)."""
        return runs_to_crops(np.stack([self.starts, self.lengths], 1), self.owner, self.n, *self.image_size, "row", pad)

    def __getitem__(self, idx) -> "RunMasks":
        idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        counts = self.first[idx + 1] - self.first[idx]
        pick = np.repeat(self.first[idx] - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        runs = np.stack([self.starts[pick], self.lengths[pick]], 1)
        return RunMasks(runs, np.repeat(np.arange(idx.size), counts), idx.size, *self.image_size)


def _merge_runs(runs: np.ndarray, owner: np.ndarray, n_pixels: int):
    """(starts, lengths, owner) sorted by (owner, start), with the overlapping or touching runs of
    each owner merged (label files may hold unsorted, overlapping runs)."""
    if runs.shape[0] == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z.copy(), z.copy()
    span = n_pixels + 1
    key = owner * span + runs[:, 0]
    if key.size > 1 and not (key[1:] > key[:-1]).all():  # submissions come sorted; labels may not
        order = np.argsort(key, kind="stable")
        runs, owner, key = runs[order], owner[order], key[order]
    s, e, o = runs[:, 0], runs[:, 0] + runs[:, 1], owner
    # Running max end per owner: shifting each owner's ends by owner * (n_pixels + 1) makes one
    # global cummax a per-owner cummax (owners ascend, ends are <= n_pixels).
    run_max = np.maximum.accumulate(o * span + e) - o * span
    new = np.ones(s.size, dtype=bool)
    new[1:] = (o[1:] != o[:-1]) | (s[1:] > run_max[:-1])
    if new.all():
        return s, e - s, o
    idx = np.flatnonzero(new)
    starts = s[idx]
    return starts, np.maximum.reduceat(e, idx) - starts, o[idx]


def _col_runs_to_row_runs(runs: np.ndarray, owner: np.ndarray, H: int, W: int):
    """Column-major runs -> row-major runs of the same pixels (one index per pixel)."""
    lengths = runs[:, 1]
    p = np.arange(int(lengths.sum())) + np.repeat(runs[:, 0] - (np.cumsum(lengths) - lengths), lengths)
    o = np.repeat(owner, lengths)
    return _pixels_to_runs((p % H) * W + p // H, o)  # column-major (x * H + y) -> row-major (y * W + x)


def _pixels_to_runs(q: np.ndarray, o: np.ndarray):
    """Runs ``int64[K, 2]`` and their owners from flat pixel indices ``q`` of owners ``o`` (any order)."""
    order = np.lexsort((q, o))
    q, o = q[order], o[order]
    new = np.ones(q.size, dtype=bool)
    new[1:] = (o[1:] != o[:-1]) | (q[1:] != q[:-1] + 1)
    starts = q[new]
    idx = np.flatnonzero(new)
    lens = np.diff(np.append(idx, q.size))
    return np.stack([starts, lens], 1), o[new]


def run_pair_intersections(a: RunMasks, b: RunMasks, ii: np.ndarray, jj: np.ndarray) -> np.ndarray:
    """int64[P]: pixels shared by ``a[ii[k]]`` and ``b[jj[k]]`` for each listed pair.

    Each pair walks the runs of its mask with fewer runs and reads, for each run ``[s, e)``, how
    many pixels of the other mask lie in it from that mask's running pixel count (``C(e) - C(s)``,
    one binary search per end). Cost ~ sum over pairs of the smaller run count: bounded by the
    objects, never by a padded crop.
    """
    if a.image_size != b.image_size:
        raise ValueError(f"run masks of images of sizes {a.image_size} and {b.image_size}")
    ii = np.asarray(ii, dtype=np.int64)
    jj = np.asarray(jj, dtype=np.int64)
    out = np.zeros(ii.size, dtype=np.int64)
    if ii.size == 0:
        return out
    a_fewer = (a.first[ii + 1] - a.first[ii]) <= (b.first[jj + 1] - b.first[jj])
    for walk, other, wi, oi, sel in ((a, b, ii, jj, a_fewer), (b, a, jj, ii, ~a_fewer)):
        k = np.flatnonzero(sel)
        if k.size:
            out[k] = _walk_runs(walk, other, wi[k], oi[k])
    return out


def _walk_runs(walk: RunMasks, other: RunMasks, wi: np.ndarray, oi: np.ndarray) -> np.ndarray:
    span = walk.image_size[0] * walk.image_size[1] + 1
    counts = walk.first[wi + 1] - walk.first[wi]
    pair = np.repeat(np.arange(wi.size), counts)
    run = np.repeat(walk.first[wi] - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
    s = walk.starts[run]
    e = s + walk.lengths[run]
    o = oi[pair]
    inside = _covered_before(other, o, e, span) - _covered_before(other, o, s, span)
    return np.bincount(pair, weights=inside, minlength=wi.size).astype(np.int64)


def _covered_before(m: RunMasks, obj: np.ndarray, x: np.ndarray, span: int) -> np.ndarray:
    """Pixels of mask ``obj[k]`` of ``m`` before pixel ``x[k]`` (its runs are sorted and disjoint)."""
    K = m.starts.size
    if K == 0:
        return np.zeros(x.shape, dtype=np.int64)
    keys = m.owner * span + m.starts  # ascending: runs sorted by (owner, start)
    before_run = np.append(np.cumsum(m.lengths) - m.lengths, m.lengths.sum())  # pixels of all earlier runs
    r = np.searchsorted(keys, obj * span + x, side="left") - 1  # the last run of obj starting before x
    ok = r >= m.first[obj]
    r = r.clip(0, K - 1)
    within = np.clip(x - m.starts[r], 0, m.lengths[r])
    return np.where(ok, before_run[r] - before_run[m.first[obj]] + within, 0)
