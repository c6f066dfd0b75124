"""The backbone contract, and ResNet / ResNeXt bottom-up backbones (He et al. 2016; Xie et al.
2017) with a choice of norm.

Every backbone is a ``Backbone``: four feature maps C2..C5 at strides 4, 8, 16, 32 with
``out_channels`` channels, which the FPN turns into P2..P6. ResNet returns the outputs of its
four residual stages ``res2..res5``.

Parameter names follow detectron2's layout (``stem.conv1.weight``, ``res2.0.conv1.norm.weight``,
``res2.0.shortcut.weight``) so that ``maskrcnn.model.weights`` maps torchvision, detectron2 and
Caffe2 files with simple renaming rules.

Norms:
- ``frozen_bn``: BatchNorm with frozen statistics and affine parameters (the default with imported
  ImageNet/COCO weights: detection batches are too small to estimate BN statistics).
- ``gn``: GroupNorm with 32 groups, for training from scratch (He et al. 2019, "Rethinking
  ImageNet Pre-training").
- ``bn``: plain BatchNorm (needs large per-GPU batches).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.config import NORMS, BackboneConfig, ConfigError

# Blocks per stage res2..res5.
RESNET_DEPTHS = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnext101_32x8d": (3, 4, 23, 3),
}
BASIC_BLOCK_NAMES = ("resnet18", "resnet34")
GN_GROUPS = 32


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are buffers (never trained).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, folded into one
    multiply-add. Files without statistics (Caffe2's affine-only BN) load with mean 0, var 1.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        # Keep autocast's dtype: multiply-add in the activation dtype.
        return x * scale.to(x.dtype)[None, :, None, None] + shift.to(x.dtype)[None, :, None, None]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # torchvision BN files carry it
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def make_norm(norm: str, channels: int) -> nn.Module:
    """A norm layer for ``channels`` features: ``frozen_bn`` | ``gn`` | ``bn`` | ``""`` (none)."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "gn":
        if channels % GN_GROUPS:
            raise ValueError(f"GroupNorm needs channels divisible by {GN_GROUPS}, got {channels}")
        return nn.GroupNorm(GN_GROUPS, channels)
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


class ConvNorm(nn.Conv2d):
    """Conv2d followed by an optional norm stored as the child ``norm`` (detectron2's naming).

    A conv followed by a norm has no bias (the norm's shift replaces it).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, groups: int = 1, norm: str = "", bias: bool = None):
        if bias is None:
            bias = not norm
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         groups=groups, bias=bias)
        self.norm = make_norm(norm, out_channels) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        return self.norm(x) if self.norm is not None else x


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = ConvNorm(in_channels, out_channels, 3, stride=stride, padding=1, norm=norm)
        self.conv2 = ConvNorm(out_channels, out_channels, 3, padding=1, norm=norm)
        self.shortcut = (
            ConvNorm(in_channels, out_channels, 1, stride=stride, norm=norm)
            if stride != 1 or in_channels != out_channels else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        identity = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped for ResNeXt) -> 1x1 with a residual connection (ResNet-50+).

    ``stride_in_1x1=True`` puts the stride in the first 1x1 conv (MSRA/Caffe2 weights);
    ``False`` puts it in the 3x3 conv (torchvision and FAIR weights).
    """

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, stride: int,
                 groups: int, norm: str, stride_in_1x1: bool):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, stride=s1, norm=norm)
        self.conv2 = ConvNorm(bottleneck_channels, bottleneck_channels, 3, stride=s3, padding=1,
                              groups=groups, norm=norm)
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1, norm=norm)
        self.shortcut = (
            ConvNorm(in_channels, out_channels, 1, stride=stride, norm=norm)
            if stride != 1 or in_channels != out_channels else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        identity = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + identity)


