"""Anchor boxes on each FPN level.

Level ``l`` (stride ``s_l``) has ``A`` cell anchors (sizes x aspect ratios), centred at
``((x + offset) s_l, (y + offset) s_l)`` for every feature-map cell ``(x, y)``. An anchor of size
``S`` and aspect ratio ``r = h / w`` has area ``S^2``: ``w = S / sqrt(r)``, ``h = S sqrt(r)``.
Anchors of one level are ordered ``(y, x, a)``, matching the RPN head's output layout.
Defaults for cells: sizes 8, 16, 32, 64, 128 at P2..P6 (many cells are under 20 px across).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from maskrcnn.config import AnchorConfig


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """``Tensor[len(sizes) * len(aspect_ratios), 4]`` xyxy anchors centred at 0 (sizes outer)."""
    out = []
    for size in sizes:
        for r in aspect_ratios:
            w = size / math.sqrt(r)
            h = size * math.sqrt(r)
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(out, dtype=torch.float32)


class AnchorGenerator(nn.Module):
    """Anchors for a list of feature maps.

    Args:
        sizes: one base size per level (P2..P6).
        aspect_ratios: ``h / w`` ratios, shared by the levels.
        strides: the levels' strides in input pixels.
        scales_per_octave: sizes per level ``size * 2 ** (i / scales_per_octave)``, i < that number.
        offset: anchor centres at ``(cell + offset) * stride``; 0 (as detectron2 and torchvision,
            so imported RPN weights keep their meaning) or 0.5 (cell centres).
    """

    def __init__(self, sizes: Sequence[float], aspect_ratios: Sequence[float], strides: Sequence[int],
                 scales_per_octave: int = 1, offset: float = 0.0):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"anchors: {len(sizes)} sizes for {len(strides)} feature levels; give one size per level")
        if scales_per_octave < 1:
            raise ValueError(f"anchors: scales_per_octave must be >= 1, got {scales_per_octave}")
        if not aspect_ratios or any(r <= 0 for r in aspect_ratios):
            raise ValueError(f"anchors: aspect ratios must be positive, got {aspect_ratios}")
        self.strides = tuple(int(s) for s in strides)
        self.offset = float(offset)
        self.level_sizes = [
            tuple(s * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)) for s in sizes
        ]
        for i, sz in enumerate(self.level_sizes):
            self.register_buffer(f"cell_anchors_{i}", cell_anchors(sz, aspect_ratios), persistent=False)
        self.num_anchors = len(aspect_ratios) * scales_per_octave
        self._cache: Dict[Tuple, Tensor] = {}

    @classmethod
    def from_config(cls, cfg: AnchorConfig, strides: Sequence[int]) -> "AnchorGenerator":
        """The anchors of ``model.anchors`` for feature levels of ``strides``."""
        return cls(cfg.sizes, cfg.aspect_ratios, strides, cfg.scales_per_octave, cfg.offset)

    def grid_anchors(self, level: int, height: int, width: int) -> Tensor:
        """``Tensor[height * width * A, 4]`` anchors of one level (cached per shape and device)."""
        base = getattr(self, f"cell_anchors_{level}")
        key = (level, height, width, base.device)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        stride = self.strides[level]
        ys = (torch.arange(height, device=base.device, dtype=torch.float32) + self.offset) * stride
        xs = (torch.arange(width, device=base.device, dtype=torch.float32) + self.offset) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        anchors = (shifts + base[None]).reshape(-1, 4)
        if len(self._cache) > 64:  # many input sizes (multi-scale training): keep it bounded
            self._cache.clear()
        self._cache[key] = anchors
        return anchors

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        """Anchors per level ``[Tensor[H_l * W_l * A, 4]]`` for ``features`` (Tensor[B, C, H_l, W_l])."""
        if len(features) != len(self.strides):
            raise ValueError(f"anchors: {len(features)} feature maps but {len(self.strides)} levels configured")
        return [self.grid_anchors(i, int(f.shape[-2]), int(f.shape[-1])) for i, f in enumerate(features)]
