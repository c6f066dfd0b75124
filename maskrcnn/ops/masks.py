"""Mask IoU and mask NMS, computed inside boxes.

Masks are either dense (``Tensor[N, H, W]`` bool) or crops (see ``maskrcnn.structures.MaskList``:
``crops[N, h, w]`` plus ``origins[N, 2]`` as ``(x0, y0)``). Only pairs whose crop windows overlap
are compared, and only over the overlap: cost ~ (pairs that touch) x (cell area), never N x M x H x W.

Semantics: a pixel is foreground where the crop is nonzero (soft crops count any value > 0; threshold
them first). ``intersection[i, j]`` counts image pixels set in both ``a_i`` and ``b_j``; crops may
start at negative origins or run past the image, where they hold zeros (MaskList's invariant).
IoU = inter / (area_a + area_b - inter), and 0 when the union is empty (two empty masks).

The compiled ``crop_mask_intersection`` reduces each mask to the tight box of its pixels first, so
the padding of crops to a common size costs nothing: on the CPU it bit-packs each row of that box
into 64-bit words and counts ``popcount(a_row & shifted b_row)`` over the overlapping rows; on CUDA
a warp counts each pair from a compacted list of the pairs whose boxes overlap.
"""
from __future__ import annotations

import torch
from torch import Tensor

from maskrcnn.ops._ext import get_ext, has_cuda_ops
from maskrcnn.ops.nms import greedy_suppress
from maskrcnn.structures import MaskList


def _window_pairs(a_origins, a_hw, b_origins, b_hw):
    """Pairs (i, j) whose windows overlap, with the overlap ``[x0, x1) x [y0, y1)`` in image pixels."""
    ax0, ay0 = a_origins[:, 0], a_origins[:, 1]
    bx0, by0 = b_origins[:, 0], b_origins[:, 1]
    ax1, ay1 = ax0 + a_hw[1], ay0 + a_hw[0]
    bx1, by1 = bx0 + b_hw[1], by0 + b_hw[0]
    x0 = torch.maximum(ax0[:, None], bx0[None, :])
    y0 = torch.maximum(ay0[:, None], by0[None, :])
    x1 = torch.minimum(ax1[:, None], bx1[None, :])
    y1 = torch.minimum(ay1[:, None], by1[None, :])
    ii, jj = torch.nonzero((x1 > x0) & (y1 > y0), as_tuple=True)
    return ii, jj, x0[ii, jj], y0[ii, jj], x1[ii, jj], y1[ii, jj]


def crop_pair_intersections(a_crops: Tensor, a_origins: Tensor, b_crops: Tensor, b_origins: Tensor, ii: Tensor,
                            jj: Tensor, window: Tensor, max_elements: int = 1 << 22) -> Tensor:
    """Pixel counts of ``a[ii[k]] & b[jj[k]]`` for K listed pairs: ``Tensor[K]`` int64.

    Args:
        a_crops (Tensor[N, ha, wa]), b_crops (Tensor[M, hb, wb]): bool crops (crop sizes may differ).
        a_origins (Tensor[N, 2]), b_origins (Tensor[M, 2]): int64 ``(x0, y0)``.
        ii (Tensor[K]), jj (Tensor[K]): int64 indices of the pairs.
        window (Tensor[K, 4]): int64 ``xyxy`` image region holding every shared pixel of pair k
            (e.g. the intersection of the two tight boxes, or of the two crop windows).
    Pairs are sorted by window area and processed in chunks padded to the chunk's largest window
    (at most ~``max_elements`` gathered pixels each), so a few large masks do not inflate the rest.
    The one pair-intersection primitive: the metric's candidate pairs, TTA merging's box-pruned
    pairs and the pure-PyTorch twin of ``crop_mask_intersection`` count pixels with it.
    """
    K = int(ii.shape[0])
    out = torch.zeros(K, dtype=torch.long, device=a_crops.device)
    if K == 0:
        return out
    wh = (window[:, 2:] - window[:, :2]).clamp(min=0)  # [K, 2] (w, h)
    order = torch.argsort(wh[:, 0] * wh[:, 1])
    wh_sorted = wh[order].cpu()
    start = 0
    while start < K:  # chunks of pairs, each bounded to ~max_elements gathered pixels
        # The chunk may grow while (its size) x (its largest window) stays under the budget.
        area_run = (wh_sorted[start:, 0].cummax(0).values * wh_sorted[start:, 1].cummax(0).values).clamp(min=1)
        n_fit = int(((torch.arange(1, K - start + 1) * area_run) <= max_elements).sum())
        stop = start + max(1, n_fit)
        sel = order[start:stop]
        w_c = max(1, int(wh_sorted[start:stop, 0].max()))
        h_c = max(1, int(wh_sorted[start:stop, 1].max()))
        win = window[sel]
        ys = win[:, 1, None] + torch.arange(h_c, device=a_crops.device)  # [p, h_c] image rows
        xs = win[:, 0, None] + torch.arange(w_c, device=a_crops.device)
        valid = (ys < win[:, 3, None])[:, :, None] & (xs < win[:, 2, None])[:, None, :]
        va = _gather(a_crops, a_origins, ii[sel], ys, xs)
        vb = _gather(b_crops, b_origins, jj[sel], ys, xs)
        out[sel] = (va & vb & valid).flatten(1).sum(1)
        start = stop
    return out


