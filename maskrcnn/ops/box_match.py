"""Matching boxes to ground truth by IoU, for a batch: the dense part of the RPN's and the box
head's target assignment (``maskrcnn.model.matching`` turns it into labels).

``best_matches`` gives, for every box of every image, the best IoU with that image's valid ground
truth and the GT reaching it (the first of equal maxima), and which boxes are some GT's best box
(ties included, positive IoU only: the "low-quality" matches of Ren et al. 2015). On the CPU the
compiled op ``torch.ops.maskrcnn.match_boxes`` does it in one fused pass over the ``[B, G, A]``
pairs (~10x faster than the twin on the DSB CPU recipe's 4 x 65k anchors); elsewhere, or without
the compiled module, the twin :func:`best_matches_reference` computes the same values with
PyTorch ops (the ``[B, G, A]`` IoU in chunks of boxes). Both compute the IoU with the same float32
operations in the same order (:func:`pairwise_iou_batched`), so ties and thresholds agree exactly.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from maskrcnn.ops._ext import get_ext


def pairwise_iou_batched(a: Tensor, b: Tensor) -> Tensor:
    """IoU ``Tensor[B, N, M]`` of ``a (Tensor[B, N, 4])`` and ``b (Tensor[B or 1, M, 4])``, float32,
    with [B, N, M] temporaries only (the matcher calls it on up to 800 GT x 90k anchors per image)."""
    a = a.float()
    b = b.float()
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    iw = torch.minimum(a[:, :, None, 2], b[:, None, :, 2]) - torch.maximum(a[:, :, None, 0], b[:, None, :, 0])
    ih = torch.minimum(a[:, :, None, 3], b[:, None, :, 3]) - torch.maximum(a[:, :, None, 1], b[:, None, :, 1])
    inter = iw.clamp_(min=0).mul_(ih.clamp_(min=0))
    union = (area_a[:, :, None] + area_b[:, None, :]).sub_(inter)
    return torch.where(union > 0, inter.div_(union.clamp(min=1e-12)), torch.zeros_like(inter))


_has_kernel = None


def _compiled() -> bool:
    """Whether the compiled CPU kernel is there (a ``maskrcnn._C`` built before it was added lacks it)."""
    global _has_kernel
    if get_ext() is None:
        return False
    if _has_kernel is None:
        from maskrcnn.ops import _library

        _has_kernel = _library.has_cpu_kernel("match_boxes")
    return _has_kernel


def _check(gt_boxes: Tensor, gt_valid: Tensor, boxes: Tensor) -> None:
    if gt_boxes.dim() != 3 or gt_boxes.shape[2] != 4:
        raise ValueError(f"match_boxes: gt_boxes must be [B, G, 4], got {tuple(gt_boxes.shape)}")
    if gt_valid.shape != gt_boxes.shape[:2] or gt_valid.dtype != torch.bool:
        raise ValueError(f"match_boxes: gt_valid must be bool {tuple(gt_boxes.shape[:2])}, "
                         f"got {gt_valid.dtype} {tuple(gt_valid.shape)}")
    ok = (boxes.dim() == 2 and boxes.shape[1] == 4) or (
        boxes.dim() == 3 and boxes.shape[2] == 4 and boxes.shape[0] in (1, gt_boxes.shape[0]))
    if not ok:
        raise ValueError(f"match_boxes: boxes must be [A, 4], [1, A, 4] or [{gt_boxes.shape[0]}, A, 4], "
                         f"got {tuple(boxes.shape)}")


def best_matches_reference(gt_boxes: Tensor, gt_valid: Tensor, boxes: Tensor,
                           max_elements: int = 1 << 24) -> Tuple[Tensor, Tensor, Tensor]:
    """Pure-PyTorch :func:`best_matches`: the fallback and test oracle. The ``[B, G, A]`` IoU is
    taken in chunks of boxes of at most ``max_elements`` entries; padded GT rows take IoU -1."""
    _check(gt_boxes, gt_valid, boxes)
    B, G = gt_valid.shape
    A = boxes.shape[-2]
    dev = boxes.device
    best = torch.full((B, A), -1.0, device=dev)
    matched = torch.zeros((B, A), dtype=torch.long, device=dev)
    low_quality = torch.zeros((B, A), dtype=torch.bool, device=dev)
    if B == 0 or G == 0 or A == 0:
        return best, matched, low_quality
    bx = boxes[None] if boxes.dim() == 2 else boxes
    chunk = max(1, max_elements // (B * G))
    pad = ~gt_valid[:, :, None]
    best_iou, best_gt = [], []
    cand_b, cand_gt, cand_box, cand_val = [], [], [], []
    for s in range(0, A, chunk):  # chunks of boxes bound memory; not a loop over instances
        iou = pairwise_iou_batched(gt_boxes, bx[:, s : s + chunk]).masked_fill_(pad, -1.0)  # [B, G, a]
        v, i = iou.max(dim=1)
        best_iou.append(v)
        best_gt.append(i)
        chunk_best = iou.max(dim=2, keepdim=True).values  # [B, G, 1]
        # Only positive maxima can make a match: GTs without overlap here (and padding) add nothing.
        b, g, j = torch.nonzero((iou == chunk_best) & (chunk_best > 0), as_tuple=True)
        cand_b.append(b)
        cand_gt.append(g)
        cand_box.append(j + s)
        cand_val.append(chunk_best[b, g, 0])
    # A chunk's maxima are candidates; the GT's maximum over all chunks decides.
    b, g, j, val = torch.cat(cand_b), torch.cat(cand_gt), torch.cat(cand_box), torch.cat(cand_val)
    flat = b * G + g
    gt_best = torch.full((B * G,), -1.0, device=dev).scatter_reduce_(0, flat, val, reduce="amax")
    lq = (val == gt_best[flat]) & (val > 0)
    low_quality[b[lq], j[lq]] = True
    return torch.cat(best_iou, dim=1), torch.cat(best_gt, dim=1), low_quality


def best_matches(gt_boxes: Tensor, gt_valid: Tensor, boxes: Tensor,
                 max_elements: int = 1 << 24) -> Tuple[Tensor, Tensor, Tensor]:
    """Each box's best ground truth by IoU, per image.

    Args:
        gt_boxes (Tensor[B, G, 4]) and gt_valid (Tensor[B, G] bool): padded ground truth, xyxy.
        boxes: ``Tensor[A, 4]`` shared by every image (anchors) or ``Tensor[B or 1, A, 4]`` (proposals).
        max_elements: the twin's chunk bound (the compiled op needs no ``[B, G, A]`` memory).
    Boxes must be finite (ground-truth boxes come from masks, the RPN drops non-finite proposals): a NaN
    IoU loses every comparison in the kernel but would propagate through the twin's ``max``.
    Returns:
        best_iou (Tensor[B, A] float32): the best IoU with a valid GT of the image (-1 if it has none);
        matched (Tensor[B, A] int64): the GT reaching it, the first of equal maxima (0 if none);
        low_quality (Tensor[B, A] bool): the boxes whose IoU with some valid GT equals that GT's best
        IoU over all the image's boxes, when that best is positive.
    """
    _check(gt_boxes, gt_valid, boxes)
    if boxes.device.type != "cpu" or not _compiled():
        # Other devices (no kernel: the twin's batched ops are fast there) and builds that predate the op.
        return best_matches_reference(gt_boxes, gt_valid, boxes, max_elements)
    return torch.ops.maskrcnn.match_boxes(gt_boxes, gt_valid, boxes)
