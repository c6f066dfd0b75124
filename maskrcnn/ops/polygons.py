"""Outlines of binary masks as polygons along pixel edges, and polygons rasterised back.

Coordinates are pixel corners: pixel ``(x, y)`` covers ``[x, x + 1] x [y, y + 1]``, so a traced
outline follows the pixels' outer edges (as ImageJ's wand and QuPath's pixel-exact shapes do) and
filling it at the pixel centres gives the mask back exactly.

Tracing (``trace_outlines``) works on all crops at once: every edge between a foreground pixel and
a pixel of another piece or the background is one directed edge, oriented with the piece on its
right when drawn with y pointing down (outer rings run clockwise on the screen, holes
counter-clockwise; the shoelace area is positive for outer rings, negative for holes). Each edge
is followed by the edge that starts at its end point in the same piece; where two do (two pixels
of the piece touching at a corner only) it turns towards the piece, so pieces are 4-connected as
in ``maskrcnn.ops.pieces``. The rings are the cycles of this successor map, found by pointer
jumping (``O(E log E)`` array operations for ``E`` edges, no loop over edges), and vertices in
the middle of a straight run are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch

from maskrcnn.ops.pieces import label_pieces

_STEP = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.int64)  # right, down, left, up (y down)


@dataclass
class Outlines:
    """Rings of N masks. Ring ``r`` has vertices ``xy[offsets[r]:offsets[r + 1]]`` (not repeated at
    the end), belongs to mask ``mask[r]`` and piece ``piece[r]`` (a label of ``label_pieces``), and
    has shoelace area ``area[r]`` (> 0: outer ring, < 0: hole). Rings are sorted by mask, piece, and
    outer ring before holes.

    Attributes:
        xy (ndarray[V, 2]): int64 ``(x, y)`` corner coordinates in the image.
        offsets (ndarray[R + 1]): int64.
        mask, piece (ndarray[R]): int64.
        area (ndarray[R]): float64.
    """

    xy: np.ndarray
    offsets: np.ndarray
    mask: np.ndarray
    piece: np.ndarray
    area: np.ndarray

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    def ring(self, r: int) -> np.ndarray:
        return self.xy[self.offsets[r]:self.offsets[r + 1]]

    def rings_of(self, k: int) -> List[int]:
        """The ring indices of mask ``k``."""
        lo, hi = np.searchsorted(self.mask, [k, k + 1])
        return list(range(int(lo), int(hi)))


def _edges(lab: np.ndarray):
    """Directed boundary edges of labelled crops ``lab[N, h, w]`` (0 background): start corners in
    crop coordinates, directions (indices into ``_STEP``) and the piece label of each edge."""
    n, h, w = lab.shape
    p = np.zeros((n, h + 2, w + 2), dtype=lab.dtype)
    p[:, 1:-1, 1:-1] = lab
    c = p[:, 1:-1, 1:-1]
    parts = []
    # (neighbour, start corner offset (dx, dy), direction): the piece lies right of the edge
    for nb, (dx, dy), d in ((p[:, :-2, 1:-1], (0, 0), 0), (p[:, 1:-1, 2:], (1, 0), 1),
                            (p[:, 2:, 1:-1], (1, 1), 2), (p[:, 1:-1, :-2], (0, 1), 3)):
        k, y, x = np.nonzero((c > 0) & (c != nb))
        parts.append((x + dx, y + dy, np.full(x.shape, d, np.int64), c[k, y, x]))
    x, y, d, piece = (np.concatenate(v) for v in zip(*parts))
    return x.astype(np.int64), y.astype(np.int64), d, piece.astype(np.int64)


def _cycles(nxt: np.ndarray):
    """Cycle id (its smallest member) and position along the cycle from there, for a permutation."""
    e = nxt.shape[0]
    cid = np.arange(e)
    jump = nxt.copy()
    span = 1
    while span < e:  # after k rounds each element has seen its next 2**k successors
        cid = np.minimum(cid, cid[jump])
        jump = jump[jump]
        span *= 2
    # List ranking: steps from each element to its cycle's last element (the one before the head).
    succ = np.where(nxt == cid, np.arange(e), nxt)
    dist = (succ != np.arange(e)).astype(np.int64)
    span = 1
    while span < e:
        dist = dist + dist[succ]
        succ = succ[succ]
        span *= 2
    return cid, dist


def trace_outlines(crops: torch.Tensor, origins: torch.Tensor) -> Outlines:
    """The outer rings and holes of each 4-connected piece of each mask.

    Args:
        crops (Tensor[N, h, w]): bool masks (a ``MaskList``'s crops).
        origins (Tensor[N, 2]): ``(x0, y0)`` of each crop in the image.
    Returns:
        ``Outlines`` in image coordinates (see the module doc for orientation).
    """
    n, h, w = crops.shape
    lab = label_pieces(crops.bool().cpu()).numpy()
    empty = Outlines(np.zeros((0, 2), np.int64), np.zeros(1, np.int64), *(np.zeros(0, np.int64),) * 2,
                     np.zeros(0, np.float64))
    if n == 0 or not lab.any():
        return empty
    x, y, d, piece = _edges(lab)
    ex, ey = x + _STEP[d, 0], y + _STEP[d, 1]
    key = (piece * (h + 1) + y) * (w + 1) + x
    order = np.argsort(key, kind="stable")
    skey = key[order]
    end = (piece * (h + 1) + ey) * (w + 1) + ex
    lo = np.searchsorted(skey, end, "left")
    two = np.searchsorted(skey, end, "right") - lo == 2
    # At a corner where the piece touches itself diagonally, turn right (towards the piece).
    alt = np.minimum(lo + 1, skey.shape[0] - 1)
    take_alt = two & (d[order[alt]] == (d + 1) % 4)
    nxt = order[np.where(take_alt, alt, lo)]
    cid, dist = _cycles(nxt)
    seq = np.lexsort((-dist, cid))
    ring_start = np.r_[True, cid[seq][1:] != cid[seq][:-1]]
    ring_id = np.cumsum(ring_start) - 1
    starts = np.flatnonzero(ring_start)
    ends = np.r_[starts[1:], seq.shape[0]]
    prev = np.arange(seq.shape[0]) - 1
    prev[starts] = ends - 1
    ds = d[seq]
    corner = ds != ds[prev]  # a vertex only where the direction changes
    vx, vy, vring = x[seq][corner], y[seq][corner], ring_id[corner]
    offsets = np.r_[0, np.cumsum(np.bincount(vring, minlength=starts.shape[0]))]
    nx_ = np.r_[vx[1:], 0]
    ny_ = np.r_[vy[1:], 0]
    last = offsets[1:] - 1
    nx_[last], ny_[last] = vx[offsets[:-1]], vy[offsets[:-1]]
    area = np.bincount(vring, weights=(vx * ny_ - nx_ * vy).astype(np.float64), minlength=starts.shape[0]) / 2
    rpiece = piece[seq][starts]
    rmask = (rpiece - 1) // (h * w)
    org = origins.cpu().numpy().astype(np.int64)
    vx = vx + org[rmask[vring], 0]
    vy = vy + org[rmask[vring], 1]
    rorder = np.lexsort((area < 0, rpiece, rmask))  # by mask, piece, outer ring first
    counts = np.diff(offsets)[rorder]
    rank = np.empty_like(rorder)
    rank[rorder] = np.arange(rorder.shape[0])
    gather = np.argsort(rank[vring], kind="stable")  # vertices stay in ring order within a ring
    return Outlines(np.stack([vx, vy], 1)[gather], np.r_[0, np.cumsum(counts)], rmask[rorder], rpiece[rorder],
                    area[rorder])


def rasterize_rings(rings: Sequence[np.ndarray], size) -> np.ndarray:
    """Fill polygons by the even-odd rule at pixel centres: ``bool[H, W]``.

    Args:
        rings: ``(n, 2)`` arrays of ``(x, y)`` vertices (any real coordinates; closed implicitly).
        size: ``(H, W)``.
    Returns:
        True at pixel ``(y, x)`` when the centre ``(x + 0.5, y + 0.5)`` is inside an odd number of rings.
    """
    H, W = int(size[0]), int(size[1])
    rings = [np.asarray(r, dtype=np.float64).reshape(-1, 2) for r in rings]
    rings = [r for r in rings if r.shape[0] >= 3]
    toggles = np.zeros((H, W + 1), np.int64)
    if not rings:
        return np.zeros((H, W), bool)
    p = np.concatenate(rings)
    counts = np.array([r.shape[0] for r in rings])
    first = np.cumsum(counts) - counts
    nxt = np.arange(p.shape[0]) + 1
    nxt[first + counts - 1] = first  # each ring closes on its first vertex
    q = p[nxt]
    y_lo, y_hi = np.minimum(p[:, 1], q[:, 1]), np.maximum(p[:, 1], q[:, 1])
    r0 = np.clip(np.ceil(y_lo - 0.5), 0, H).astype(np.int64)  # rows whose centre is in [y_lo, y_hi)
    r1 = np.clip(np.ceil(y_hi - 0.5), 0, H).astype(np.int64)
    nrows = np.maximum(r1 - r0, 0)
    e = np.repeat(np.arange(p.shape[0]), nrows)
    rows = np.arange(e.shape[0]) - np.repeat(np.cumsum(nrows) - nrows, nrows) + r0[e]
    yc = rows + 0.5
    xc = p[e, 0] + (yc - p[e, 1]) * (q[e, 0] - p[e, 0]) / (q[e, 1] - p[e, 1])
    col = np.clip(np.ceil(xc - 0.5), 0, W).astype(np.int64)  # first pixel whose centre is right of it
    np.add.at(toggles, (rows, col), 1)
    return (np.cumsum(toggles, axis=1)[:, :W] % 2).astype(bool)
