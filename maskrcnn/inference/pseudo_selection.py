"""Pseudo-labels from merged predictions: confident cells and ignore regions.

``pseudo_labels(merged, view_counts, test_cfg, keep, ignore, agree)`` turns a teacher's merged
soft predictions of one image (``Predictor.predict_views`` + ``merge_instances(...,
return_view_counts=True)``: TTA views and ensemble members are views alike) into training ground
truth:

1. The image's class rule (``test.image_class``) is applied once to all instances.
2. **Cells**: instances with fused score ``>= keep`` that were seen in at least ``agree`` views.
   The fused score is already the mean over all views (a view that missed the object counts 0),
   so ``agree`` adds a hard vote on top of the soft one. They go through ``filter_predictions`` (mask
   threshold, hole filling, overlap removal, min area), so they are what ``predict.py`` would
   submit at score threshold ``keep``.
3. **Ignore regions** (label ``IGNORE_LABEL``): the other instances with score ``>= ignore``,
   binarised (``filter_predictions`` without overlap removal), minus those lying mostly (more than
   ``max_covered`` of their pixels) on the cells: those are duplicates of a cell, not an object
   the teacher was unsure of. The trainer takes no loss from anchors and proposals inside them.
4. Everything below ``ignore`` is background, as in any label.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import torch
from torch import Tensor

from maskrcnn.config import TestConfig
from maskrcnn.inference.filtering import image_class, filter_predictions
from maskrcnn.structures import IGNORE_LABEL, Instances, MaskList


def check_thresholds(keep: float, ignore: float, agree: int, num_views: int) -> None:
    """ValueError naming the bad value unless ``0 <= ignore <= keep <= 1`` and ``1 <= agree <= num_views``."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"the keep threshold must be in [0, 1], got {keep}")
    if not 0.0 <= ignore <= keep:
        raise ValueError(f"the ignore threshold must be in [0, keep={keep}], got {ignore}")
    if not 1 <= agree <= num_views:
        raise ValueError(f"agree={agree} must be between 1 and the number of views ({num_views})")


def _covered_fraction(regions: MaskList, cells: MaskList) -> Tensor:
    """Fraction ``Tensor[R]`` of each region's pixels that some cell covers (bool masks, one image)."""
    H, W = regions.image_size
    dev = regions.crops.device
    union = torch.zeros((H, W), dtype=torch.bool, device=dev)
    if len(cells):
        n, y, x = torch.nonzero(cells.crops, as_tuple=True)
        y, x = y + cells.origins[n, 1], x + cells.origins[n, 0]
        ok = (y >= 0) & (y < H) & (x >= 0) & (x < W)
        union[y[ok], x[ok]] = True
    n, y, x = torch.nonzero(regions.crops, as_tuple=True)
    y, x = y + regions.origins[n, 1], x + regions.origins[n, 0]
    ok = (y >= 0) & (y < H) & (x >= 0) & (x < W)
    n, y, x = n[ok], y[ok], x[ok]
    total = torch.bincount(n, minlength=len(regions)).float()
    covered = torch.bincount(n, weights=union[y, x].float(), minlength=len(regions))
    return covered / total.clamp(min=1)


def pseudo_labels(merged: Instances, view_counts: Tensor, test_cfg: TestConfig, keep: float, ignore: float,
                  agree: int = 1, max_covered: float = 0.5) -> Tuple[Instances, Dict[str, int]]:
    """Ground truth for one image from the teacher's merged predictions (see the module docstring).

    Args:
        merged: soft predictions with ``scores``, ``labels`` and ``masks``, in the image's pixels.
        view_counts (Tensor[N] int64): in how many views each instance was seen.
        test_cfg: the post-processing settings (mask threshold, min area, hole filling, overlaps).
        keep, ignore: score thresholds, ``ignore <= keep``.
        agree: views an instance needs to be a cell.
        max_covered: an uncertain instance with more than this fraction of its pixels on cells is dropped.
    Returns:
        ``(instances, counts)``: bool masks, cells first (their class labels) then ignore regions
        (``IGNORE_LABEL``); ``counts`` = ``{"cells": .., "ignored": .., "background": ..}`` (the
        last: instances below ``ignore`` or too small, dropped).
    """
    if view_counts.shape != (len(merged),):
        raise ValueError(f"view_counts must be [{len(merged)}], got {tuple(view_counts.shape)}")
    size, dev = merged.image_size, merged.boxes.device
    inst = merged
    if test_cfg.image_class != "none" and len(inst):
        c = image_class(inst, test_cfg.score_thresh)
        if test_cfg.image_class == "relabel":
            inst = inst.replace(labels=torch.full_like(inst.labels, c))
        else:
            sel = inst.labels == c
            inst, view_counts = inst[torch.nonzero(sel).squeeze(1)], view_counts[sel]
    scores = inst.scores.float()
    confident = (scores >= keep) & (view_counts.to(dev) >= agree)
    uncertain = (scores >= ignore) & ~confident
    cfg = dataclasses.replace(test_cfg, image_class="none")
    cells = filter_predictions(inst[torch.nonzero(confident).squeeze(1)], dataclasses.replace(cfg, score_thresh=(keep,)))
    regions = filter_predictions(inst[torch.nonzero(uncertain).squeeze(1)],
                          dataclasses.replace(cfg, score_thresh=(ignore,), remove_overlaps=False))
    if len(regions):
        free = _covered_fraction(regions.masks, cells.masks) <= max_covered
        regions = regions[torch.nonzero(free).squeeze(1)]
    regions = regions.replace(labels=torch.full_like(regions.labels, IGNORE_LABEL))
    out = Instances.cat([cells, regions]) if len(regions) else cells
    out = Instances(size, out.boxes, out.labels, out.scores, out.masks)
    counts = {"cells": len(cells), "ignored": len(regions), "background": len(merged) - len(cells) - len(regions)}
    return out, counts
