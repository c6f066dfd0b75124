"""Matching boxes to ground truth by IoU, and balanced sampling of the matches (RPN and RoI heads)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from maskrcnn.structures import box_iou

FOREGROUND, BACKGROUND, IGNORE = 1, 0, -1


def match_boxes(
    gt_boxes: Tensor,
    boxes: Tensor,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    allow_low_quality: bool = False,
    max_elements: int = 1 << 24,
) -> Tuple[Tensor, Tensor]:
    """Match each of ``boxes (Tensor[A, 4])`` to its highest-IoU box of ``gt_boxes (Tensor[G, 4])``.

    Labels: ``FOREGROUND`` (1) where the best IoU is ``>= fg_iou_thresh``, ``BACKGROUND`` (0) where
    it is ``< bg_iou_thresh``, ``IGNORE`` (-1) in between. With ``allow_low_quality``, each GT's
    highest-IoU boxes (ties included, IoU > 0) are also foreground, so that every GT gets an anchor
    (Ren et al. 2015). The G x A IoU matrix is computed in chunks of boxes to bound memory
    (800 cells x 90k anchors would be 290 MB per intermediate).

    Returns:
        matched (Tensor[A] int64): index of the matched GT (0 when G == 0).
        labels (Tensor[A] int8).
    """
    A = boxes.shape[0]
    G = gt_boxes.shape[0]
    dev = boxes.device
    if G == 0 or A == 0:
        return (torch.zeros(A, dtype=torch.long, device=dev), torch.full((A,), BACKGROUND, dtype=torch.int8, device=dev))
    gt_boxes = gt_boxes.float()
    boxes = boxes.float()
    chunk = max(1, max_elements // max(G, 1))
    best_iou, matched = [], []
    gt_best = torch.zeros(G, device=dev)
    for s in range(0, A, chunk):  # chunks of boxes bound memory; not a loop over instances
        iou = box_iou(gt_boxes, boxes[s : s + chunk])  # [G, a]
        v, i = iou.max(dim=0)
        best_iou.append(v)
        matched.append(i)
        gt_best = torch.maximum(gt_best, iou.max(dim=1).values)
    best_iou = torch.cat(best_iou)
    matched = torch.cat(matched)
    labels = torch.full((A,), IGNORE, dtype=torch.int8, device=dev)
    labels[best_iou < bg_iou_thresh] = BACKGROUND
    labels[best_iou >= fg_iou_thresh] = FOREGROUND
    if allow_low_quality:
        low = []
        for s in range(0, A, chunk):
            iou = box_iou(gt_boxes, boxes[s : s + chunk])
            low.append(((iou == gt_best[:, None]) & (gt_best[:, None] > 0)).any(dim=0))
        labels[torch.cat(low)] = FOREGROUND
    return matched, labels


def sample_balanced(
    labels: Tensor, batch_size: int, positive_fraction: float, generator: Optional[torch.Generator] = None
) -> Tuple[Tensor, Tensor]:
    """Random foreground and background indices of ``labels (Tensor[A])`` (1 fg, 0 bg, -1 ignored).

    At most ``batch_size * positive_fraction`` foregrounds; background fills the rest of the batch.

    Returns:
        (pos_idx (Tensor[P] int64), neg_idx (Tensor[Q] int64)), ``P + Q <= batch_size``.
    """
    pos = torch.nonzero(labels == FOREGROUND).squeeze(1)
    neg = torch.nonzero(labels == BACKGROUND).squeeze(1)
    num_pos = min(pos.numel(), int(batch_size * positive_fraction))
    num_neg = min(neg.numel(), batch_size - num_pos)
    pos = pos[torch.randperm(pos.numel(), device=pos.device, generator=generator)[:num_pos]]
    neg = neg[torch.randperm(neg.numel(), device=neg.device, generator=generator)[:num_neg]]
    return pos, neg
