"""Connected pieces of binary mask crops, all crops at once, in torch (CPU or GPU).

A *piece* is a 4-connected set of foreground pixels (pixels that share an edge; pixels touching
only at a corner are separate pieces, as in ``scipy.ndimage.label``'s default and as a pixel-edge
outline sees them). Post-processing keeps each mask's largest piece, so every object of a label
image, a CSV row or a polygon is one piece.

Labelling is min-label propagation with pointer jumping: every foreground pixel starts with its
own flat index, then each round takes the minimum over its 4 neighbours (same crop, foreground
only) and replaces each label ``l`` by the label pixel ``l`` holds now. A label is always the index
of a pixel of the same piece, so the jump is safe, and it makes the number of rounds grow with
the logarithm of the piece's geodesic length rather than with the length itself for most shapes
(a spiral still needs more; the loop runs until nothing changes).
"""
from __future__ import annotations

import torch
from torch import Tensor


def label_pieces(crops: Tensor) -> Tensor:
    """Label the 4-connected pieces of each crop.

    Args:
        crops (Tensor[N, h, w]): bool masks.
    Returns:
        Tensor[N, h, w] int64: 0 for background; a piece's pixels all hold ``1 + the smallest flat
        index (into crops.flatten()) of its pixels``, so labels are unique across crops and a
        crop's pieces are ordered by their first pixel in row-major order.
    """
    n, h, w = crops.shape
    fg = crops.bool()
    total = n * h * w
    if total == 0:
        return torch.zeros(crops.shape, dtype=torch.long, device=crops.device)
    big = total + 1  # larger than any label: background never wins a minimum
    idx = torch.arange(1, total + 1, dtype=torch.long, device=crops.device).view(n, h, w)
    lab = torch.where(fg, idx, torch.full_like(idx, big))
    bg_fill = torch.full_like(lab, big)
    while True:
        new = lab.clone()
        torch.minimum(new[:, 1:, :], lab[:, :-1, :], out=new[:, 1:, :])
        torch.minimum(new[:, :-1, :], lab[:, 1:, :], out=new[:, :-1, :])
        torch.minimum(new[:, :, 1:], lab[:, :, :-1], out=new[:, :, 1:])
        torch.minimum(new[:, :, :-1], lab[:, :, 1:], out=new[:, :, :-1])
        new = torch.where(fg, new, bg_fill)
        flat = new.view(-1)
        jumped = flat.index_select(0, (new.view(-1) - 1).clamp(max=total - 1)).view(n, h, w)
        new = torch.where(fg, torch.minimum(new, jumped), bg_fill)
        if torch.equal(new, lab):
            break
        lab = new
    return torch.where(fg, lab, torch.zeros_like(lab))


def largest_piece(crops: Tensor) -> Tensor:
    """Each crop with only its largest 4-connected piece (ties: the piece whose first pixel in
    row-major order comes first).

    Args:
        crops (Tensor[N, h, w]): bool masks.
    Returns:
        Tensor[N, h, w] bool, a subset of ``crops``; an empty crop stays empty.
    """
    n, h, w = crops.shape
    if crops.numel() == 0:
        return crops.bool().clone()
    lab = label_pieces(crops).view(-1)
    size = torch.bincount(lab, minlength=n * h * w + 1)
    size[0] = 0
    # Per crop, the label maximising (size, -label): one scatter over the labels that exist.
    labels = torch.nonzero(size, as_tuple=True)[0]
    crop_of = torch.div(labels - 1, h * w, rounding_mode="floor")
    key = size.index_select(0, labels) * (n * h * w + 2) + (n * h * w + 1 - labels)
    best_key = torch.zeros(n, dtype=torch.long, device=crops.device)
    best_key.scatter_reduce_(0, crop_of, key, reduce="amax")
    best_label = (n * h * w + 1) - best_key % (n * h * w + 2)
    pix_crop = torch.arange(n, device=crops.device).repeat_interleave(h * w)
    keep = (lab > 0) & (lab == best_label.index_select(0, pix_crop))
    return keep.view(n, h, w)


def count_pieces(crops: Tensor) -> Tensor:
    """Number of 4-connected pieces of each crop: ``Tensor[N]`` int64."""
    n = crops.shape[0]
    lab = label_pieces(crops).view(n, -1)
    if lab.numel() == 0:
        return torch.zeros(n, dtype=torch.long, device=crops.device)
    # A piece is counted at its first pixel, the one whose flat index + 1 equals the label.
    idx = torch.arange(1, lab.numel() + 1, device=crops.device).view(lab.shape)
    return (lab == idx).sum(1)
