"""The Kaggle cell-segmentation metric (Sartorius 2021, Data Science Bowl 2018).

For one image and each IoU threshold ``t`` in 0.50, 0.55, ..., 0.95 (docs/conventions.md)::

    precision(t) = TP(t) / (TP(t) + FP(t) + FN(t)) = TP(t) / (P + G - TP(t))

with ``P`` predicted and ``G`` ground-truth objects. The image's score is the mean over the ten
thresholds; a dataset's score is the mean of its images' scores (not pooled counts).

Decisions this module makes, and why:

- **Strictly greater.** A pair matches at ``t`` when ``IoU > t``. The comparison is done on exact
  pixel counts (``100 * inter > t_pct * union``), so a pair with IoU exactly 0.5 or 0.75 does not
  match at that threshold, whatever float rounding would say.
- **One-to-one.** Each prediction and each ground-truth object is used at most once. Candidate
  pairs are those with IoU > 0.5; they are matched greedily by decreasing IoU (ties: lower
  prediction index, then lower ground-truth index). Because edges above ``t`` come first in that
  order, the matching at threshold ``t`` is the matching at 0.5 restricted to pairs with IoU > t,
  so it is computed once per image. When the predictions do not overlap each other (a valid
  submission) or the ground truth does not, every object has at most one candidate on the other
  side that competes for it, and this matching is the only one of maximal size: the formulation
  of the public DSB2018/Sartorius notebooks. **Overlapping ground truth** (Sartorius has it): a
  prediction with IoU > t against two overlapping ground-truth cells counts once, as a TP with the
  better of the two; the other cell is a FN unless another prediction matches it.
- **Empty image.** Predictions without ground truth score 0; ground truth without predictions
  scores 0; **no predictions and no ground truth scores 1** (nothing to find, nothing claimed).
- **Empty masks.** A prediction whose mask has no pixel still counts as a prediction (a FP);
  an empty ground-truth mask counts as an object that can never be matched (a FN).
- **Soft masks** are thresholded (``crop >= mask_threshold``, ``MaskList.threshold``) first.

Speed: masks stay crops. IoU > 0.5 needs ``inter > max(area_p, area_g) / 2`` and ``inter`` is
bounded by the area of the two tight boxes' intersection, so an N x M box computation leaves
about one candidate pair per object; only those pairs have their pixels counted, inside the box
intersection (``maskrcnn.ops.crop_pair_intersections``). That is ~20x less work than
``crop_mask_iou`` over all pairs whose crop windows touch, which the slow reference test in
tests/evaluation checks against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from maskrcnn.evaluation.run_masks import RunMasks, run_pair_intersections
from maskrcnn.ops import crop_pair_intersections
from maskrcnn.structures import Instances, MaskList

# Thresholds in percent, so that "IoU > t" can be decided on integers.
THRESHOLDS_PCT = np.arange(50, 100, 5, dtype=np.int64)
THRESHOLDS = THRESHOLDS_PCT / 100.0


@dataclass
class Candidates:
    """Prediction / ground-truth pairs with IoU > 0.5 (the only ones that can ever match).

    Attributes:
        pred_idx (int64[E]), gt_idx (int64[E]): indices into the prediction and GT lists.
        inter (int64[E]), union (int64[E]): exact pixel counts of each pair.
        num_pred, num_gt (int): sizes of the two lists.
    """

    pred_idx: np.ndarray
    gt_idx: np.ndarray
    inter: np.ndarray
    union: np.ndarray
    num_pred: int
    num_gt: int


Masks = Union[MaskList, RunMasks]


def as_masklist(x: Union[MaskList, RunMasks, Instances], what: str = "masks") -> Masks:
    """The masks of ``x``: a ``MaskList`` or ``RunMasks`` as it is, an ``Instances``' masks."""
    if isinstance(x, (MaskList, RunMasks)):
        return x
    if isinstance(x, Instances):
        if x.masks is None:
            raise ValueError(f"{what}: Instances without masks cannot be scored by the mask metric")
        return x.masks
    raise TypeError(f"{what}: expected MaskList, RunMasks or Instances, got {type(x).__name__}")


