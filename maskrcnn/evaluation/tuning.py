"""Per-class threshold tuning on cached validation predictions (``python evaluate.py tune``).

Sweeps, for each class, the score threshold, the mask threshold and the minimum area, scoring
with the Kaggle metric, and writes the best as YAML with ``TestConfig``'s keys (``score_thresh``,
``mask_thresh``, ``min_area``: one value per class) for ``predict.py --thresholds`` and an
ablation variant's ``thresholds`` (both read it with ``maskrcnn.config.apply_thresholds``).

The sweep calls post-processing's own rules (``maskrcnn.inference.filtering``: ``image_class``,
``remove_overlaps``) and the metric's own matching (``maskrcnn.evaluation.kaggle``:
``candidate_pairs``, ``precisions_from_pairs``), and stays fast this way:

- Each image belongs to the class post-processing gives it under the starting ``TestConfig``
  (``image_class``: most frequent label among instances passing their class's score threshold); with
  ``image_class: relabel`` all its instances are judged by that class's thresholds, so classes
  are tuned independently on their own images.
- ``mask_rescore`` (in the starting ``TestConfig``) is honoured: for each mask threshold the
  scores are rescored at that threshold before the sweep, as ``filter_predictions`` does. ``fill_holes``
  is not swept (the exact re-score applies it).
- For each mask threshold, each image's masks are binarised and their overlaps resolved once
  (each pixel to the best-scoring mask; a mask keeping less than ``overlap_min_keep`` of its
  pixels is dropped, repeated until stable; with ``one_piece`` each survivor then keeps its
  largest piece, which depends on its own pixels only), then its candidate pairs (IoU > 0.5) with the
  ground truth are computed once. A mask's fate in that process depends only on better-scoring
  masks, so for a score threshold (a prefix of the score order) the result is exact as a
  subset. The minimum area is applied as a filter on the resolved areas: approximate, since
  post-processing would hand a dropped small mask's pixels to a worse-scoring neighbour.
- Each (score threshold, min area) is then a subset of predictions: the one-to-one matching
  runs on the surviving candidate pairs of all images of the class at once.
After the sweep, the chosen thresholds are scored again through ``filter_predictions`` itself and that
exact figure is reported too (``--no-verify`` skips it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import yaml

from maskrcnn.config import TestConfig
from maskrcnn.errors import UserError
from maskrcnn.fileio import atomic_write_text
from maskrcnn.evaluation.kaggle import KaggleEvaluator, candidate_pairs, precisions_from_counts, precisions_from_pairs
from maskrcnn.inference.filtering import filter_predictions, image_class, keep_largest_pieces, remove_overlaps, rescore
from maskrcnn.progress import track
from maskrcnn.structures import Instances, MaskList

DEFAULT_SCORE_GRID = tuple(round(0.05 * k, 2) for k in range(1, 19))  # 0.05 .. 0.90
DEFAULT_MASK_GRID = (0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)
DEFAULT_AREA_GRID = (0, 25, 50, 75, 100, 125, 150, 200)
THRESHOLD_KEYS = ("score_thresh", "mask_thresh", "min_area")


@dataclass
class TuneItem:
    """One validation image: raw predictions (soft masks) and ground truth.

    ``pred`` may be a function that loads the predictions (from the cache): soft masks of ~1000
    instances per image are large, so the sweep holds one image's at a time.
    """

    image_id: str
    pred: Union[Instances, Callable[[], Instances]]
    gt: MaskList
    class_name: Optional[str] = None  # ground-truth class of the image, for reports only

    def get_pred(self) -> Instances:
        return self.pred if isinstance(self.pred, Instances) else self.pred()


def _value_for(values: Sequence, c: int):
    values = list(values)
    return values[0] if len(values) == 1 else values[c]


@dataclass
class _Prepared:
    """Per image, for one mask threshold: predictions in score order and their candidate pairs."""

    scores: np.ndarray  # float64[P] decreasing
    areas: np.ndarray  # int64[P] pixels after overlap resolution
    alive: np.ndarray  # bool[P]
    pred_idx: np.ndarray
    gt_idx: np.ndarray
    inter: np.ndarray
    union: np.ndarray
    num_gt: int


def prepare_image(item: TuneItem, mask_thresh: float, remove: bool, min_keep: float,
                  mask_rescore: bool = False, one_piece: bool = False) -> _Prepared:
    """Binarise at ``mask_thresh``, resolve overlaps in score order, find candidate pairs with the GT.

    With ``mask_rescore`` the scores are post-processing's rescored ones (``rescore`` at this mask
    threshold), so the score sweep and the overlap order see what ``filter_predictions`` would.
    With ``one_piece`` each resolved mask keeps its largest piece, as ``filter_predictions`` does.
    """
    inst = item.get_pred()
    scores = inst.scores
    if mask_rescore and len(inst):
        scores = rescore(scores, inst.masks, torch.full_like(scores, float(mask_thresh)))
    order = torch.sort(scores, descending=True, stable=True).indices
    masks = inst.masks[order].threshold(mask_thresh)
    scores = scores[order].double().cpu().numpy()
    if len(masks):  # min_area 0 here: the sweep filters areas itself
        no_min = torch.zeros(len(masks), dtype=torch.long)
        masks, alive = remove_overlaps(masks, min_keep, no_min, remove)
        if one_piece:
            masks, alive = keep_largest_pieces(masks, alive, no_min)
    else:
        alive = torch.zeros(0, dtype=torch.bool)
    areas = masks.areas().long().cpu().numpy() if len(masks) else np.zeros(0, np.int64)
    c = candidate_pairs(masks, item.gt)
    return _Prepared(scores, areas, alive.cpu().numpy(), c.pred_idx, c.gt_idx, c.inter, c.union, len(item.gt))


def sweep_group(prepared: List[_Prepared], score_grid: Sequence[float], area_grid: Sequence[int]) -> np.ndarray:
    """Mean Kaggle score of the images in ``prepared`` for each (score threshold, min area): float64[S, A]."""
    n_img = len(prepared)
    out = np.zeros((len(score_grid), len(area_grid)))
    if n_img == 0:
        return out
    counts = np.array([p.scores.size for p in prepared])
    offs = np.concatenate([[0], np.cumsum(counts)])
    scores = np.concatenate([p.scores for p in prepared]) if offs[-1] else np.zeros(0)
    areas = np.concatenate([p.areas for p in prepared]) if offs[-1] else np.zeros(0, np.int64)
    alive = np.concatenate([p.alive for p in prepared]) if offs[-1] else np.zeros(0, bool)
    img_of_pred = np.repeat(np.arange(n_img), counts)
    gcounts = np.array([p.num_gt for p in prepared])
    goffs = np.concatenate([[0], np.cumsum(gcounts)])
    ecounts = np.array([p.pred_idx.size for p in prepared])
    e_img = np.repeat(np.arange(n_img), ecounts)
    cat = lambda name: np.concatenate([getattr(p, name) for p in prepared]) if ecounts.sum() else np.zeros(0, np.int64)
    e_pred = cat("pred_idx") + offs[e_img]
    e_gt = cat("gt_idx") + goffs[e_img]
    e_inter, e_union = cat("inter"), cat("union")
    for si, s in enumerate(score_grid):
        for ai, a in enumerate(area_grid):
            # Compare in float32 as postprocess does (scores are float32; so is its threshold).
            keep = alive & (scores >= float(np.float32(s))) & (areas >= max(int(a), 1))
            num_pred = np.bincount(img_of_pred[keep], minlength=n_img)
            e = keep[e_pred]
            prec = precisions_from_pairs(e_pred[e], e_gt[e], e_inter[e], e_union[e], num_pred, gcounts, e_img[e])
            out[si, ai] = prec.mean()
    return out


@dataclass
class TuneResult:
    thresholds: Dict[str, list]  # score_thresh, mask_thresh, min_area: one value per class
    per_class: Dict[str, dict]  # class name -> {"mAP", "num_images", "score_thresh", ...}
    sweep_mAP: float  # all images, with the chosen thresholds, as the sweep scores them
    base_mAP: float  # all images with the starting TestConfig, as the sweep scores them
    exact_mAP: Optional[float] = None  # through postprocess itself (None with verify=False)
    num_images: int = 0


class TuneError(UserError, ValueError):
    """Tuning cannot run as asked (e.g. class names missing); the message says what to pass."""


def tune_thresholds(items: Sequence[TuneItem], class_names: Sequence[str], base: TestConfig = TestConfig(),
                    score_grid: Sequence[float] = DEFAULT_SCORE_GRID, mask_grid: Sequence[float] = DEFAULT_MASK_GRID,
                    area_grid: Sequence[int] = DEFAULT_AREA_GRID, verify: bool = True,
                    progress: str = "off") -> TuneResult:
    """Best (score, mask threshold, min area) per class on ``items`` (see the module doc).

    ``progress``: ``bar``, ``lines`` or ``off`` (``maskrcnn.progress``) over the images, for the
    sweep's pass and the exact re-score.
    """
    nc = max(1, len(class_names))
    names = list(class_names) or ["all"]
    # The grids always hold the starting values, so that the starting thresholds are scored too.
    mask_grid = sorted(set(float(m) for m in mask_grid) | {float(_value_for(base.mask_thresh, c)) for c in range(nc)})
    score_grid = sorted(set(float(s) for s in score_grid) | {float(_value_for(base.score_thresh, c)) for c in range(nc)})
    area_grid = sorted(set(int(a) for a in area_grid) | {int(_value_for(base.min_area, c)) for c in range(nc)})
    groups, prepared = _prepare_items(items, base, names, mask_grid, progress)
    # Images with no prediction score the same whatever the thresholds; they stay in the means.
    empty_prec = [precisions_from_counts(np.zeros(10), 0, len(it.gt)).mean() for it in items]
    chosen = {k: [] for k in THRESHOLD_KEYS}
    per_class, total_best, total_base = {}, 0.0, 0.0
    for c in range(nc):
        idx = [k for k, g in enumerate(groups) if g == c]
        r = np.zeros((len(mask_grid), len(score_grid), len(area_grid)))
        if idx:
            for mi in range(len(mask_grid)):
                r[mi] = sweep_group([prepared[mi][k] for k in idx], score_grid, area_grid) * len(idx)
        base_ix = (mask_grid.index(float(_value_for(base.mask_thresh, c))),
                   score_grid.index(float(_value_for(base.score_thresh, c))),
                   area_grid.index(int(_value_for(base.min_area, c))))
        # First best in grid order (low mask threshold, low score, small area) for determinism;
        # nothing to tune on: keep the starting values.
        best = np.unravel_index(int(np.argmax(r)), r.shape) if idx else base_ix
        mt, st, ma = mask_grid[best[0]], score_grid[best[1]], area_grid[best[2]]
        chosen["mask_thresh"].append(mt)
        chosen["score_thresh"].append(st)
        chosen["min_area"].append(ma)
        total_best += r[best]
        total_base += r[base_ix]
        n_c = len(idx)
        per_class[names[c] if c < len(names) else str(c)] = {
            "num_images": n_c, "mAP": float(r[best] / n_c) if n_c else float("nan"),
            "base_mAP": float(r[base_ix] / n_c) if n_c else float("nan"),
            "score_thresh": st, "mask_thresh": mt, "min_area": ma,
        }
    empty_sum = sum(p for p, g in zip(empty_prec, groups) if g < 0)
    n = max(len(items), 1)
    res = TuneResult(chosen, per_class, (total_best + empty_sum) / n, (total_base + empty_sum) / n, None, len(items))
    if verify:
        res.exact_mAP = exact_score(items, dataclasses.replace(base, **{k: tuple(v) for k, v in chosen.items()}),
                                    progress)
    return res


def _prepare_items(items: Sequence[TuneItem], base: TestConfig, names: Sequence[str], mask_grid: Sequence[float],
                   progress: str) -> Tuple[List[int], List[List[Optional[_Prepared]]]]:
    """One pass over the images (one image's soft masks in memory at a time): each image's class
    (-1: no prediction passes), and for each mask threshold its resolved masks' scores, areas and
    candidate pairs (``prepared[mask index][image index]``, None for images of no class)."""
    nc = max(1, len(names))
    groups, prepared = [], [[None] * len(items) for _ in mask_grid]
    for k, it in enumerate(track(items, "tune", mode=progress)):
        loaded = TuneItem(it.image_id, it.get_pred(), it.gt, it.class_name)
        g = image_class(loaded.pred, base.score_thresh)  # postprocess's own rule
        if g >= nc:
            raise TuneError(f"image {it.image_id}: predicted class {g} but only {nc} class name(s) are known "
                            f"({', '.join(names)}): give --classes NAME ... in label order, or --config CONFIG")
        groups.append(g)
        if g >= 0:
            for mi, mt in enumerate(mask_grid):
                prepared[mi][k] = prepare_image(loaded, mt, base.remove_overlaps, base.overlap_min_keep,
                                                base.mask_rescore, base.one_piece)
    return groups, prepared


def exact_score(items: Sequence[TuneItem], test_cfg: TestConfig, progress: str = "off") -> float:
    """mAP of ``items`` through ``filter_predictions`` itself (the sweep's figures are exact up to min_area)."""
    ev = KaggleEvaluator()
    for it in track(items, "tune: verify", mode=progress):
        ev.add(it.image_id, filter_predictions(it.get_pred(), test_cfg), it.gt, it.class_name)
    return ev.summary()["mAP"]


# ------------------------------------------------------------------------------ YAML I/O
def write_thresholds(result: TuneResult, path: str, class_names: Sequence[str], note: str = "") -> None:
    """Write the chosen thresholds (TestConfig keys) atomically, with the figures as comments."""
    lines = [f"# Tuned by `python evaluate.py tune` on {result.num_images} images. {note}".rstrip(),
             f"# classes (in order): {', '.join(class_names) if class_names else 'all'}",
             f"# sweep mAP {result.sweep_mAP:.4f} (starting thresholds: {result.base_mAP:.4f})"
             + (f"; through postprocess: {result.exact_mAP:.4f}" if result.exact_mAP is not None else "")]
    for name, pc in result.per_class.items():
        lines.append(f"#   {name}: {pc['num_images']} images, mAP {pc['mAP']:.4f} (was {pc['base_mAP']:.4f})")
    body = yaml.safe_dump({k: list(result.thresholds[k]) for k in THRESHOLD_KEYS}, sort_keys=False,
                          default_flow_style=None)
    atomic_write_text(path, "\n".join(lines) + "\n" + body)


# ---------------------------------------------------------------------------------- CLI
def add_tune_arguments(p) -> None:
    p.add_argument("--predictions", required=True, metavar="CACHE_DIR",
                   help="a prediction cache directory (evaluate.py ablate prints it: <output_dir>/cache/<hash>)")
    p.add_argument("--labels", default=None, help="label CSV with the ground truth of the cached images "
                   "(default: the one `evaluate.py ablate` wrote for this cache)")
    p.add_argument("--out", required=True, help="YAML to write (score_thresh, mask_thresh, min_area per class)")
    p.add_argument("--config", default=None, help="config whose test section is the starting point "
                   "(default: the test defaults)")
    p.add_argument("--classes", nargs="*", default=None, help="class names in label order (default: the cache's, "
                   "which `evaluate.py ablate` took from data.classes or the dataset; else --config's)")
    p.add_argument("--order", choices=("row", "col"), default="row", help="RLE pixel order of --labels")
    p.add_argument("--score-grid", nargs="*", type=float, default=list(DEFAULT_SCORE_GRID), help="score thresholds to try")
    p.add_argument("--mask-grid", nargs="*", type=float, default=list(DEFAULT_MASK_GRID), help="mask thresholds to try")
    p.add_argument("--area-grid", nargs="*", type=int, default=list(DEFAULT_AREA_GRID), help="minimum areas (pixels) to try")
    p.add_argument("--no-verify", action="store_true", help="skip the exact re-score through postprocess")
    p.add_argument("--no-progress", action="store_true", help="a line every 30 s instead of a progress bar")


def load_items(cache_dir: str, labels_path: str, order: str = "row") -> List[TuneItem]:
    """Cached raw predictions (loaded lazily) joined with their ground truth from a label CSV."""
    from maskrcnn.formats.prediction_cache import PredictionCache
    from maskrcnn.formats.kaggle_csv import label_masks, read_labels

    cache = PredictionCache.open(cache_dir)
    labels = read_labels(labels_path)
    items = []
    for image_id in cache.image_ids():
        if image_id not in labels:
            raise ValueError(f"{labels_path}: no ground truth for cached image {image_id!r}")
        img = labels[image_id]

        def load(image_id=image_id, size=(img.height, img.width)):
            pred = cache.get(image_id)
            if tuple(pred.image_size) != size:
                raise ValueError(f"image {image_id}: cached predictions are {pred.image_size}, labels say {size}")
            return pred

        items.append(TuneItem(image_id, load, label_masks(img, order, source=labels_path), img.cell_type))
    return items


def tune_class_names(classes: Optional[Sequence[str]], cache_names: Sequence[str], config=None) -> List[str]:
    """Class names in label order: ``--classes``, else the cache's (``evaluate.py ablate`` records
    ``data.classes`` or the dataset's), else the config's data (``data.classes`` or its reader's
    built-in names), else none (one class)."""
    if classes:
        return list(classes)
    if cache_names:
        return list(cache_names)
    if config is not None:
        from maskrcnn.evaluation.ablation import split_class_names

        def reader():
            from maskrcnn.data import build_reader

            return build_reader(config.data)

        return split_class_names(config, reader)
    return []


def main_tune(args) -> int:
    from maskrcnn.config import load_config
    from maskrcnn.formats.prediction_cache import PredictionCache

    cfg = load_config(args.config) if args.config else None
    base = cfg.test if cfg is not None else TestConfig()
    cache = PredictionCache.open(args.predictions)
    names = tune_class_names(args.classes, cache.class_names(), cfg)
    labels = args.labels or cache.meta().get("labels")
    if not labels:
        raise TuneError(f"{args.predictions}: the cache does not name its label file: give --labels LABELS.csv")
    items = load_items(args.predictions, labels, args.order)
    res = tune_thresholds(items, names, base, args.score_grid, args.mask_grid, args.area_grid, verify=not args.no_verify,
                          progress="lines" if args.no_progress else "bar")
    write_thresholds(res, args.out, names)
    for name, pc in res.per_class.items():
        print(f"class {name:<12} images {pc['num_images']:4d}  score {pc['score_thresh']:.2f}  mask {pc['mask_thresh']:.2f}  "
              f"min_area {pc['min_area']:4d}  mAP {pc['mAP']:.4f} (start {pc['base_mAP']:.4f})")
    if res.exact_mAP is not None:
        print(f"through postprocess: mAP {res.exact_mAP:.4f}")
    print(f"wrote {args.out}")
    print(f"mAP {res.sweep_mAP:.4f}")
    return 0
