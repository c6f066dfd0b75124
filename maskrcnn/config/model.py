"""The ``model`` sections: each key's type, default and checks; ``--resume`` may change only the
initial-weights keys and ``channels_last`` (the checkpoint holds the model)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from maskrcnn.config.keys import ConfigError, Section, key, one_of, positive_list, rule, section

MAX_CLASSES = 1000  # model.roi_heads.num_classes: beyond this the heads' weights alone are a mistake's size
NORMS = ("frozen_bn", "gn", "bn")  # backbone normalisation
COMPILE_MODES = ("none", "regional")  # model.compile

_GN_OR_NONE = one_of(("", "gn"), "{key}: must be '' or 'gn', got {v!r}")
# 0 would take every background anchor near an ignore region out
_IOF = rule(lambda v: 0.0 < v <= 1.0, "{key}: must be in (0, 1] (intersection over the box's own area), got {v}")


@dataclass(frozen=True)
class BackboneConfig(Section):
    PREFIX = "model.backbone"

    name: str = key("resnet50")  # resnet50 | resnet101 | resnext101_32x8d | resnet18 | resnet34 (build_backbone)
    norm: str = key("frozen_bn", one_of(NORMS, "{key}: unknown norm {v!r}; valid: {choices}"))  # frozen_bn | gn | bn
    freeze_at: int = key(2)  # 0: train all; 1: freeze stem; k: freeze stem and res2..res{k}
    # local file: torchvision .pth or detectron2 .pkl; empty = random init. A resume may change it
    # (and the two keys below): the checkpoint holds every weight, this file is not read.
    weights: str = key("", resume=True)
    width_per_group: int = key(64)
    groups: int = key(1)
    stem_out_channels: int = key(64)
    res2_out_channels: int = key(0)  # 0: standard (256 for ResNet-50+, 64 for ResNet-18/34); halve for slim nets
    stride_in_1x1: bool = key(False)  # true for MSRA/Caffe2 weights (R-50.pkl, detectron2 COCO R-50/101)
    # auto | rgb | bgr: channel order the weights' first conv expects
    weights_channel_order: str = key("auto", one_of(("auto", "rgb", "bgr"), "{key}: auto | rgb | bgr, got {v!r}"),
                                     resume=True)
    weights_pixel_std: Tuple[float, ...] = key((), resume=True)  # std (0-255 units) the weights expect; empty: auto


@dataclass(frozen=True)
class FPNConfig(Section):
    PREFIX = "model.fpn"

    out_channels: int = key(256)
    norm: str = key("", _GN_OR_NONE)  # "" | gn
    # P6 from P5 by max-pooling (as in Mask R-CNN's FPN)
    top_block: str = key("maxpool", one_of(("maxpool",), "{key}: only 'maxpool' is implemented, got {v!r}"))


@dataclass(frozen=True)
class AnchorConfig(Section):
    PREFIX = "model.anchors"

    # One size per FPN level P2..P6 (cells are small: 8 px at P2).
    sizes: Tuple[float, ...] = key(
        (8.0, 16.0, 32.0, 64.0, 128.0), positive_list,
        rule(lambda v: len(v) == 5, "{key}: need one size per level P2..P6 (5 values), got {vl}"))
    aspect_ratios: Tuple[float, ...] = key((0.5, 1.0, 2.0), positive_list)
    scales_per_octave: int = key(1, rule(lambda v: v >= 1, "{key} must be >= 1, got {v}"))
    offset: float = key(0.0)  # anchor centres at (cell + offset) * stride; 0 as detectron2/torchvision


@dataclass(frozen=True)
class RPNConfig(Section):
    PREFIX = "model.rpn"

    pre_nms_topk_train: int = key(2000)  # per level
    post_nms_topk_train: int = key(2000)  # per image
    pre_nms_topk_test: int = key(2000)
    post_nms_topk_test: int = key(2000)  # must exceed the detection cap (up to ~800 cells per image)
    nms_thresh: float = key(0.7)
    fg_iou_thresh: float = key(0.7)
    bg_iou_thresh: float = key(0.3)
    batch_size_per_image: int = key(256)
    positive_fraction: float = key(0.5)
    min_size: float = key(0.0)
    smooth_l1_beta: float = key(1.0 / 9.0)
    # Training: an anchor that is not positive and lies inside an ignore region of the ground truth
    # (label -1, e.g. an uncertain pseudo-label) by intersection over its own area >= this is not sampled.
    ignore_iof_thresh: float = key(0.5, _IOF)


@dataclass(frozen=True)
class RoIHeadsConfig(Section):
    PREFIX = "model.roi_heads"

    num_classes: int = key(1, rule(lambda v: 1 <= v <= MAX_CLASSES, f"{{key}} must be in [1, {MAX_CLASSES}], got {{v}}"))
    batch_size_per_image: int = key(512)
    positive_fraction: float = key(0.25)
    fg_iou_thresh: float = key(0.5)
    bg_iou_thresh: float = key(0.5)
    box_pooler_resolution: int = key(7)
    pooler_sampling_ratio: int = key(0)
    box_fc_dim: int = key(1024)
    bbox_reg_weights: Tuple[float, ...] = key((10.0, 10.0, 5.0, 5.0),
                                              rule(lambda v: len(v) == 4, "{key}: need 4 values, got {vl}"))
    score_thresh: float = key(0.05)
    nms_thresh: float = key(0.5)
    detections_per_image: int = key(1000)
    smooth_l1_beta: float = key(0.0)
    proposal_append_gt: bool = key(True)  # add GT boxes to the proposals in training
    ignore_iof_thresh: float = key(0.5, _IOF)  # as rpn.ignore_iof_thresh, for the sampled proposals


@dataclass(frozen=True)
class MaskHeadConfig(Section):
    PREFIX = "model.mask_head"

    pooler_resolution: int = key(14)
    resolution: int = key(28)  # 28 (default) or 56: 2x or 4x pooler_resolution
    num_convs: int = key(4)
    conv_dim: int = key(256)
    norm: str = key("", _GN_OR_NONE)  # "" | gn
    # Initial bias of the mask logits. The predictor reads ReLU features, so where they are zero
    # (most background) its probability is sigmoid(bias); from 0 (p = 0.5) AdamW moves the bias
    # by at most ~lr per step, and a short run ends with background near 0.45 (boxy masks).
    predictor_bias_init: float = key(0.0)
    # Extra weight of the mask loss on the target's boundary pixels (those with both foreground and
    # background among their 3x3 neighbours): each counts 1 + boundary_weight, the loss stays a
    # weighted mean. 0: plain mean BCE. For masks that follow the outline (issue 26).
    boundary_weight: float = key(0.0, rule(lambda v: v >= 0.0, "{key}: a weight >= 0 (0: off), got {v}"))

    def check(self) -> None:
        if self.resolution % self.pooler_resolution or self.resolution // self.pooler_resolution not in (2, 4):
            raise ConfigError(f"model.mask_head.resolution ({self.resolution}) must be 2x or 4x "
                              f"pooler_resolution ({self.pooler_resolution})")


@dataclass(frozen=True)
class InputConfig(Section):
    PREFIX = "model.input"

    # grayscale images are repeated to 3 channels when this is 3
    in_channels: int = key(3, one_of((1, 3), "{key}: must be 1 or 3, got {v}"))
    # Training resize: shortest side drawn from min_size_train, capped by max_size; or a fixed scale.
    min_size_train: Tuple[int, ...] = key((0,))  # 0: no resize (keep the image's own size)
    max_size_train: int = key(0)
    min_size_test: int = key(0)
    max_size_test: int = key(0)
    # multiply image size by this factor (upscaling helps small cells)
    scale: float = key(1.0, rule(lambda v: v > 0, "{key}: must be positive, got {v}"))
    pixel_mean: Tuple[float, ...] = key((0.485, 0.456, 0.406))  # images are in [0, 1]
    pixel_std: Tuple[float, ...] = key((0.229, 0.224, 0.225),
                                       rule(lambda v: all(s > 0 for s in v), "{key}: must be positive, got {vl}"))
    size_divisibility: int = key(32)
    # Intensity normalisation before pixel_mean/std, per image and channel (docs/data.md):
    # none = as read ([0, 1]; 16-bit data / 65535) | percentile = percentile_low -> 0 and
    # percentile_high -> 1, not clipped (StarDist/Cellpose style, for 12/16-bit microscopy images).
    normalize: str = key("none", one_of(("none", "percentile"), "{key}: none or percentile, got {v!r}"))
    percentile_low: float = key(1.0)
    percentile_high: float = key(99.8)
    # Typical object diameter in the training images' pixels (before ``scale``): the median
    # equivalent diameter 2 * sqrt(area / pi) of the training objects; 0: not recorded. predict.py
    # --diameter D maps to scale * object_diameter / D (objects of D px reach the size the model learnt).
    object_diameter: float = key(0.0, rule(lambda v: v >= 0.0, "{key}: pixels >= 0 (0: not recorded), got {v}"))
    # Invert images whose background is bright (mean > 0.5 after normalize): brightfield and stained
    # images then look like fluorescence. With in_channels 1: the DSB2018 winners' gray + invert input.
    invert_bright: bool = key(False)

    def check(self) -> None:
        for name in ("pixel_mean", "pixel_std"):
            v = getattr(self, name)
            if len(v) not in (1, self.in_channels):
                raise ConfigError(f"model.input.{name}: need 1 or {self.in_channels} values, got {list(v)}")
        if self.scale != 1.0 and (any(s > 0 for s in self.min_size_train) or self.min_size_test > 0):
            raise ConfigError("model.input: set either scale or min_size_train/min_size_test, not both")
        if not 0.0 <= self.percentile_low < self.percentile_high <= 100.0:
            raise ConfigError(
                "model.input.percentile_low/percentile_high: need 0 <= low < high <= 100, "
                f"got {self.percentile_low} and {self.percentile_high}"
            )


@dataclass(frozen=True)
class ModelConfig(Section):
    PREFIX = "model"

    backbone: BackboneConfig = section(BackboneConfig)
    fpn: FPNConfig = section(FPNConfig)
    anchors: AnchorConfig = section(AnchorConfig)
    rpn: RPNConfig = section(RPNConfig)
    roi_heads: RoIHeadsConfig = section(RoIHeadsConfig)
    mask_head: MaskHeadConfig = section(MaskHeadConfig)
    input: InputConfig = section(InputConfig)
    channels_last: bool = key(False, resume=True)
    # none | regional: torch.compile the static parts (backbone, FPN, heads); maskrcnn/model/compile.py
    compile: str = key("none", one_of(COMPILE_MODES, "{key}: none | regional, got {v!r}"))