def candidate_pairs(pred: Masks, gt: Masks, mask_threshold: float = 0.5) -> Candidates:
    """All pairs with IoU > 0.5 between ``pred`` (N masks) and ``gt`` (M masks) of one image.

    IoU > 0.5 needs ``inter > max(area_p, area_g) / 2``, and ``inter`` is at most the area of the
    intersection of the two tight boxes; pairs are kept by that bound (an N x M box computation)
    and only those get their pixels counted, inside the box intersection. Run lists
    (``RunMasks``, what scoring CSV files uses) are counted from their runs, crops
    (``MaskList``) inside the box intersection; the pairs and counts are the same.
    """
    if pred.image_size != gt.image_size:
        raise ValueError(f"prediction masks are for an image of size {pred.image_size}, ground truth for {gt.image_size}")
    if isinstance(pred, RunMasks) or isinstance(gt, RunMasks):
        as_runs = lambda m, t: m if isinstance(m, RunMasks) else RunMasks.from_masklist(m.threshold(t))
        return _run_candidate_pairs(as_runs(pred, mask_threshold), as_runs(gt, 0.5))
    pred = pred.threshold(mask_threshold)
    gt = gt.threshold(0.5)
    P, G = len(pred), len(gt)
    empty = np.zeros(0, dtype=np.int64)
    if P == 0 or G == 0:
        return Candidates(empty, empty, empty, empty, P, G)
    if gt.device != pred.device:
        gt = gt.to(pred.device)
    pa = pred.crops.flatten(1).sum(1)
    ga = gt.crops.flatten(1).sum(1)
    pbox = pred.tight_boxes().int()
    gbox = gt.tight_boxes().int()
    # Overlap in x first on the full N x M grid (int32), then y only for the pairs that remain.
    ox = torch.minimum(pbox[:, None, 2], gbox[None, :, 2]) - torch.maximum(pbox[:, None, 0], gbox[None, :, 0])
    ii, jj = torch.nonzero(ox > 0, as_tuple=True)
    x0 = torch.maximum(pbox[ii, 0], gbox[jj, 0]).long()
    x1 = torch.minimum(pbox[ii, 2], gbox[jj, 2]).long()
    y0 = torch.maximum(pbox[ii, 1], gbox[jj, 1]).long()
    y1 = torch.minimum(pbox[ii, 3], gbox[jj, 3]).long()
    box_inter = (x1 - x0) * (y1 - y0).clamp(min=0)
    possible = 2 * box_inter > torch.maximum(pa[ii], ga[jj])
    ii, jj, x0, y0, x1, y1 = ii[possible], jj[possible], x0[possible], y0[possible], x1[possible], y1[possible]
    if ii.numel() == 0:
        return Candidates(empty, empty, empty, empty, P, G)
    window = torch.stack([x0, y0, x1, y1], dim=1)
    inter = crop_pair_intersections(pred.crops, pred.origins, gt.crops, gt.origins, ii, jj, window)
    union = pa[ii] + ga[jj] - inter
    keep = 2 * inter > union
    to_np = lambda t: t[keep].cpu().numpy().astype(np.int64)
    return Candidates(to_np(ii), to_np(jj), to_np(inter), to_np(union), P, G)


def _run_candidate_pairs(pred: RunMasks, gt: RunMasks, max_elements: int = 1 << 20) -> Candidates:
    """``candidate_pairs`` of run lists: the same box bound, pixels counted from the runs.

    The N x M overlap test in x runs in blocks of predictions (at most ~``max_elements`` int32
    pairs each), the rest only on the pairs that overlap in x, so memory stays bounded too."""
    P, G = len(pred), len(gt)
    empty = np.zeros(0, dtype=np.int64)
    if P == 0 or G == 0:
        return Candidates(empty, empty, empty, empty, P, G)
    pa, ga = pred.areas(), gt.areas()
    pb, gb = pred.tight_boxes(), gt.tight_boxes()
    px0, px1, gx0, gx1 = (v.astype(np.int32) for v in (pb[:, 0], pb[:, 2], gb[:, 0], gb[:, 2]))  # sides <= 2^20
    found_i, found_j = [], []
    step = max(1, max_elements // G)
    for s in range(0, P, step):  # blocks of predictions, each vectorised over all GT
        ox = np.minimum(px1[s:s + step, None], gx1[None, :]) - np.maximum(px0[s:s + step, None], gx0[None, :])
        ii, jj = np.nonzero(ox > 0)
        found_i.append(ii + s)
        found_j.append(jj)
    ii, jj = np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64)
    ox = np.minimum(pb[ii, 2], gb[jj, 2]) - np.maximum(pb[ii, 0], gb[jj, 0])
    oy = np.minimum(pb[ii, 3], gb[jj, 3]) - np.maximum(pb[ii, 1], gb[jj, 1])
    possible = 2 * ox * oy.clip(min=0) > np.maximum(pa[ii], ga[jj])
    ii, jj = ii[possible], jj[possible]
    if ii.size == 0:
        return Candidates(empty, empty, empty, empty, P, G)
    inter = run_pair_intersections(pred, gt, ii, jj)
    union = pa[ii] + ga[jj] - inter
    keep = 2 * inter > union  # IoU > 0.5, strictly, on exact pixel counts of the runs
    return Candidates(ii[keep], jj[keep], inter[keep], union[keep], P, G)


