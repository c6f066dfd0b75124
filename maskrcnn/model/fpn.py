"""Feature Pyramid Network (Lin et al. 2017): a backbone's C2..C5 -> P2..P6, all with the same width.

``P_k = output_k(lateral_k(C_k) + upsample(P_{k+1} path))`` for k = 5..2 (nearest-neighbour
2x upsampling in the top-down path), and ``P6 = max_pool(P5, kernel 1, stride 2)`` as in Mask R-CNN's
FPN (P6 serves the RPN only).
"""
from __future__ import annotations

from typing import List, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.config import FPNConfig
from maskrcnn.model.backbone import ConvNorm

FPN_STRIDES = (4, 8, 16, 32, 64)  # P2..P6


class FPN(nn.Module):
    """Args:
        in_channels: channels of the backbone's four maps C2..C5 (``Backbone.out_channels``).
        out_channels: channels of every P level.
        norm: "" or "gn" (GroupNorm after each lateral and output conv).

    ``lateral[i]`` and ``output[i]`` serve level ``P{i+2}``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, norm: str = ""):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"FPN expects 4 inputs (C2..C5), got {len(in_channels)}")
        self.out_channels = out_channels
        self.strides = FPN_STRIDES
        self.lateral = nn.ModuleList(ConvNorm(c, out_channels, 1, norm=norm) for c in in_channels)
        self.output = nn.ModuleList(ConvNorm(out_channels, out_channels, 3, padding=1, norm=norm)
                                    for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # "c2_xavier_fill": kaiming uniform with a=1, as in Detectron.
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg: FPNConfig, in_channels: Sequence[int]) -> "FPN":
        """The FPN of ``model.fpn`` over a backbone with ``in_channels`` (``Backbone.out_channels``)."""
        return cls(in_channels, cfg.out_channels, cfg.norm)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        """``[C2, C3, C4, C5]`` -> ``[P2, P3, P4, P5, P6]`` (Tensor[B, out_channels, H/s, W/s])."""
        top = self.lateral[3](features[3])
        outs = [self.output[3](top)]
        for i in (2, 1, 0):
            lat = self.lateral[i](features[i])
            # Upsample to the lateral's exact size: odd sizes (unpadded inputs) stay aligned.
            top = lat + F.interpolate(top, size=lat.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](top))
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
