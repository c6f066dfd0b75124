"""Non-maximum suppression of boxes.

``nms`` keeps, in order of decreasing score, each box whose IoU with every box kept before it is
``<= iou_threshold``. Ties in score keep the lower index first (a stable sort), on every device.
IoU is ``inter / union`` computed as in ``maskrcnn.structures.box_iou`` (0 when the union is
empty) in float32 (float64 for float64 boxes), and compared with the threshold cast to that
dtype; the compiled kernels round every operation alike, so boxes at the threshold are decided
as the twin decides them. Same kept set and order as torchvision.ops.nms (checked by
``tools/compare_twins_torchvision.py``), except that torchvision's order among equal scores is
unspecified.
"""
from __future__ import annotations

import torch
from torch import Tensor

from maskrcnn.ops._ext import get_ext, has_cuda_ops
from maskrcnn.structures import box_iou


def greedy_suppress_reference(iou_sorted: Tensor, iou_threshold: float) -> Tensor:
    """Pure-PyTorch :func:`greedy_suppress`: the fallback and test oracle."""
    n = iou_sorted.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=iou_sorted.device)
    over = (iou_sorted > iou_threshold).triu(diagonal=1).cpu()
    removed = torch.zeros(n, dtype=torch.bool)
    keep = []
    # Sequential by nature (each decision depends on the kept set); one vector op per kept box.
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed |= over[i]
    return torch.as_tensor(keep, dtype=torch.long, device=iou_sorted.device)


def greedy_suppress(iou_sorted: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS on a precomputed IoU matrix of items already sorted by decreasing score.

    Item ``j`` is suppressed when an earlier kept item ``i < j`` has ``iou_sorted[i, j] >
    iou_threshold`` (compared in the matrix's dtype); only the upper triangle is read.

    Args:
        iou_sorted (Tensor[N, N]): IoU between items ``i`` and ``j`` in score order.
    Returns:
        Tensor[K] int64: positions (in the sorted order) of the kept items, increasing.
    """
    if iou_sorted.dim() != 2 or iou_sorted.shape[0] != iou_sorted.shape[1]:
        raise ValueError(f"greedy_suppress: iou must be a square [N, N] matrix, got {tuple(iou_sorted.shape)}")
    ext = get_ext()
    if ext is None or (iou_sorted.is_cuda and not has_cuda_ops()):
        return greedy_suppress_reference(iou_sorted, iou_threshold)
    return torch.ops.maskrcnn.greedy_suppress(iou_sorted, float(iou_threshold))


def nms_reference(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Pure-PyTorch NMS: the fallback and test oracle. Returns kept indices by decreasing score."""
    _check(boxes, scores)
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order].float() if boxes.dtype in (torch.float16, torch.bfloat16) else boxes[order]
    keep = greedy_suppress_reference(box_iou(b, b), iou_threshold)
    return order[keep]


def _check(boxes: Tensor, scores: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"nms: boxes must be [N, 4], got {tuple(boxes.shape)}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"nms: scores must be [{boxes.shape[0]}], got {tuple(scores.shape)}")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """NMS of ``boxes (Tensor[N, 4])`` xyxy with ``scores (Tensor[N])``.

    Returns:
        Tensor[K] int64: indices of the kept boxes, by decreasing score.
    """
    _check(boxes, scores)
    ext = get_ext()
    if ext is None or (boxes.is_cuda and not has_cuda_ops()):
        return nms_reference(boxes, scores, iou_threshold)
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return torch.ops.maskrcnn.nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group ``idxs (Tensor[N])`` (e.g. class or image), independently.

    Boxes of different groups are moved apart by an offset larger than any coordinate so that
    they never overlap; one NMS call then serves all groups.

    Returns:
        Tensor[K] int64: kept indices, by decreasing score.
    """
    _check(boxes, scores)
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    b = boxes.float() if boxes.dtype in (torch.float16, torch.bfloat16) else boxes
    span = b.max() - torch.minimum(b.min(), torch.zeros((), dtype=b.dtype, device=b.device)) + 1
    offsets = idxs.to(b) * span
    return nms(b + offsets[:, None], scores, iou_threshold)
