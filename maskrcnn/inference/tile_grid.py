"""Tile planning: where the tiles of a large image lie, which part of the image each tile owns,
and how large automatic tiles are.

Tiles (``TileGrid``): along each axis, ``k = ceil((n - overlap) / (tile_size - overlap))`` tiles of
``tile_size`` pixels, spread evenly from 0 to ``n`` (the first starts at 0, the last ends at ``n``),
so neighbours overlap by at least ``overlap`` pixels and all tiles have one size. An axis shorter
than ``tile_size`` is one tile. Each tile's **core** is the tile minus half of the actual overlap
on each interior side; the cores partition the image (``maskrcnn.inference.stitching`` keeps an
object from the tile whose core holds its box centre).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor

MIN_TILE_SIZE = 64
AUTO_TILE_INPUT = 1024  # pixels at the model's input (after model.input.scale) of an automatic tile
AUTO_TILE_WHOLE = 3  # images up to this many automatic tiles on a side are first predicted whole


def tile_starts(length: int, tile_size: int, overlap: int) -> List[int]:
    """Start positions of the tiles along an axis of ``length`` pixels (see the module docstring).

    Consecutive starts differ by at most ``tile_size - overlap``; the last tile ends at ``length``.
    """
    if length <= tile_size:
        return [0]
    stride = tile_size - overlap
    k = math.ceil((length - overlap) / stride)
    k = max(k, 2)
    span = length - tile_size
    # Integer spacing: floor(i * span / (k - 1)) steps by at most ceil(span / (k - 1)) <= stride.
    return [(i * span) // (k - 1) for i in range(k)]


@dataclass(frozen=True)
class TileGrid:
    """Tiles of an image of ``image_size`` (H, W): their windows and cores.

    Attributes:
        image_size (tuple[int, int]): ``(H, W)``.
        xs, ys (tuple[int, ...]): tile starts along x and y.
        tile_w, tile_h (int): tile size (``min(tile_size, W)``, ``min(tile_size, H)``).
        core_x, core_y (tuple[int, ...]): core boundaries, ``len(xs) + 1`` values from 0 to W
            (resp. H): tile column ``i`` owns ``[core_x[i], core_x[i + 1])``.
    Tile ``t = row * len(xs) + col`` covers ``[xs[col], xs[col] + tile_w) x [ys[row], ys[row] + tile_h)``.
    """

    image_size: Tuple[int, int]
    xs: Tuple[int, ...]
    ys: Tuple[int, ...]
    tile_w: int
    tile_h: int
    core_x: Tuple[int, ...]
    core_y: Tuple[int, ...]

    def __len__(self) -> int:
        return len(self.xs) * len(self.ys)

    def window(self, t: int) -> Tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of tile ``t``."""
        row, col = divmod(t, len(self.xs))
        return self.xs[col], self.ys[row], self.xs[col] + self.tile_w, self.ys[row] + self.tile_h

    def core(self, t: int) -> Tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of tile ``t``'s core."""
        row, col = divmod(t, len(self.xs))
        return self.core_x[col], self.core_y[row], self.core_x[col + 1], self.core_y[row + 1]

    def overlapping_pairs(self) -> List[Tuple[int, int]]:
        """Pairs ``(t, u)``, ``t < u``, of tiles whose windows overlap (neighbours, and more when the
        overlap exceeds half a tile)."""

        def axis(starts, size):
            return [(i, j) for i in range(len(starts)) for j in range(len(starts)) if abs(starts[j] - starts[i]) < size]

        nx = len(self.xs)
        pairs = []
        for r1, r2 in axis(self.ys, self.tile_h):
            for c1, c2 in axis(self.xs, self.tile_w):
                t, u = r1 * nx + c1, r2 * nx + c2
                if t < u:
                    pairs.append((t, u))
        return pairs

    def owner(self, points: Tensor) -> Tensor:
        """Tile ``Tensor[N]`` (int64) whose core holds each point of ``points (Tensor[N, 2])`` ``(x, y)``."""
        bx = torch.tensor(self.core_x[1:-1], dtype=points.dtype, device=points.device)
        by = torch.tensor(self.core_y[1:-1], dtype=points.dtype, device=points.device)
        col = torch.searchsorted(bx, points[:, 0].contiguous(), right=True)
        row = torch.searchsorted(by, points[:, 1].contiguous(), right=True)
        return row * len(self.xs) + col


def auto_tile_size(cfg) -> Tuple[int, int]:
    """``(tile, limit)`` in image pixels for automatic tiling with the model of ``cfg`` (a ``Config``).

    The model learnt from crops of ``data.augment.crop_size`` (or whole images) resized by
    ``model.input.scale``, and its caps (RPN top-k, detections per image) were sized for such
    inputs. A tile is ``AUTO_TILE_INPUT`` (1024) pixels at the model's input, at least twice the
    training crop: ``max(2 * crop, 1024 / scale)``, rounded up to a multiple of 32 (the nuclei model:
    256-px crops at scale 2 -> 512-px tiles). An image longer than ``limit = 3 * tile`` on a side
    (1536 px) is tiled at once, which bounds memory by the tile; a smaller one is predicted whole,
    and tiled only when the whole image reached a detection cap (``maskrcnn.inference.caps``).
    """
    crop = max(int(v) for v in cfg.data.augment.crop_size)
    scale = float(cfg.model.input.scale) if cfg.model.input.min_size_test <= 0 else 1.0
    tile = max(2 * crop, int(math.ceil(AUTO_TILE_INPUT / scale)), MIN_TILE_SIZE * 4)
    tile = int(math.ceil(tile / 32.0) * 32)
    return tile, AUTO_TILE_WHOLE * tile


def check_tiling(tile_size: int, overlap: int) -> None:
    """Raise ValueError unless ``tile_size >= MIN_TILE_SIZE`` and ``0 <= overlap < tile_size``."""
    if int(tile_size) < MIN_TILE_SIZE:
        raise ValueError(f"tile size must be at least {MIN_TILE_SIZE} pixels, got {tile_size}")
    if not 0 <= int(overlap) < int(tile_size):
        raise ValueError(f"tile overlap must be >= 0 and below the tile size ({tile_size}), got {overlap}")


def plan_tiles(image_size: Tuple[int, int], tile_size: int, overlap: int) -> TileGrid:
    """The ``TileGrid`` of an image of ``image_size = (H, W)``."""
    check_tiling(tile_size, overlap)
    H, W = int(image_size[0]), int(image_size[1])
    if H <= 0 or W <= 0:
        raise ValueError(f"cannot tile an empty image of size {H}x{W}")

    def axis(n: int):
        starts = tile_starts(n, tile_size, overlap)
        size = min(tile_size, n)
        # Core boundary between neighbours: the middle of their actual overlap (rounded down).
        bounds = [0] + [(starts[i + 1] + starts[i] + size) // 2 for i in range(len(starts) - 1)] + [n]
        return tuple(starts), size, tuple(bounds)

    xs, tw, cx = axis(W)
    ys, th, cy = axis(H)
    return TileGrid((H, W), xs, ys, tw, th, cx, cy)