def _gather(crops: Tensor, origins: Tensor, idx: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """Crops ``idx`` sampled at image rows ``ys [p, h]`` x columns ``xs [p, w]`` (False outside the crops)."""
    _, h, w = crops.shape
    cy = ys - origins[idx, 1, None]
    cx = xs - origins[idx, 0, None]
    ok = ((cy >= 0) & (cy < h))[:, :, None] & ((cx >= 0) & (cx < w))[:, None, :]
    v = crops[idx[:, None, None], cy.clamp(0, h - 1)[:, :, None], cx.clamp(0, w - 1)[:, None, :]]
    return v & ok


def crop_mask_intersection_reference(
    a_crops: Tensor, a_origins: Tensor, b_crops: Tensor, b_origins: Tensor, max_elements: int = 1 << 24
) -> Tensor:
    """Pure-PyTorch pixel counts of ``a_i & b_j``: ``Tensor[N, M]`` int64. The fallback and oracle."""
    N, M = a_crops.shape[0], b_crops.shape[0]
    out = torch.zeros((N, M), dtype=torch.long, device=a_crops.device)
    if N == 0 or M == 0:
        return out
    ii, jj, x0, y0, x1, y1 = _window_pairs(a_origins, a_crops.shape[1:], b_origins, b_crops.shape[1:])
    window = torch.stack([x0, y0, x1, y1], dim=1)
    out[ii, jj] = crop_pair_intersections(a_crops != 0, a_origins, b_crops != 0, b_origins, ii, jj, window, max_elements)
    return out


def _as_bytes(crops: Tensor) -> Tensor:
    return crops if crops.dtype in (torch.bool, torch.uint8) else crops != 0


def _foreground(crops: Tensor) -> Tensor:
    # `bool != 0` would promote to int64 first: several times slower on large masks.
    return crops if crops.dtype == torch.bool else crops != 0


def crop_mask_iou(a_crops: Tensor, a_origins: Tensor, b_crops: Tensor, b_origins: Tensor) -> Tensor:
    """IoU ``Tensor[N, M]`` (float32) of binary crop masks ``a`` (N) and ``b`` (M) of one image.

    Args:
        a_crops (Tensor[N, ha, wa]) bool/uint8; a_origins (Tensor[N, 2]) int64 ``(x0, y0)``.
        b_crops (Tensor[M, hb, wb]) bool/uint8; b_origins (Tensor[M, 2]) int64.
    Two empty masks have IoU 0.
    """
    if a_crops.dim() != 3 or b_crops.dim() != 3:
        raise ValueError(f"crop_mask_iou: crops must be [N, h, w], got {tuple(a_crops.shape)} and {tuple(b_crops.shape)}")
    ext = get_ext()
    use_ext = ext is not None and (not a_crops.is_cuda or has_cuda_ops())
    a_origins = a_origins.long()
    b_origins = b_origins.long()
    if use_ext and a_crops.shape[0] and b_crops.shape[0]:
        # The kernels read bool/uint8 bytes and count any nonzero byte as foreground.
        inter = torch.ops.maskrcnn.crop_mask_intersection(_as_bytes(a_crops), a_origins, _as_bytes(b_crops), b_origins)
    else:
        inter = crop_mask_intersection_reference(a_crops, a_origins, b_crops, b_origins)
    area_a = _foreground(a_crops).flatten(1).sum(1)
    area_b = _foreground(b_crops).flatten(1).sum(1)
    union = area_a[:, None] + area_b[None, :] - inter
    # An empty union has inter = 0, so clamping it to 1 gives IoU 0 without a select.
    return inter.float() / union.clamp(min=1).float()


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU ``Tensor[N, M]`` of dense binary masks ``a (Tensor[N, H, W])`` and ``b (Tensor[M, H, W])``.

    Works inside the masks' bounding boxes, not on a dense N x M x H x W product.
    """
    if a.dim() != 3 or b.dim() != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"mask_iou: masks must be [N, H, W] and [M, H, W] of one size, got {tuple(a.shape)} and {tuple(b.shape)}")
    ma, mb = MaskList.from_dense(_binary(a), pad=0), MaskList.from_dense(_binary(b), pad=0)
    return crop_mask_iou(ma.crops, ma.origins, mb.crops, mb.origins)


def _binary(masks: Tensor) -> Tensor:
    return masks if masks.dtype == torch.bool else masks != 0


def mask_iou_dense_reference(a: Tensor, b: Tensor) -> Tensor:
    """The obvious dense float product, for tests and benchmarks only: O(N * M * H * W)."""
    af = a.flatten(1).float()
    bf = b.flatten(1).float()
    inter = af @ bf.T
    union = af.sum(1)[:, None] + bf.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def crop_mask_nms(crops: Tensor, origins: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS by mask IoU on crop masks; returns kept indices by decreasing score."""
    if scores.shape != (crops.shape[0],):
        raise ValueError(f"mask_nms: scores must be [{crops.shape[0]}], got {tuple(scores.shape)}")
    if crops.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=crops.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    c, o = crops[order], origins[order]
    iou = crop_mask_iou(c, o, c, o)
    return order[greedy_suppress(iou, iou_threshold)]


def mask_nms(masks: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS by mask IoU on dense masks ``Tensor[N, H, W]``; kept indices by decreasing score."""
    m = MaskList.from_dense(_binary(masks), pad=0)
    return crop_mask_nms(m.crops, m.origins, scores, iou_threshold)
