"""Matching boxes to ground truth by IoU, and balanced sampling of the matches (RPN and RoI heads)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


FOREGROUND, BACKGROUND, IGNORE = 1, 0, -1


def pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU ``Tensor[N, M]`` of xyxy boxes ``a (Tensor[N, 4])`` and ``b (Tensor[M, 4])``, float32.

    Same values as ``structures.box_iou`` with [N, M] temporaries only (no [N, M, 2] ones): the
    matcher calls it on up to 800 GT x 90k anchors per image.
    """
    a = a.float()
    b = b.float()
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    iw = torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])
    ih = torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])
    inter = iw.clamp_(min=0).mul_(ih.clamp_(min=0))
    union = (area_a[:, None] + area_b[None, :]).sub_(inter)
    return torch.where(union > 0, inter.div_(union.clamp(min=1e-12)), torch.zeros_like(inter))


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
    (Ren et al. 2015). The G x A IoU matrix is computed once, in chunks of boxes that bound memory
    (800 cells x 90k anchors would be 290 MB per intermediate); each chunk keeps, per GT, the
    boxes that reach the chunk's maximum, and those reaching the global maximum win at the end.

    Returns:
        matched (Tensor[A] int64): index of the matched GT (0 when G == 0).
        labels (Tensor[A] int8).
    """
    A = boxes.shape[0]
    G = gt_boxes.shape[0]
    dev = boxes.device
    if G == 0 or A == 0:
        return (torch.zeros(A, dtype=torch.long, device=dev), torch.full((A,), BACKGROUND, dtype=torch.int8, device=dev))
    chunk = max(1, max_elements // G)
    best_iou, matched = [], []
    cand_gt, cand_box, cand_val = [], [], []
    for s in range(0, A, chunk):  # chunks of boxes bound memory; not a loop over instances
        iou = pairwise_iou(gt_boxes, boxes[s : s + chunk])  # [G, a]
        v, i = iou.max(dim=0)
        best_iou.append(v)
        matched.append(i)
        if allow_low_quality:
            chunk_best = iou.max(dim=1, keepdim=True).values  # [G, 1]
            g, j = torch.nonzero(iou == chunk_best, as_tuple=True)
            cand_gt.append(g)
            cand_box.append(j + s)
            cand_val.append(chunk_best[g, 0])
    best_iou = torch.cat(best_iou)
    matched = torch.cat(matched)
    labels = torch.full((A,), IGNORE, dtype=torch.int8, device=dev)
    labels[best_iou < bg_iou_thresh] = BACKGROUND
    labels[best_iou >= fg_iou_thresh] = FOREGROUND
    if allow_low_quality:
        g, j, val = torch.cat(cand_gt), torch.cat(cand_box), torch.cat(cand_val)
        gt_best = torch.full((G,), -1.0, device=dev).scatter_reduce_(0, g, val, reduce="amax")
        labels[j[(val == gt_best[g]) & (val > 0)]] = FOREGROUND
    return matched, labels


def ignore_inside(labels: Tensor, boxes: Tensor, ignore_boxes: Tensor, iof_thresh: float,
                  max_elements: int = 1 << 24) -> Tensor:
    """``labels (Tensor[A])`` with every non-foreground box that lies inside an ignore region set to
    ``IGNORE``: neither a positive nor a negative, so it gives no loss.

    "Inside" is intersection over the box's own area (IoF) ``>= iof_thresh`` with some box of
    ``ignore_boxes (Tensor[I, 4])`` (the "crowd" rule of COCO-style detectors: an uncertain region
    may hold an object, so calling the anchors there background would teach the model to miss it).
    Foreground boxes keep their label: they match a real ground-truth box by IoU >= fg threshold,
    which is a trustworthy target whatever the region around it. Returns a new tensor.
    """
    if ignore_boxes.shape[0] == 0 or boxes.shape[0] == 0:
        return labels
    b = boxes.float()
    ig = ignore_boxes.float().to(b.device)
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    best = []
    chunk = max(1, max_elements // ig.shape[0])
    for s in range(0, b.shape[0], chunk):  # chunks of boxes bound memory; not a loop over instances
        bb = b[s : s + chunk]
        iw = torch.minimum(bb[:, None, 2], ig[None, :, 2]) - torch.maximum(bb[:, None, 0], ig[None, :, 0])
        ih = torch.minimum(bb[:, None, 3], ig[None, :, 3]) - torch.maximum(bb[:, None, 1], ig[None, :, 1])
        best.append((iw.clamp_(min=0) * ih.clamp_(min=0)).max(dim=1).values)
    inter = torch.cat(best)
    inside = inter >= iof_thresh * area.clamp(min=1e-12)
    out = labels.clone()
    out[inside & (labels != FOREGROUND)] = IGNORE
    return out


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
