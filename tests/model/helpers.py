"""Tiny configs and images for the model tests (small enough for 2 busy CPU cores)."""
from __future__ import annotations

from typing import Sequence

import torch

from maskrcnn.config import load_config
from maskrcnn.structures import Instances, MaskList

TINY = [
    "model.backbone.name=resnet18",
    "model.backbone.norm=gn",
    "model.backbone.freeze_at=0",
    "model.backbone.stem_out_channels=32",
    "model.backbone.res2_out_channels=32",
    "model.fpn.out_channels=32",
    "model.fpn.norm=gn",
    "model.rpn.pre_nms_topk_train=100",
    "model.rpn.post_nms_topk_train=100",
    "model.rpn.pre_nms_topk_test=100",
    "model.rpn.post_nms_topk_test=100",
    "model.rpn.batch_size_per_image=64",
    "model.roi_heads.batch_size_per_image=64",
    "model.roi_heads.box_fc_dim=64",
    "model.roi_heads.num_classes=2",
    "model.mask_head.num_convs=1",
    "model.mask_head.conv_dim=32",
    "model.input.in_channels=1",
    "model.input.pixel_mean=[0.4]",
    "model.input.pixel_std=[0.3]",
]


def tiny_model_config(*overrides: str):
    """ModelConfig of a slim ResNet-18-FPN (GN) with few proposals; ``overrides`` as ``key=value``."""
    return load_config(None, TINY + list(overrides)).model


def disks_sample(height: int = 64, width: int = 80, disks: Sequence = ((20, 24, 8, 0), (44, 56, 10, 1), (16, 60, 6, 1)),
                 channels: int = 1):
    """An image with bright disks ``(cy, cx, r, label)`` on a dark background and its GT Instances."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    if len(disks):
        dense = torch.stack([((yy - cy) ** 2 + (xx - cx) ** 2) < r * r for cy, cx, r, _ in disks])
    else:
        dense = torch.zeros((0, height, width), dtype=torch.bool)
    image = 0.1 + 0.7 * dense.any(0).float() if len(disks) else torch.full((height, width), 0.1)
    image = image[None].repeat(channels, 1, 1)
    masks = MaskList.from_dense(dense)
    labels = torch.tensor([d[3] for d in disks], dtype=torch.long)
    return image, Instances((height, width), masks.tight_boxes(), labels, None, masks)
