"""Periodic validation during training: predict, post-process as the submission will, score.

Images are sharded across ranks (rank ``r`` takes images ``r, r+W, ...``); each rank
post-processes its predictions to final binary masks (small: crops of bool), the results are
gathered on rank 0, which scores them with the Kaggle metric, and the scores are broadcast so
that every rank agrees on the best checkpoint.

Post-processing is ``maskrcnn.inference.filtering.filter_predictions`` (thresholds from ``cfg.test``,
image class, overlap removal), scoring ``maskrcnn.evaluation.kaggle.KaggleEvaluator``: the same
code the submission and ``evaluate.py`` use.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from maskrcnn.config import TestConfig
from maskrcnn.engine import distributed as du
from maskrcnn.progress import track
from maskrcnn.structures import Instances, MaskList


@torch.no_grad()
def run_validation(
    model: nn.Module,
    dataset: Dataset,
    test_cfg: TestConfig,
    device: torch.device,
    batch_size: int = 1,
    max_images: int = 0,
    autocast: Optional[contextlib.AbstractContextManager] = None,
    progress: str = "off",
    coco: bool = False,
    class_names: Sequence[str] = (),
    details: bool = False,
) -> Dict[str, float]:
    """Kaggle-metric scores of ``model`` on ``dataset`` (every rank gets the same dict).

    Args:
        model: the bare model (not the DDP wrapper); it is put in eval mode and back.
        dataset: validation ``Sample``s with ground-truth masks.
        test_cfg: the thresholds and overlap removal the submission uses.
        max_images: score only the first ``max_images`` images (0: all).
        autocast: a context-manager factory for mixed precision (called per batch), or None.
        progress: ``bar``, ``lines`` or ``off`` on rank 0 (``maskrcnn.progress``).
        coco: also COCO mask and box AP (``maskrcnn.evaluation.coco_ap``), of the model's detections
            before post-processing (each mask binarised at its class's ``test.mask_thresh``; no
            score threshold beyond the model's own, no overlap removal), as detectron2's
            COCOEvaluator scores a model: AP ranks every detection, and thresholds only lower it.
        class_names: category names for the COCO evaluator (default: ``"0"``, ``"1"`` ...).
        details: also the Kaggle mAP of each class at each IoU threshold (``val/mAP/<class>@0.50`` ...).

    Returns:
        ``{"val/mAP": float, "val/mAP@0.50": ..., "val/mAP/<class>": ..., "val/num_images": n}``, and
        with ``coco`` ``val/segm/AP``, ``val/segm/AP50`` ... ``val/bbox/AP`` ... (COCO's numbers in
        [0, 1], ``maskrcnn.evaluation.coco_ap.STAT_NAMES``).
    """
    n = len(dataset) if max_images <= 0 else min(len(dataset), max_images)
    mine = list(range(du.get_rank(), n, du.get_world_size()))
    mode = progress if du.is_main_process() else "off"
    results, coco_records = _predict_shard(model, dataset, mine, test_cfg, device, batch_size, autocast, mode, coco)
    gathered = du.all_gather_object(results)
    gathered_coco = du.all_gather_object(coco_records) if coco else []
    scores = None
    if du.is_main_process():
        scores = kaggle_scores([r for part in gathered for r in part], details=details)
        if coco:
            scores.update(coco_scores([r for part in gathered_coco for r in part], class_names))
    return du.broadcast_object(scores)


def _predict_shard(model: nn.Module, dataset: Dataset, indices: List[int], test_cfg: TestConfig, device: torch.device,
                   batch_size: int, autocast, mode: str, coco: bool) -> Tuple[List[tuple], List[dict]]:
    """This rank's ``(image_id, submission instances, ground truth, class name)`` per image, and its
    COCO records with ``coco``; the model is in eval mode meanwhile."""
    was_training = model.training
    model.eval()
    results: List[Tuple[str, Instances, Instances, Optional[str]]] = []
    coco_records: List[dict] = []
    batches = [indices[start:start + max(batch_size, 1)] for start in range(0, len(indices), max(batch_size, 1))]
    try:
        for batch in track(batches, "validate", total=len(batches), mode=mode, unit="batch", leave=False):
            samples = [dataset[i] for i in batch]
            images = [s.image.to(device, non_blocking=True) for s in samples]
            with autocast() if autocast is not None else contextlib.nullcontext():
                preds = model(images)
            for s, pred in zip(samples, preds):
                raw = _to_float(pred).to("cpu")
                final = postprocess_for_submission(raw, test_cfg)
                gt = s.instances.to("cpu")
                results.append((s.image_id, final, gt, _class_name(s)))
                if coco:
                    coco_records.append(coco_record(s.image_id, raw, gt, test_cfg))
    finally:
        model.train(was_training)
    return results, coco_records


def _class_name(sample) -> Optional[str]:
    meta = sample.meta or {}
    for key in ("cell_type", "class_name"):
        if meta.get(key):
            return str(meta[key])
    return None


def _to_float(pred: Instances) -> Instances:
    """Predictions made under autocast may hold half-precision scores or masks."""
    masks = pred.masks
    if masks is not None and masks.crops.is_floating_point():
        masks = MaskList(masks.crops.float(), masks.origins, masks.image_size)
    return pred.replace(
        boxes=pred.boxes.float(), scores=None if pred.scores is None else pred.scores.float(), masks=masks
    )


# ------------------------------------------------------------------- post-processing
def postprocess_for_submission(pred: Instances, test_cfg: TestConfig) -> Instances:
    """Final binary, non-overlapping instances, exactly as the submission makes them."""
    from maskrcnn.inference.filtering import filter_predictions

    return filter_predictions(pred, test_cfg)


# --------------------------------------------------------------------------- scoring
def kaggle_scores(results: Sequence[Tuple[str, Instances, Instances, Optional[str]]],
                  details: bool = False) -> Dict[str, float]:
    """Score ``(image_id, final prediction, ground truth, class name)`` tuples with the Kaggle metric.

    Returns ``val/mAP`` (mean of per-image scores), ``val/mAP@0.50`` ... ``val/mAP@0.95`` (mean
    precision at each IoU threshold), ``val/mAP/<class>`` per class and ``val/num_images``; with
    ``details`` also ``val/mAP/<class>@0.50`` ... (each class's images at each threshold).
    """
    from maskrcnn.evaluation.kaggle import THRESHOLDS, KaggleEvaluator

    ev = KaggleEvaluator()
    for image_id, pred, gt, cls in results:
        ev.add(image_id, pred, gt, class_name=cls)
    summary = ev.summary()
    out = {"val/mAP": float(summary["mAP"]), "val/num_images": int(summary["num_images"])}
    for t, v in zip(THRESHOLDS, summary["per_threshold"]):
        out[f"val/mAP@{t:.2f}"] = float(v)
    for name, v in summary["per_class"].items():
        out[f"val/mAP/{name}"] = float(v)
    if details:
        names = [r.class_name for r in ev.results]
        for name in summary["per_class"]:
            prec = np.stack([r.precisions for r, c in zip(ev.results, names) if c == name])  # [images, 10]
            for t, v in zip(THRESHOLDS, prec.mean(axis=0)):
                out[f"val/mAP/{name}@{t:.2f}"] = float(v)
    return out


def coco_record(image_id: str, raw: Instances, gt: Instances, test_cfg: TestConfig) -> dict:
    """One image's COCO annotations and results (``maskrcnn.evaluation.coco_ap.encode_image``) from the
    model's raw detections, each soft mask binarised at its class's ``test.mask_thresh``."""
    from maskrcnn.evaluation.coco_ap import encode_image
    from maskrcnn.inference.per_class import per_class

    m = raw.masks
    if m is not None and m.is_soft and len(m):
        thr = per_class(test_cfg.mask_thresh, raw.labels, "mask_thresh").to(m.crops.dtype)
        raw = raw.replace(masks=MaskList(m.crops >= thr[:, None, None], m.origins, m.image_size))
    return encode_image(str(image_id), raw, gt)


def coco_scores(records: Sequence[dict], class_names: Sequence[str] = ()) -> Dict[str, float]:
    """``val/segm/AP`` ... and ``val/bbox/AP`` ... of ``coco_record``s (COCO's numbers in [0, 1])."""
    from maskrcnn.evaluation.coco_ap import COCOEvaluator

    if not records:
        return {}
    num_classes = max([len(class_names)] + [a["category_id"] for r in records for a in r["gt"]]
                      + [d["category_id"] for r in records for d in r["dt"]["segm"]])
    names = list(class_names) + [str(c) for c in range(len(class_names), num_classes)]
    ev = COCOEvaluator(num_classes=num_classes, class_names=names)
    for r in records:
        ev.add_record(r)
    return {f"val/{t}/{k}": float(v) for t, stats in ev.summary().items() for k, v in stats.items()}