class Stem(nn.Module):
    """7x7 stride-2 conv, norm, ReLU, 3x3 stride-2 max-pool: stride 4 in total."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.conv1 = ConvNorm(in_channels, out_channels, 7, stride=2, padding=3, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class Backbone(nn.Module):
    """The contract of a backbone; the FPN and the rest of the model rely on nothing else.

    - ``forward(x: Tensor[B, C, H, W]) -> [C2, C3, C4, C5]``: four maps, ``C_k`` of shape
      ``[B, out_channels[k - 2], ~H / 2^k, ~W / 2^k]`` (strides 4, 8, 16, 32);
    - ``out_channels``: the four maps' channel counts; ``strides``: ``(4, 8, 16, 32)``.

    ``check_backbone`` verifies what a backbone declares. A new backbone is a subclass and one
    ``if`` in ``maskrcnn.model.build_backbone``.
    """

    strides: Tuple[int, ...] = (4, 8, 16, 32)
    out_channels: List[int]


def check_backbone(backbone: nn.Module) -> None:
    """ValueError naming what is wrong when ``backbone`` does not declare the ``Backbone`` contract."""
    channels = list(getattr(backbone, "out_channels", None) or [])
    strides = tuple(getattr(backbone, "strides", ()))
    if len(channels) != 4 or strides != Backbone.strides:
        raise ValueError(f"{type(backbone).__name__} must give 4 maps at strides {Backbone.strides} "
                         f"(out_channels {channels}, strides {strides})")


class ResNet(Backbone):
    """ResNet / ResNeXt returning the outputs of ``res2..res5``.

    Args:
        depth: blocks per stage ``(n2, n3, n4, n5)``.
        basic: BasicBlocks (ResNet-18/34) instead of Bottlenecks.
        in_channels: image channels (3, or 1 for a grayscale-only model).
        stem_out_channels: channels after the stem (64 in the standard networks).
        res2_out_channels: output channels of res2 (256 for bottlenecks, 64 for basic blocks);
            doubled at each following stage.
        groups, width_per_group: ResNeXt cardinality and width (bottleneck width of res2 is
            ``groups * width_per_group``, doubled per stage). ResNet: 1 and 64.
        norm: ``frozen_bn`` | ``gn`` | ``bn``.
        freeze_at: 0 trains everything; 1 freezes the stem; ``k >= 2`` also freezes res2..res{k}.
        stride_in_1x1: see :class:`Bottleneck`.
    """

    stage_names = ("res2", "res3", "res4", "res5")

    def __init__(self, depth: Sequence[int], basic: bool = False, in_channels: int = 3,
                 stem_out_channels: int = 64, res2_out_channels: int = 256, groups: int = 1,
                 width_per_group: int = 64, norm: str = "frozen_bn", freeze_at: int = 0,
                 stride_in_1x1: bool = False):
        super().__init__()
        if len(depth) != 4:
            raise ValueError(f"ResNet depth must list 4 stages, got {depth}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        self.norm = norm
        self.freeze_at = freeze_at
        self.stem = Stem(in_channels, stem_out_channels, norm)
        channels = stem_out_channels
        self.out_channels: List[int] = []
        for i, (name, n) in enumerate(zip(self.stage_names, depth)):
            out = res2_out_channels * 2 ** i
            stride = 1 if i == 0 else 2
            blocks = []
            for b in range(n):
                s = stride if b == 0 else 1
                if basic:
                    blocks.append(BasicBlock(channels, out, s, norm))
                else:
                    width = groups * width_per_group * 2 ** i
                    blocks.append(Bottleneck(channels, width, out, s, groups, norm, stride_in_1x1))
                channels = out
            self.add_module(name, nn.Sequential(*blocks))
            self.out_channels.append(out)
        self._init_weights()
        self._freeze()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # From scratch with GN/BN, start each residual branch at zero so the network begins as
        # (nearly) the identity: deep stacks then train stably (Goyal et al. 2017).
        if self.norm in ("gn", "bn"):
            for m in self.modules():
                last = getattr(m, "conv3", None) if isinstance(m, Bottleneck) else (
                    getattr(m, "conv2", None) if isinstance(m, BasicBlock) else None)
                if last is not None:
                    nn.init.zeros_(last.norm.weight)

    def _frozen_modules(self) -> List[nn.Module]:
        mods: List[nn.Module] = []
        if self.freeze_at >= 1:
            mods.append(self.stem)
        for i, name in enumerate(self.stage_names):
            if self.freeze_at >= i + 2:
                mods.append(getattr(self, name))
        return mods

    def _freeze(self) -> None:
        for m in self._frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        # Frozen stages keep their BN statistics fixed too.
        for m in self._frozen_modules():
            m.eval()
        return self

    def forward(self, x: Tensor) -> List[Tensor]:
        """``x (Tensor[B, C, H, W])`` -> ``[res2, res3, res4, res5]`` at strides 4, 8, 16, 32."""
        x = self.stem(x)
        outs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outs.append(x)
        return outs


def build_resnet(name: str, in_channels: int = 3, norm: str = "frozen_bn", freeze_at: int = 2,
                 groups: int = 1, width_per_group: int = 64, stem_out_channels: int = 64,
                 res2_out_channels: int = 0, stride_in_1x1: bool = False) -> ResNet:
    """A ResNet by name: resnet18 | resnet34 | resnet50 | resnet101 | resnext101_32x8d.

    ``resnext101_32x8d`` forces ``groups=32, width_per_group=8``. ``res2_out_channels=0`` picks the
    standard width (64 for basic blocks, 256 for bottlenecks).
    """
    if name not in RESNET_DEPTHS:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(RESNET_DEPTHS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown backbone norm {norm!r}; valid: {', '.join(NORMS)}")
    basic = name in BASIC_BLOCK_NAMES
    if name == "resnext101_32x8d":
        groups, width_per_group = 32, 8
    if basic and groups != 1:
        raise ValueError(f"{name} has basic blocks and cannot be grouped (groups={groups})")
    if res2_out_channels <= 0:
        res2_out_channels = 64 if basic else 256
    return ResNet(
        RESNET_DEPTHS[name], basic=basic, in_channels=in_channels, stem_out_channels=stem_out_channels,
        res2_out_channels=res2_out_channels, groups=groups, width_per_group=width_per_group, norm=norm,
        freeze_at=freeze_at, stride_in_1x1=stride_in_1x1,
    )


def build_backbone(cfg: BackboneConfig, in_channels: int) -> Backbone:
    """The backbone ``cfg.name`` names (a plain ``if`` per family), checked against the contract."""
    if cfg.name in RESNET_DEPTHS:
        backbone = build_resnet(
            cfg.name, in_channels=in_channels, norm=cfg.norm, freeze_at=cfg.freeze_at, groups=cfg.groups,
            width_per_group=cfg.width_per_group, stem_out_channels=cfg.stem_out_channels,
            res2_out_channels=cfg.res2_out_channels, stride_in_1x1=cfg.stride_in_1x1,
        )
    else:
        raise ConfigError(f"model.backbone.name: unknown backbone {cfg.name!r}; valid: {', '.join(RESNET_DEPTHS)}")
    check_backbone(backbone)
    return backbone