def greedy_match(pred_idx: np.ndarray, gt_idx: np.ndarray, inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """One-to-one matching of candidate pairs, greedily by decreasing IoU. Returns bool[E] (selected).

    Equal to the sequential greedy (take the best remaining pair, drop its two ends, repeat) but
    done in vectorised rounds: every pair that is the best for both its prediction and its GT
    object (ties: lower GT index for a prediction, lower prediction index for a GT object) is
    taken at once. Node ids may come from several images (offset them): images do not interact.
    """
    E = pred_idx.shape[0]
    selected = np.zeros(E, dtype=bool)
    if E == 0:
        return selected
    if np.unique(pred_idx).size == E and np.unique(gt_idx).size == E:
        selected[:] = True  # no object has two candidates: nothing to decide
        return selected
    iou = inter / np.maximum(union, 1)
    alive = np.ones(E, dtype=bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        p, g, v = pred_idx[idx], gt_idx[idx], iou[idx]
        o = np.lexsort((g, -v, p))
        first_p = np.ones(o.size, dtype=bool)
        first_p[1:] = p[o][1:] != p[o][:-1]
        best_for_p = np.zeros(idx.size, dtype=bool)
        best_for_p[o[first_p]] = True
        o = np.lexsort((p, -v, g))
        first_g = np.ones(o.size, dtype=bool)
        first_g[1:] = g[o][1:] != g[o][:-1]
        best_for_g = np.zeros(idx.size, dtype=bool)
        best_for_g[o[first_g]] = True
        chosen = idx[best_for_p & best_for_g]  # never empty: the global best pair is mutual
        selected[chosen] = True
        alive &= ~(np.isin(pred_idx, pred_idx[chosen]) | np.isin(gt_idx, gt_idx[chosen]))
    return selected


def precisions_from_counts(tp: np.ndarray, num_pred, num_gt) -> np.ndarray:
    """precision(t) = TP / (P + G - TP), broadcasting; 1 where P = G = 0 (see module doc)."""
    tp = np.asarray(tp)
    denom = np.asarray(num_pred)[..., None] + np.asarray(num_gt)[..., None] - tp
    return np.where(denom > 0, tp / np.maximum(denom, 1), 1.0)


def precisions_from_pairs(pred_idx: np.ndarray, gt_idx: np.ndarray, inter: np.ndarray, union: np.ndarray,
                          num_pred, num_gt, pair_image: Optional[np.ndarray] = None) -> np.ndarray:
    """float64[I, 10] precisions of I images from their candidate pairs (int64[E] each).

    The pairs are matched one-to-one (``greedy_match``), TP(t) counts the matched pairs with
    IoU > t per image, and ``precisions_from_counts`` gives the precisions. ``num_pred``,
    ``num_gt`` (int[I]): objects per image; ``pair_image`` (int64[E]): the image of each pair
    (default: all in image 0); node ids of different images must differ (offset them).
    """
    num_pred, num_gt = np.atleast_1d(num_pred), np.atleast_1d(num_gt)
    sel = greedy_match(pred_idx, gt_idx, inter, union)
    image = np.zeros(int(sel.sum()), dtype=np.int64) if pair_image is None else pair_image[sel]
    passes = 100 * inter[sel][None, :] > THRESHOLDS_PCT[:, None] * union[sel][None, :]  # [10, S]
    tp = np.stack([np.bincount(image, weights=passes[t], minlength=num_pred.size)
                   for t in range(len(THRESHOLDS_PCT))], axis=1)  # [I, 10]
    return precisions_from_counts(tp, num_pred, num_gt)


def image_precisions_from_candidates(c: Candidates) -> np.ndarray:
    """float64[10] precisions of one image from its candidate pairs."""
    return precisions_from_pairs(c.pred_idx, c.gt_idx, c.inter, c.union, c.num_pred, c.num_gt)[0]


def image_precisions(pred: Union[Masks, Instances], gt: Union[Masks, Instances],
                     mask_threshold: float = 0.5) -> np.ndarray:
    """float64[10]: precision at each threshold 0.50:0.05:0.95 for one image (see module doc)."""
    c = candidate_pairs(as_masklist(pred, "pred"), as_masklist(gt, "gt"), mask_threshold)
    return image_precisions_from_candidates(c)


def image_score(pred: Union[Masks, Instances], gt: Union[Masks, Instances], mask_threshold: float = 0.5) -> float:
    """The Kaggle score of one image: mean precision over the ten IoU thresholds.

    Args:
        pred: predicted masks (N), bool or soft (thresholded at ``mask_threshold``).
        gt: ground-truth masks (M), bool; may overlap each other.
    """
    return float(image_precisions(pred, gt, mask_threshold).mean())


@dataclass
class ImageResult:
    image_id: str
    class_name: Optional[str]
    precisions: np.ndarray  # float64[10]
    num_pred: int
    num_gt: int

    @property
    def score(self) -> float:
        return float(self.precisions.mean())


class KaggleEvaluator:
    """Accumulates per-image Kaggle scores; ``summary()`` gives the dataset's figures.

    Args:
        mask_threshold (float): threshold for soft predicted masks.
    """

    def __init__(self, mask_threshold: float = 0.5):
        self.mask_threshold = float(mask_threshold)
        self.results: List[ImageResult] = []
        self._ids = set()

    def add(self, image_id: str, pred: Union[Masks, Instances], gt: Union[Masks, Instances],
            class_name: Optional[str] = None) -> float:
        """Score one image and remember it; returns the image's score.

        ``class_name`` is the image's class (Sartorius: its cell type) for the per-class means.
        """
        if image_id in self._ids:
            raise ValueError(f"image {image_id!r} was already added to the evaluator")
        p = as_masklist(pred, f"{image_id}: pred")
        g = as_masklist(gt, f"{image_id}: gt")
        if p.image_size != g.image_size:
            raise ValueError(f"{image_id}: prediction masks are for size {p.image_size}, ground truth for {g.image_size}")
        prec = image_precisions_from_candidates(candidate_pairs(p, g, self.mask_threshold))
        self._ids.add(image_id)
        self.results.append(ImageResult(str(image_id), class_name, prec, len(p), len(g)))
        return float(prec.mean())

    def __len__(self) -> int:
        return len(self.results)

    def per_image(self) -> Dict[str, float]:
        return {r.image_id: r.score for r in self.results}

    def summary(self) -> dict:
        """``{"mAP", "per_class", "per_class_num_images", "per_threshold", "num_images"}``.

        ``mAP`` is the mean of per-image scores (NaN with no image); ``per_class`` maps each class
        name to the mean score of its images; ``per_threshold`` lists the mean precision at each
        of the ten thresholds (their mean is ``mAP``).
        """
        n = len(self.results)
        if n == 0:
            return {"mAP": float("nan"), "per_class": {}, "per_class_num_images": {},
                    "per_threshold": [float("nan")] * len(THRESHOLDS), "num_images": 0}
        prec = np.stack([r.precisions for r in self.results])  # [n, 10]
        per_class, counts = {}, {}
        names = [r.class_name for r in self.results]
        for name in sorted({c for c in names if c is not None}):
            sel = np.array([c == name for c in names])
            per_class[name] = float(prec[sel].mean())
            counts[name] = int(sel.sum())
        return {
            "mAP": float(prec.mean()),
            "per_class": per_class,
            "per_class_num_images": counts,
            "per_threshold": [float(x) for x in prec.mean(axis=0)],
            "num_images": n,
        }
