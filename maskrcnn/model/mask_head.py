"""The mask head, its targets and loss, and the pasting of predicted masks, beside each other.

Mask targets are never dense full-image masks: each sampled foreground proposal takes its target
by RoIAlign of its ground truth's crop (``MaskList``: batch index = GT index, RoI shifted by the
crop's origin; crops get a zero border so bilinear samples at the edge see background).
Predicted masks are pasted into soft crops of the original image (box + 1 px), in chunks.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.config import MaskHeadConfig
from maskrcnn.model.backbone import ConvNorm
from maskrcnn.ops import roi_align
from maskrcnn.structures import MaskList


class MaskHead(nn.Module):
    """``num_convs`` 3x3 convs (``convs.i``), 2x upsampling by transposed conv (``deconv``, and
    ``deconv2`` when the output is 4x the pooled size), and a 1x1 ``predictor`` with one mask per class.

    Args:
        in_channels: FPN channels; pooler_resolution: pooled size P; resolution: output M
            (``M = 2P`` or ``4P``: 14 -> 28 by default; 28 -> 56 or 14 -> 56 for finer masks).
    """

    def __init__(self, in_channels: int, num_classes: int, pooler_resolution: int = 14, resolution: int = 28,
                 num_convs: int = 4, conv_dim: int = 256, norm: str = ""):
        super().__init__()
        factor = resolution // pooler_resolution
        if resolution % pooler_resolution or factor not in (2, 4):
            raise ValueError(
                f"mask head: resolution ({resolution}) must be 2x or 4x the pooler resolution ({pooler_resolution})"
            )
        self.convs = nn.ModuleList(
            ConvNorm(in_channels if i == 0 else conv_dim, conv_dim, 3, padding=1, norm=norm) for i in range(num_convs)
        )
        ch = conv_dim if num_convs else in_channels
        self.deconv = nn.ConvTranspose2d(ch, conv_dim, 2, stride=2)
        self.deconv2 = nn.ConvTranspose2d(conv_dim, conv_dim, 2, stride=2) if factor == 4 else None
        self.predictor = nn.Conv2d(conv_dim, num_classes, 1)
        for m in list(self.convs) + [self.deconv] + ([self.deconv2] if self.deconv2 is not None else []):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)
        self.resolution = resolution
        self.boundary_weight = 0.0  # mask_loss's extra weight on target boundaries (model.mask_head)

    @classmethod
    def from_config(cls, cfg: MaskHeadConfig, in_channels: int, num_classes: int) -> "MaskHead":
        """The mask head of ``model.mask_head`` on FPN features of ``in_channels`` channels."""
        head = cls(in_channels, num_classes, cfg.pooler_resolution, cfg.resolution, cfg.num_convs, cfg.conv_dim,
                   cfg.norm)
        if cfg.predictor_bias_init:  # a constant: the random draws of every module stay as without it
            nn.init.constant_(head.predictor.bias, cfg.predictor_bias_init)
        head.boundary_weight = float(cfg.boundary_weight)
        return head

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[K, C, P, P]`` -> mask logits ``Tensor[K, num_classes, M, M]``."""
        for conv in self.convs:
            x = F.relu(conv(x))
        x = F.relu(self.deconv(x))
        if self.deconv2 is not None:
            x = F.relu(self.deconv2(x))
        return self.predictor(x)


def mask_targets(gt_masks: MaskList, gt_index: Tensor, boxes: Tensor, resolution: int) -> Tensor:
    """Binary M x M targets of RoIs from crop masks, without dense full-image masks.

    Args:
        gt_masks: the image's GT masks (crops in original-image pixels).
        gt_index (Tensor[P]): the GT matched to each RoI.
        boxes (Tensor[P, 4]): the RoIs in the same (original-image) pixels as ``gt_masks``.
    Returns:
        Tensor[P, M, M] float32 in {0, 1}: RoIAlign of the crop, thresholded at 0.5
        (:func:`build_mask_targets` for one image).
    """
    return build_mask_targets([gt_masks], torch.zeros_like(gt_index), gt_index, boxes, resolution)


def build_mask_targets(gt_masks: Sequence[MaskList], image_index: Tensor, gt_index: Tensor, boxes: Tensor,
                       resolution: int) -> Tensor:
    """:func:`mask_targets` of a whole batch in one RoIAlign call.

    Args:
        gt_masks: per image its GT masks (crops in original-image pixels).
        image_index (Tensor[P]), gt_index (Tensor[P]): each RoI's image and its matched GT in that image.
        boxes (Tensor[P, 4]): the RoIs in their image's original pixels.
    Every image's crops are padded (zeros) to one common size and concatenated; padding past a
    crop's own zero border changes no sample, so the result equals each image alone (tested).
    Returns:
        Tensor[P, M, M] float32 in {0, 1}.
    """
    if boxes.shape[0] == 0:
        return boxes.new_zeros((0, resolution, resolution))
    h = max(int(m.crops.shape[1]) for m in gt_masks)
    w = max(int(m.crops.shape[2]) for m in gt_masks)
    # One extra zero pixel on every side: bilinear samples past the crop's edge must see background.
    crops = torch.cat([F.pad(m.crops, (1, 1 + w - m.crops.shape[2], 1, 1 + h - m.crops.shape[1])) for m in gt_masks])
    origins = torch.cat([m.origins for m in gt_masks]) - 1
    first = torch.tensor([0] + [len(m) for m in gt_masks[:-1]], device=boxes.device).cumsum(0)
    gt = first[image_index] + gt_index
    rel = boxes.float() - origins[gt].to(torch.float32).repeat(1, 2)
    rois = torch.cat([gt[:, None].float(), rel], dim=1)
    t = roi_align(crops.float()[:, None], rois, resolution, 1.0, sampling_ratio=0, aligned=True)
    return (t[:, 0] >= 0.5).float()


