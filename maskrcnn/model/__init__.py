"""Mask R-CNN with an FPN on a backbone (ResNet / ResNeXt): ``build_model(cfg.model)`` maps the config
section to explicit constructor arguments (modules never see the config); ``build_backbone``
picks the backbone by name and checks it against the contract (``maskrcnn.model.backbone.Backbone``)."""
from __future__ import annotations

import warnings

import torch

from maskrcnn.config import BackboneConfig, ConfigError, ModelConfig
from maskrcnn.model.anchors import AnchorGenerator
from maskrcnn.model.backbone import NORMS, RESNET_DEPTHS, Backbone, build_resnet, check_backbone
from maskrcnn.model.compile import COMPILE_MODES, compile_model
from maskrcnn.model.fpn import FPN
from maskrcnn.model.mask_rcnn import MaskRCNN
from maskrcnn.model.roi_heads import BoxHead, BoxPredictor, MaskHead, MultiLevelRoIPooler, RoIHeads
from maskrcnn.model.rpn import RPN, RPNHead

__all__ = ["Backbone", "MaskRCNN", "build_backbone", "build_model"]


def _check(cfg: ModelConfig) -> None:
    b, inp = cfg.backbone, cfg.input
    if b.norm not in NORMS:
        raise ConfigError(f"model.backbone.norm: unknown norm {b.norm!r}; valid: {', '.join(NORMS)}")
    for key, v in (("model.fpn.norm", cfg.fpn.norm), ("model.mask_head.norm", cfg.mask_head.norm)):
        if v not in ("", "gn"):
            raise ConfigError(f"{key}: must be '' or 'gn', got {v!r}")
    if cfg.fpn.top_block != "maxpool":
        raise ConfigError(f"model.fpn.top_block: only 'maxpool' is implemented, got {cfg.fpn.top_block!r}")
    if len(cfg.anchors.sizes) != 5:
        raise ConfigError(f"model.anchors.sizes: need one size per level P2..P6 (5 values), got {list(cfg.anchors.sizes)}")
    if inp.in_channels not in (1, 3):
        raise ConfigError(f"model.input.in_channels: must be 1 or 3, got {inp.in_channels}")
    for key in ("pixel_mean", "pixel_std"):
        v = getattr(inp, key)
        if len(v) not in (1, inp.in_channels):
            raise ConfigError(f"model.input.{key}: need 1 or {inp.in_channels} values, got {list(v)}")
    if any(s <= 0 for s in inp.pixel_std):
        raise ConfigError(f"model.input.pixel_std: must be positive, got {list(inp.pixel_std)}")
    if inp.scale != 1.0 and (any(s > 0 for s in inp.min_size_train) or inp.min_size_test > 0):
        raise ConfigError("model.input: set either scale or min_size_train/min_size_test, not both")
    if inp.scale <= 0:
        raise ConfigError(f"model.input.scale: must be positive, got {inp.scale}")
    if cfg.roi_heads.num_classes < 1:
        raise ConfigError(f"model.roi_heads.num_classes: must be >= 1, got {cfg.roi_heads.num_classes}")
    if len(cfg.roi_heads.bbox_reg_weights) != 4:
        raise ConfigError(f"model.roi_heads.bbox_reg_weights: need 4 values, got {list(cfg.roi_heads.bbox_reg_weights)}")
    m = cfg.mask_head
    if m.resolution % m.pooler_resolution or m.resolution // m.pooler_resolution not in (2, 4):
        raise ConfigError(
            f"model.mask_head.resolution ({m.resolution}) must be 2x or 4x pooler_resolution ({m.pooler_resolution})"
        )
    for key, v in (("model.rpn.ignore_iof_thresh", cfg.rpn.ignore_iof_thresh),
                   ("model.roi_heads.ignore_iof_thresh", cfg.roi_heads.ignore_iof_thresh)):
        if not 0.0 < v <= 1.0:  # 0 would take every background anchor near an ignore region out
            raise ConfigError(f"{key}: must be in (0, 1] (intersection over the box's own area), got {v}")
    if cfg.compile not in COMPILE_MODES:
        raise ConfigError(f"model.compile: {' | '.join(COMPILE_MODES)}, got {cfg.compile!r}")
    if b.weights_channel_order not in ("auto", "rgb", "bgr"):
        raise ConfigError(f"model.backbone.weights_channel_order: auto | rgb | bgr, got {b.weights_channel_order!r}")


