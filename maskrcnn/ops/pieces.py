"""Connected pieces of binary mask crops, all crops at once, in torch (CPU or GPU).

A *piece* is a 4-connected set of foreground pixels (pixels that share an edge; pixels touching
only at a corner are separate pieces, as in ``scipy.ndimage.label``'s default and as a pixel-edge
outline sees them). Post-processing keeps each mask's largest piece, so every object of a label
image, a CSV row or a polygon is one piece.

Labelling works on horizontal runs of foreground pixels (found with one cumulative sum), joined
where a pixel of one has a pixel of another right below it: min-label propagation over those
pairs with pointer jumping. Each run starts with its own number; each round every run takes the
smallest label among itself and the runs it touches, then each label ``l`` is replaced by the
label run ``l`` holds now (a label is always a run of the same piece, so the jump is safe). The
rounds grow with the logarithm of a piece's length in runs for most shapes (a spiral needs more;
the loop runs until nothing changes), and each costs a few gathers over the runs and pairs.
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
    out = torch.zeros(n * h * w, dtype=torch.long, device=crops.device)
    pos = torch.nonzero(fg.reshape(-1), as_tuple=True)[0]  # foreground pixels, row-major
    if pos.numel() == 0:
        return out.view(n, h, w)
    # Horizontal runs are the units: numbered in row-major order, so the smallest run number of a
    # piece is the run holding its first pixel.
    starts = fg.clone()
    starts[:, :, 1:] &= ~fg[:, :, :-1]
    is_start = starts.reshape(-1).index_select(0, pos)
    run_of = torch.cumsum(is_start.long(), 0) - 1  # run number of each foreground pixel
    run_grid = torch.zeros(n * h * w, dtype=torch.long, device=crops.device)
    run_grid[pos] = run_of
    # Runs that touch vertically: a foreground pixel with a foreground pixel below it.
    k, y, x = torch.nonzero(fg[:, :-1, :] & fg[:, 1:, :], as_tuple=True)
    upper = (k * h + y) * w + x
    a, b = run_grid.index_select(0, upper), run_grid.index_select(0, upper + w)
    lab = torch.arange(int(run_of[-1]) + 1, device=crops.device)
    while True:  # min-label propagation over the touching runs, with pointer jumping
        new = lab.clone()
        new.scatter_reduce_(0, a, lab.index_select(0, b), reduce="amin")
        new.scatter_reduce_(0, b, lab.index_select(0, a), reduce="amin")
        new = torch.minimum(new, new.index_select(0, new))
        if torch.equal(new, lab):
            break
        lab = new
    first_pixel = pos[is_start]  # flat index of each run's first pixel
    out[pos] = first_pixel.index_select(0, lab.index_select(0, run_of)) + 1
    return out.view(n, h, w)


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
