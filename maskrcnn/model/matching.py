"""Matching boxes to ground truth by IoU, and balanced sampling of the matches (RPN and RoI heads)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from maskrcnn.ops.box_match import best_matches


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
            # Only positive maxima can make a match: a GT without overlap in this chunk adds nothing.
            g, j = torch.nonzero((iou == chunk_best) & (chunk_best > 0), as_tuple=True)
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


def pad_boxes(boxes: Sequence[Tensor], device=None) -> Tuple[Tensor, Tensor]:
    """Stack per-image ``Tensor[G_i, 4]`` boxes into ``Tensor[B, G, 4]`` (G = max G_i, zero rows after
    each image's own) and ``valid (Tensor[B, G] bool)``."""
    B = len(boxes)
    G = max([int(b.shape[0]) for b in boxes] + [0])
    dev = device if device is not None else (boxes[0].device if B else None)
    out = torch.zeros((B, G, 4), dtype=torch.float32, device=dev)
    for i, b in enumerate(boxes):  # one copy per image (no per-instance work)
        if b.shape[0]:
            out[i, : b.shape[0]] = b
    counts = torch.tensor([int(b.shape[0]) for b in boxes], device=dev)
    valid = torch.arange(G, device=dev)[None, :] < counts[:, None]
    return out, valid


def match_boxes_batched(
    gt_boxes: Tensor,
    gt_valid: Tensor,
    boxes: Tensor,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    allow_low_quality: bool = False,
    box_valid: Optional[Tensor] = None,
    max_elements: int = 1 << 24,
) -> Tuple[Tensor, Tensor]:
    """:func:`match_boxes` for a whole batch at once: the same matches and labels as per image.

    Args:
        gt_boxes (Tensor[B, G, 4]) and gt_valid (Tensor[B, G] bool): padded ground truth (:func:`pad_boxes`).
        boxes: ``Tensor[A, 4]`` shared by every image (anchors) or ``Tensor[B, A, 4]`` (proposals).
        box_valid (Tensor[B, A] bool, optional): padding boxes, labelled ``IGNORE``.
    Padded GT rows never win a box nor get low-quality matches. The IoUs come from
    :func:`maskrcnn.ops.best_matches` (one fused pass on the CPU; on other devices the ``[B, G, A]``
    IoU in chunks of boxes of at most ``max_elements``).

    Returns:
        matched (Tensor[B, A] int64): each box's GT index within its image (0 when the image has none).
        labels (Tensor[B, A] int8).
    """
    B, G = gt_valid.shape
    A = boxes.shape[-2]
    dev = boxes.device
    if G == 0 or A == 0:
        matched = torch.zeros((B, A), dtype=torch.long, device=dev)
        labels = torch.full((B, A), BACKGROUND, dtype=torch.int8, device=dev)
    else:
        best_iou, matched, low_quality = best_matches(gt_boxes, gt_valid, boxes, max_elements)
        labels = torch.full((B, A), IGNORE, dtype=torch.int8, device=dev)
        labels[best_iou < bg_iou_thresh] = BACKGROUND
        labels[best_iou >= fg_iou_thresh] = FOREGROUND
        if allow_low_quality:
            labels[low_quality] = FOREGROUND
    if box_valid is not None:
        labels = labels.masked_fill(~box_valid, IGNORE)
    return matched, labels


def ignore_inside(labels: Tensor, boxes: Tensor, ignore_boxes: Tensor, ignore_valid: Optional[Tensor],
                  iof_thresh: float, max_elements: int = 1 << 24) -> Tensor:
    """``labels (Tensor[B, A])`` with every non-foreground box that lies inside an ignore region set
    to ``IGNORE``: neither a positive nor a negative, so it gives no loss. Returns a new tensor.

    Args:
        labels (Tensor[B, A] int8): from :func:`match_boxes_batched`.
        boxes: ``Tensor[A, 4]`` shared by every image (anchors) or ``Tensor[B, A, 4]`` (proposals).
        ignore_boxes (Tensor[B, I, 4]) and ignore_valid (Tensor[B, I] bool, or None: all valid):
            each image's ignore regions, padded (:func:`pad_boxes`).
    "Inside" is intersection over the box's own area (IoF) ``>= iof_thresh`` with some region of
    its image (the "crowd" rule of COCO-style detectors: an uncertain region may hold an object, so
    calling the anchors there background would teach the model to miss it). Foreground boxes keep
    their label: they match a real ground-truth box by IoU >= the fg threshold, a trustworthy target
    whatever the region around it. The ``[B, I, A]`` intersections are computed in chunks of boxes.
    """
    B, I = ignore_boxes.shape[:2]
    A = boxes.shape[-2]
    if I == 0 or A == 0:
        return labels
    bx = (boxes[None] if boxes.dim() == 2 else boxes).float()
    ig = ignore_boxes.float().to(bx.device)
    valid = (torch.ones((B, I), dtype=torch.bool, device=bx.device) if ignore_valid is None
             else ignore_valid.to(bx.device))
    area = (bx[..., 2] - bx[..., 0]).clamp(min=0) * (bx[..., 3] - bx[..., 1]).clamp(min=0)  # [1 or B, A]
    best = []
    chunk = max(1, max_elements // (B * I))
    for s in range(0, A, chunk):  # chunks of boxes bound memory; not a loop over instances
        bb = bx[:, None, s : s + chunk]  # [1 or B, 1, a, 4]
        iw = torch.minimum(bb[..., 2], ig[:, :, None, 2]) - torch.maximum(bb[..., 0], ig[:, :, None, 0])
        ih = torch.minimum(bb[..., 3], ig[:, :, None, 3]) - torch.maximum(bb[..., 1], ig[:, :, None, 1])
        inter = (iw.clamp_(min=0) * ih.clamp_(min=0)).masked_fill_(~valid[:, :, None], -1.0)  # [B, I, a]
        best.append(inter.max(dim=1).values)
    inside = torch.cat(best, dim=1) >= iof_thresh * area.clamp(min=1e-12)
    return labels.masked_fill(inside & (labels != FOREGROUND), IGNORE)


def sample_balanced_masks(
    labels: Tensor, batch_size: int, positive_fraction: float, generator: Optional[torch.Generator] = None,
    keys: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Random foreground and background samples of each row of ``labels (Tensor[B, N])``, all rows at once.

    Per row: at most ``batch_size * positive_fraction`` foregrounds (1), background (0) fills the
    rest of ``batch_size``; ignored (-1) entries are never taken. Each entry gets a uniform random
    key (``keys``, else ``torch.rand`` with ``generator``) and a row takes the candidates with the
    smallest keys: a uniformly random subset of the wanted size, drawn for every row with one
    ``topk`` instead of a ``randperm`` per row.

    Returns:
        (pos (Tensor[B, N] bool), neg (Tensor[B, N] bool)), disjoint, ``pos + neg <= batch_size`` per row.
    """
    B, N = labels.shape
    if keys is None:
        keys = torch.rand((B, N), generator=generator, device=labels.device)
    fg = labels == FOREGROUND
    bg = labels == BACKGROUND
    quota = int(batch_size * positive_fraction)
    num_pos = fg.sum(1).clamp(max=quota)
    num_neg = torch.minimum(bg.sum(1), batch_size - num_pos)
    return _smallest_keys(fg, keys, num_pos, min(quota, N)), _smallest_keys(bg, keys, num_neg, min(batch_size, N))


def _smallest_keys(cand: Tensor, keys: Tensor, count: Tensor, kmax: int) -> Tensor:
    """Mask of the ``count[b]`` candidates (``cand`` Tensor[B, N] bool) with the smallest keys per row."""
    out = torch.zeros_like(cand)
    if kmax <= 0:
        return out
    # Keys are in [0, 1): non-candidates (key 2) come after every candidate, and count <= candidates.
    idx = keys.masked_fill(~cand, 2.0).topk(kmax, dim=1, largest=False, sorted=True).indices  # [B, kmax]
    take = torch.arange(kmax, device=cand.device)[None, :] < count[:, None]
    return out.scatter_(1, idx, take)


def sample_balanced(
    labels: Tensor, batch_size: int, positive_fraction: float, generator: Optional[torch.Generator] = None
) -> Tuple[Tensor, Tensor]:
    """Random foreground and background indices of ``labels (Tensor[A])`` (1 fg, 0 bg, -1 ignored).

    At most ``batch_size * positive_fraction`` foregrounds; background fills the rest of the batch
    (:func:`sample_balanced_masks` for one row).

    Returns:
        (pos_idx (Tensor[P] int64), neg_idx (Tensor[Q] int64)) increasing, ``P + Q <= batch_size``.
    """
    pos, neg = sample_balanced_masks(labels[None], batch_size, positive_fraction, generator)
    return pos[0].nonzero().squeeze(1), neg[0].nonzero().squeeze(1)
