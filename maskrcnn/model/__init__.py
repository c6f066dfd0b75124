"""Mask R-CNN with an FPN on a backbone (ResNet / ResNeXt): ``build_model(cfg.model)`` builds it from
the config (each stage maps its own section in a ``from_config`` classmethod; modules never keep the
config), imports the initial weights and sets the memory format and compilation."""
from __future__ import annotations

import warnings

import torch

from maskrcnn.config import ModelConfig
from maskrcnn.model.backbone import Backbone, build_backbone
from maskrcnn.model.compile import compile_model
from maskrcnn.model.mask_rcnn import MaskRCNN

__all__ = ["Backbone", "MaskRCNN", "build_backbone", "build_model"]


def build_model(cfg: ModelConfig, load_weights: bool = True, verbose: bool = True) -> MaskRCNN:
    """Build Mask R-CNN from ``cfg`` (a ``ModelConfig``, checked when it was built); imports
    ``cfg.backbone.weights`` if set and ``load_weights`` (a checkpoint restore passes ``load_weights=False``)."""
    b = cfg.backbone
    model = MaskRCNN.from_config(cfg)
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
