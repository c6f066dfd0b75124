"""Periodic validation during training: predict, post-process as the submission will, score.

Images are sharded across ranks (rank ``r`` takes images ``r, r+W, ...``); each rank
post-processes its predictions to final binary masks (small: crops of bool), the results are
gathered on rank 0, which scores them with the Kaggle metric, and the scores are broadcast so
that every rank agrees on the best checkpoint.

Post-processing is ``maskrcnn.inference.postprocess.postprocess`` (thresholds from ``cfg.test``,
image class, overlap removal), scoring ``maskrcnn.evaluation.kaggle.KaggleEvaluator``: the same
code the submission and ``evaluate.py`` use.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import Dataset

from maskrcnn.config import TestConfig
from maskrcnn.engine import distributed as du
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
) -> Dict[str, float]:
    """Kaggle-metric scores of ``model`` on ``dataset`` (every rank gets the same dict).

    Args:
        model: the bare model (not the DDP wrapper); it is put in eval mode and back.
        dataset: validation ``Sample``s with ground-truth masks.
        test_cfg: the thresholds and overlap removal the submission uses.
        max_images: score only the first ``max_images`` images (0: all).
        autocast: a context-manager factory for mixed precision (called per batch), or None.

    Returns:
        ``{"val/mAP": float, "val/mAP@0.50": ..., "val/mAP/<class>": ..., "val/num_images": n}``.
    """
    n = len(dataset) if max_images <= 0 else min(len(dataset), max_images)
    mine = list(range(du.get_rank(), n, du.get_world_size()))
    was_training = model.training
    model.eval()
    results: List[Tuple[str, Instances, Instances, Optional[str]]] = []
    try:
        for start in range(0, len(mine), max(batch_size, 1)):
            samples = [dataset[i] for i in mine[start : start + batch_size]]
            images = [s.image.to(device, non_blocking=True) for s in samples]
            with autocast() if autocast is not None else contextlib.nullcontext():
                preds = model(images)
            for s, pred in zip(samples, preds):
                final = postprocess_for_submission(_to_float(pred).to("cpu"), test_cfg)
                results.append((s.image_id, final, s.instances.to("cpu"), _class_name(s)))
    finally:
        model.train(was_training)
    gathered = du.all_gather_object(results)
    scores = None
    if du.is_main_process():
        scores = kaggle_scores([r for part in gathered for r in part])
    return du.broadcast_object(scores)


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
    from maskrcnn.inference.postprocess import postprocess

    return postprocess(pred, test_cfg)


# --------------------------------------------------------------------------- scoring
def kaggle_scores(results: Sequence[Tuple[str, Instances, Instances, Optional[str]]]) -> Dict[str, float]:
    """Score ``(image_id, final prediction, ground truth, class name)`` tuples with the Kaggle metric.

    Returns ``val/mAP`` (mean of per-image scores), ``val/mAP@0.50`` ... ``val/mAP@0.95`` (mean
    precision at each IoU threshold), ``val/mAP/<class>`` per class and ``val/num_images``.
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
    return out
