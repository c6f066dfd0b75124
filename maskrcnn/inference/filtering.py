"""Post-processing of raw (soft) predictions into a Kaggle-valid set of binary masks.

``filter_predictions(instances, test_cfg)``, in this order:

1. The image's class (Sartorius: its cell type) is the most frequent label among the instances
   that pass their own class's score threshold (all instances when none pass); ties go to the
   class with the larger summed score. ``test_cfg.image_class``: ``relabel`` (default) gives every
   instance that class, so a cell whose type the classifier got wrong is kept and judged by the
   image's thresholds; ``filter`` drops the instances of other classes; ``none`` skips this step.
2. Optional mask rescoring (``mask_rescore``, soft masks only): each score becomes
   score x the mean mask probability inside the mask binarised at its class's mask threshold
   (0 for an empty mask), and the instances are ranked again by it, so the steps below (score
   threshold, overlap priority) see the rescored score. The image's class (step 1) is chosen on
   the detection scores. Sartorius 2021 1st place rescored this way (+0.01 mAP there).
   Then the per-class score threshold, then the per-class mask threshold (``crop >= t``). Every
   threshold field of ``TestConfig`` holds one value per class, or one value for all classes.
3. Optional hole filling (``fill_holes``): background pixels of a crop that cannot reach the crop's
   border through 4-connected background are set, by iterative dilation from the border.
4. Overlap removal (``remove_overlaps``): each pixel goes to the best-scoring mask covering it
   (masks are painted into one int32 label image of the image's size by a scatter with priority =
   score rank, ``amin``); a mask that keeps less than ``overlap_min_keep`` of its pixels, or fewer
   than its class's ``min_area`` pixels, is dropped, and the survivors are painted again so they
   get back the pixels the dropped masks held. Rounds repeat until nothing is dropped (survivors
   only gain pixels, so each round keeps what the last one accepted).
   Without overlap removal, only ``min_area`` applies.
5. One piece per object (``one_piece``, default on): each mask keeps only its largest 4-connected
   piece (``maskrcnn.ops.pieces``); the other pieces (islands, mostly a few pixels that overlap
   removal cut off) become background, and a mask left below its ``min_area`` is dropped. So every
   object of every output (CSV rows, COCO, label images, polygons) is one connected piece.
6. Masks are re-cropped to their tight boxes; ``boxes`` become those tight boxes.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from maskrcnn.config import IMAGE_CLASS_MODES, TestConfig
from maskrcnn.inference.per_class import per_class
from maskrcnn.ops.pieces import largest_piece
from maskrcnn.structures import Instances, MaskList


def image_class(instances: Instances, score_thresh: Sequence[float]) -> int:
    """The image's class (step 1 of the module doc): the most frequent label among the instances
    that pass their own class's score threshold (all when none pass); ties: the larger summed score.
    -1 for no instances. Validation, tuning and submissions all use this rule."""
    if len(instances) == 0:
        return -1
    order = torch.sort(instances.scores, descending=True, stable=True).indices  # fixes the summation order
    labels, scores = instances.labels[order], instances.scores[order]
    passing = scores >= per_class(score_thresh, labels, "score_thresh").to(scores.dtype)
    if bool(passing.any()):
        labels, scores = labels[passing], scores[passing]
    nc = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=nc)
    ssum = torch.bincount(labels, weights=scores.double(), minlength=nc)
    ssum = torch.where(counts == counts.max(), ssum, torch.full_like(ssum, -1.0))
    return int(ssum.argmax())


def mask_confidence(crops: Tensor, thresh: Tensor) -> Tensor:
    """Mean probability inside each binarised soft mask: ``Tensor[N]`` float32.

    Args:
        crops (Tensor[N, h, w]): soft mask crops (probabilities in [0, 1]).
        thresh (Tensor[N]): each mask's threshold; the mask is ``crop >= thresh``.
    Returns:
        ``sum(crop[crop >= t]) / count(crop >= t)``; 0 for a mask with no pixel at or above ``t``.
    """
    n = crops.shape[0]
    flat = crops.reshape(n, -1).float()
    inside = flat >= thresh.to(flat.dtype)[:, None]
    total = torch.where(inside, flat, torch.zeros((), dtype=flat.dtype, device=flat.device)).sum(1)
    count = inside.sum(1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def rescore(scores: Tensor, masks: MaskList, thresh: Tensor) -> Tensor:
    """Mask rescoring (step 2 of the module doc): ``scores * mask_confidence(masks.crops, thresh)``.

    Args:
        scores (Tensor[N]): detection scores.
        masks: soft masks (N crops).
        thresh (Tensor[N]): each instance's mask threshold.
    Raises ValueError for binary masks (they carry no confidence to combine).
    """
    if not masks.is_soft:
        raise ValueError("test.mask_rescore needs soft masks (raw predictions), got binary masks")
    if len(masks) == 0:
        return scores
    return scores * mask_confidence(masks.crops, thresh).to(scores.dtype)


def fill_holes(crops: Tensor, check_every: int = 8) -> Tensor:
    """Fill holes of binary crop masks ``Tensor[N, h, w]`` (bool): background not 4-connected to the border.

    The area outside the crop counts as background connected to the border. Dilation rounds
    run on all crops at once until the reachable background stops growing.
    """
    n, h, w = crops.shape
    if n == 0:
        return crops
    fg = torch.zeros((n, h + 2, w + 2), dtype=torch.bool, device=crops.device)
    fg[:, 1:-1, 1:-1] = crops
    bg = ~fg
    reach = torch.zeros_like(fg)
    reach[:, 0, :] = True
    reach[:, -1, :] = True
    reach[:, :, 0] = True
    reach[:, :, -1] = True
    last = -1
    for it in range(h * w + 1):  # dilation rounds (geodesic distance), each over all crops
        grown = reach.clone()
        grown[:, 1:, :] |= reach[:, :-1, :]
        grown[:, :-1, :] |= reach[:, 1:, :]
        grown[:, :, 1:] |= reach[:, :, :-1]
        grown[:, :, :-1] |= reach[:, :, 1:]
        reach = grown & bg
        if it % check_every == 0:
            cur = int(reach.sum())
            if cur == last:
                break
            last = cur
    return (fg | (bg & ~reach))[:, 1:-1, 1:-1]


def remove_overlaps(masks: MaskList, min_keep: float, min_area: Tensor, enabled: bool = True):
    """Give each pixel to the best-ranked mask covering it; drop masks left too small (step 4 of the
    module doc; threshold tuning resolves each mask threshold's overlaps with it too).

    Args:
        masks: binary masks, ranked by position (0 = best score).
        min_keep: a mask must keep at least this fraction of its pixels.
        min_area (Tensor[N]): a mask must keep at least this many pixels (and at least 1).
        enabled: False skips the ownership step (only ``min_area`` applies).
    Returns:
        (MaskList of the same layout with only owned pixels set, Tensor[N] bool of surviving masks).
    """
    n = len(masks)
    H, W = masks.image_size
    dev = masks.device
    n_idx, pos, flat = masks.foreground_pixels()
    rank = n_idx.int()
    area = torch.bincount(n_idx, minlength=n)
    need = min_area.to(area.device).long().clamp(min=1)
    alive = torch.ones(n, dtype=torch.bool, device=dev)
    won = torch.ones(n_idx.shape[0], dtype=torch.bool, device=dev)
    while True:  # rounds drop at least one mask each; usually 1-3 rounds
        if enabled:
            live_px = alive.index_select(0, n_idx)
            # Pixels of dropped masks go to a spare slot past the image.
            target = torch.where(live_px, flat, torch.full_like(flat, H * W))
            owner = torch.full((H * W + 1,), n, dtype=torch.int32, device=dev)
            owner.scatter_reduce_(0, target, rank, reduce="amin")
            won = live_px & (owner.index_select(0, flat) == rank)
        kept = torch.bincount(n_idx, weights=won.to(torch.float32), minlength=n).long() if won.numel() else \
            torch.zeros(n, dtype=torch.long, device=dev)
        ok = alive & (kept >= need) & (kept.double() >= min_keep * area.double())
        if torch.equal(ok, alive):
            break
        alive = ok
        if not enabled:
            break
    won = won & alive.index_select(0, n_idx)
    crops = torch.zeros(masks.crops.numel(), dtype=torch.bool, device=dev)
    crops.index_fill_(0, pos[won], True)
    return MaskList(crops.view(masks.crops.shape), masks.origins, masks.image_size), alive


def keep_largest_pieces(masks: MaskList, alive: Tensor, min_area: Tensor):
    """Step 5 of the module doc: each kept binary mask reduced to its largest 4-connected piece.

    Only the kept masks are labelled, each cut to its tight box first (raw predictions hold many
    more masks, in crops padded to the largest: labelling those would cost ~10x more).

    Args:
        masks: binary masks (N crops); those not ``alive`` are ignored (and come back empty).
        alive (Tensor[N] bool): the masks still kept.
        min_area (Tensor[N]): a mask whose largest piece has fewer pixels (and at least 1) is dropped.
    Returns:
        (MaskList of the same layout, Tensor[N] bool: ``alive`` and large enough).
    """
    n, h, w = masks.crops.shape
    out = torch.zeros(masks.crops.numel(), dtype=torch.bool, device=masks.device)
    idx = torch.nonzero(alive, as_tuple=True)[0]
    if idx.numel():
        sub = masks[idx].compact(pad=0)
        k, y, x = torch.nonzero(largest_piece(sub.crops), as_tuple=True)
        shift = sub.origins - masks.origins.index_select(0, idx)  # (dx, dy) of each tight box in its crop
        pos = idx.index_select(0, k) * (h * w) + (y + shift[k, 1]) * w + (x + shift[k, 0])
        out.index_fill_(0, pos, True)
    out = out.view(n, h, w)
    area = out.flatten(1).sum(1)
    alive = alive & (area >= min_area.to(area.device).long().clamp(min=1))
    return MaskList(out, masks.origins, masks.image_size), alive


def filter_predictions(instances: Instances, test_cfg: TestConfig) -> Instances:
    """Raw predictions (soft or binary masks) -> final binary, non-overlapping masks for one image.

    Args:
        instances: with ``scores``, ``labels`` and ``masks`` (soft float or bool ``MaskList``).
        test_cfg: ``score_thresh``, ``mask_thresh``, ``min_area`` (one per class or one for all),
            ``image_class``, ``mask_rescore``, ``fill_holes``, ``remove_overlaps``, ``overlap_min_keep``,
            ``one_piece``.
    Returns:
        Instances with bool masks cropped to their tight boxes, ``boxes`` = those tight boxes,
        sorted by decreasing score (the rescored score with ``mask_rescore``). See the module
        docstring for the order of the steps.
    """
    if instances.scores is None or instances.masks is None:
        raise ValueError("filter_predictions needs instances with scores and masks")
    if test_cfg.image_class not in IMAGE_CLASS_MODES:
        raise ValueError(f"test.image_class must be one of {IMAGE_CLASS_MODES}, got {test_cfg.image_class!r}")
    size = instances.image_size
    dev = instances.boxes.device
    if len(instances) == 0:
        return Instances.empty(size, device=dev, with_scores=True, with_masks=True)
    order = torch.sort(instances.scores, descending=True, stable=True).indices
    inst = instances[order]
    labels = inst.labels
    scores = inst.scores
    if test_cfg.image_class != "none":
        c = image_class(inst, test_cfg.score_thresh)
        if test_cfg.image_class == "relabel":
            labels = torch.full_like(labels, c)
        else:
            keep = labels == c
            inst, labels, scores = inst[keep], labels[keep], scores[keep]
    if test_cfg.mask_rescore and len(inst):
        scores = rescore(scores, inst.masks, per_class(test_cfg.mask_thresh, labels, "mask_thresh"))
        order = torch.sort(scores, descending=True, stable=True).indices
        inst, labels, scores = inst[order], labels[order], scores[order]
    keep = scores >= per_class(test_cfg.score_thresh, labels, "score_thresh").to(scores.dtype)
    inst, labels, scores = inst[keep], labels[keep], scores[keep]
    if len(inst) == 0:
        return Instances.empty(size, device=dev, with_scores=True, with_masks=True)

    m = inst.masks
    if m.is_soft:
        thr = per_class(test_cfg.mask_thresh, labels, "mask_thresh").to(m.crops.dtype)
        crops = m.crops >= thr[:, None, None]
    else:
        crops = m.crops
    if test_cfg.fill_holes:
        crops = fill_holes(crops)
    binary = MaskList(crops, m.origins, size)
    min_area = per_class(test_cfg.min_area, labels, "min_area", dtype=torch.long)
    binary, alive = remove_overlaps(binary, float(test_cfg.overlap_min_keep), min_area,
                                    enabled=bool(test_cfg.remove_overlaps))
    if test_cfg.one_piece:
        binary, alive = keep_largest_pieces(binary, alive, min_area)
    idx = torch.nonzero(alive, as_tuple=True)[0]
    if idx.numel() == 0:
        return Instances.empty(size, device=dev, with_scores=True, with_masks=True)
    final = binary[idx].compact(pad=0)
    return Instances(size, final.tight_boxes().to(inst.boxes.dtype), labels[idx], scores[idx], final)