def target_boundaries(targets: Tensor) -> Tensor:
    """Pixels of binary ``targets`` (Tensor[P, M, M]) with both values among their 3x3 neighbours
    (inside the M x M grid): Tensor[P, M, M] bool, the outline on both sides of the edge."""
    t = targets[:, None].float()
    dilated = F.max_pool2d(t, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-t, 3, stride=1, padding=1)
    return (dilated != eroded)[:, 0]


def mask_loss(mask_logits: Tensor, gt_classes: Tensor, targets: Tensor, boundary_weight: float = 0.0) -> Tensor:
    """Mean per-pixel BCE of the GT class's mask channel.

    Args:
        mask_logits (Tensor[P, C, M, M]); gt_classes (Tensor[P]); targets (Tensor[P, M, M]).
        boundary_weight: pixels on a target's boundary (:func:`target_boundaries`) weigh
            ``1 + boundary_weight``, the others 1; the loss is the weighted mean.
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0  # keeps the mask head in the graph (DDP) with zero gradient
    logits = mask_logits[torch.arange(mask_logits.shape[0], device=mask_logits.device), gt_classes]
    if not boundary_weight:
        return F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="mean")
    weights = 1.0 + boundary_weight * target_boundaries(targets).float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    return (bce * weights).sum() / weights.sum()


def mask_probabilities(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """Sigmoid of each detection's own class channel: ``Tensor[D, M, M]`` float32."""
    if mask_logits.shape[0] == 0:
        return mask_logits.new_zeros((0,) + tuple(mask_logits.shape[-2:])).float()
    idx = torch.arange(mask_logits.shape[0], device=mask_logits.device)
    return mask_logits[idx, labels].float().sigmoid()


def paste_masks(masks: Tensor, boxes: Tensor, image_size: Tuple[int, int], max_elements: int = 1 << 22) -> MaskList:
    """Paste M x M soft masks into crops of the image: ``MaskList`` of probabilities.

    Crop ``i`` covers the box grown to whole pixels plus 1 px on each side, clipped to the image;
    all crops share the largest size (zero-filled). Pixel ``(x, y)`` takes the bilinear sample of
    the mask at its centre ``(x + 0.5, y + 0.5)`` mapped into the box (``grid_sample``,
    ``align_corners=False``), 0 outside the crop window. Done in chunks of at most ``max_elements``
    crop pixels, so memory stays ~ N x crop area, never N x H x W.

    Args:
        masks (Tensor[N, M, M]) float in [0, 1]; boxes (Tensor[N, 4]) xyxy in image pixels.
    """
    H, W = int(image_size[0]), int(image_size[1])
    n = masks.shape[0]
    dev = masks.device
    if n == 0:
        return MaskList.empty((H, W), device=dev, dtype=torch.float32)
    boxes = boxes.float()
    x0 = (torch.floor(boxes[:, 0]).long() - 1).clamp(0, W)
    y0 = (torch.floor(boxes[:, 1]).long() - 1).clamp(0, H)
    x1 = (torch.ceil(boxes[:, 2]).long() + 1).clamp(0, W)
    y1 = (torch.ceil(boxes[:, 3]).long() + 1).clamp(0, H)
    hw = torch.stack([(y1 - y0).max(), (x1 - x0).max()]).clamp(min=1).tolist()  # one host sync
    h, w = int(hw[0]), int(hw[1])
    bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)
    bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    crops = torch.empty((n, h, w), dtype=torch.float32, device=dev)
    chunk = max(1, max_elements // (h * w))
    src = masks.float()[:, None]
    for s in range(0, n, chunk):  # chunks bound memory; each chunk is one grid_sample call
        sl = slice(s, min(n, s + chunk))
        xs = x0[sl, None] + ar_w  # [c, w] image columns
        ys = y0[sl, None] + ar_h  # [c, h]
        gx = ((xs.float() + 0.5 - boxes[sl, 0, None]) / bw[sl, None]) * 2 - 1
        gy = ((ys.float() + 0.5 - boxes[sl, 1, None]) / bh[sl, None]) * 2 - 1
        c = gx.shape[0]
        grid = torch.stack([gx[:, None, :].expand(c, h, w), gy[:, :, None].expand(c, h, w)], dim=-1)
        out = F.grid_sample(src[sl], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
        inside = (ys < y1[sl, None])[:, :, None] & (xs < x1[sl, None])[:, None, :]
        crops[sl] = out * inside
    return MaskList(crops, torch.stack([x0, y0], dim=1), (H, W))