def build_backbone(b: BackboneConfig, in_channels: int) -> Backbone:
    """The backbone ``b.name`` names (a plain ``if`` per family), checked against the contract."""
    if b.name in RESNET_DEPTHS:
        backbone = build_resnet(
            b.name, in_channels=in_channels, norm=b.norm, freeze_at=b.freeze_at, groups=b.groups,
            width_per_group=b.width_per_group, stem_out_channels=b.stem_out_channels,
            res2_out_channels=b.res2_out_channels, stride_in_1x1=b.stride_in_1x1,
        )
    else:
        raise ConfigError(f"model.backbone.name: unknown backbone {b.name!r}; valid: {', '.join(RESNET_DEPTHS)}")
    check_backbone(backbone)
    return backbone


def build_model(cfg: ModelConfig, load_weights: bool = True, verbose: bool = True) -> MaskRCNN:
    """Build Mask R-CNN from ``cfg`` (a ``ModelConfig``); imports ``cfg.backbone.weights`` if set
    and ``load_weights`` (a checkpoint restore passes ``load_weights=False``)."""
    _check(cfg)
    b, inp, r, h, m = cfg.backbone, cfg.input, cfg.rpn, cfg.roi_heads, cfg.mask_head
    try:
        backbone = build_backbone(b, inp.in_channels)
        fpn = FPN(backbone.out_channels, cfg.fpn.out_channels, cfg.fpn.norm)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"model.backbone/fpn: {e}") from None
    anchors = AnchorGenerator(cfg.anchors.sizes, cfg.anchors.aspect_ratios, fpn.strides,
                              cfg.anchors.scales_per_octave, cfg.anchors.offset)
    rpn = RPN(
        RPNHead(fpn.out_channels, anchors.num_anchors), anchors,
        pre_nms_topk=(r.pre_nms_topk_train, r.pre_nms_topk_test),
        post_nms_topk=(r.post_nms_topk_train, r.post_nms_topk_test),
        nms_thresh=r.nms_thresh, fg_iou_thresh=r.fg_iou_thresh, bg_iou_thresh=r.bg_iou_thresh,
        batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction,
        min_size=r.min_size, smooth_l1_beta=r.smooth_l1_beta, ignore_iof_thresh=r.ignore_iof_thresh,
    )
    pooled_strides = fpn.strides[:4]  # RoIs are pooled from P2..P5
    box_pooler = MultiLevelRoIPooler(h.box_pooler_resolution, pooled_strides, h.pooler_sampling_ratio)
    box_head = BoxHead(fpn.out_channels, h.box_pooler_resolution, h.box_fc_dim)
    roi_heads = RoIHeads(
        box_pooler, box_head, BoxPredictor(box_head.out_channels, h.num_classes),
        MultiLevelRoIPooler(m.pooler_resolution, pooled_strides, h.pooler_sampling_ratio),
        MaskHead(fpn.out_channels, h.num_classes, m.pooler_resolution, m.resolution, m.num_convs, m.conv_dim, m.norm),
        num_classes=h.num_classes, batch_size_per_image=h.batch_size_per_image,
        positive_fraction=h.positive_fraction, fg_iou_thresh=h.fg_iou_thresh, bg_iou_thresh=h.bg_iou_thresh,
        box_weights=h.bbox_reg_weights, smooth_l1_beta=h.smooth_l1_beta, score_thresh=h.score_thresh,
        nms_thresh=h.nms_thresh, detections_per_image=h.detections_per_image,
        proposal_append_gt=h.proposal_append_gt, ignore_iof_thresh=h.ignore_iof_thresh,
    )
    if m.predictor_bias_init:  # (set after the heads are built: the random draws of every module stay as without it)
        torch.nn.init.constant_(roi_heads.mask_head.predictor.bias, m.predictor_bias_init)
    model = MaskRCNN(
        backbone, fpn, rpn, roi_heads, in_channels=inp.in_channels, pixel_mean=inp.pixel_mean,
        pixel_std=inp.pixel_std, min_size_train=inp.min_size_train, max_size_train=inp.max_size_train,
        min_size_test=inp.min_size_test, max_size_test=inp.max_size_test, scale=inp.scale,
        size_divisibility=inp.size_divisibility, channels_last=False,
        normalize=inp.normalize, percentile_low=inp.percentile_low, percentile_high=inp.percentile_high,
    )
    if b.norm == "frozen_bn" and not b.weights and load_weights:  # (restoring a checkpoint: no warning)
        warnings.warn(
            "model.backbone.norm is frozen_bn but no weights are given: the backbone has no trainable "
            "normalisation and is likely to diverge; use norm gn (or bn) to train from scratch",
            RuntimeWarning, stacklevel=2,
        )
    if load_weights and b.weights:
        from maskrcnn.model.weights import import_weights

        import_weights(model, b.weights, channel_order=b.weights_channel_order,
                       source_pixel_std=b.weights_pixel_std or None, verbose=verbose)
    if cfg.channels_last:
        model.channels_last = True
        model.to(memory_format=torch.channels_last)
    return compile_model(model, cfg.compile)
