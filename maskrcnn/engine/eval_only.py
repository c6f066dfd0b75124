"""``python train.py CONFIG --eval-only WEIGHTS``: validate a checkpoint as training would, and more.

The config says what to evaluate and how, exactly as in training: its data section gives the
validation split (``data.fold`` of ``data.num_folds``, ``train.max_eval_images``), its model section
the architecture the weights are loaded into (``--set`` applies), its test section the
post-processing, ``train.device`` and ``solver.amp`` how the model runs. So the Kaggle mAP printed
here is the ``val/mAP`` a training run with this config logs for these weights. On top, COCO mask
and box AP (``maskrcnn.engine.validate``: of the detections before post-processing, as detectron2's
``--eval-only`` reports) and the Kaggle mAP per class at each IoU threshold.

Nothing is written and no run directory is taken (a run may be training in the checkpoint's
folder): the metrics go to stdout, and to a JSON file only when ``--eval-out`` names one (written
atomically). When the weights were trained with another model section than the config's, each
difference is printed as a warning (the config wins; a checkpoint whose tensors do not fit it is an
error naming the file).
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional

from maskrcnn.config import Config, ConfigError, config_changes, to_dict
from maskrcnn.data import build_dataset
from maskrcnn.device import resolve_device
from maskrcnn.engine import distributed as du
from maskrcnn.engine.trainer import amp_context
from maskrcnn.engine.validate import run_validation
from maskrcnn.evaluation.coco_ap import MAX_DETS, format_coco_report
from maskrcnn.evaluation.kaggle import THRESHOLDS
from maskrcnn.fileio import atomic_json
from maskrcnn.inference.checkpoint import model_from_checkpoint, read_checkpoint
from maskrcnn.inference.zoo import resolve_weights


def model_differences(saved: Optional[dict], cfg: Config) -> List[str]:
    """``model.x: saved -> config`` for each model key where a checkpoint's saved config and ``cfg``
    differ (none for a bare state dict)."""
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        return []
    return [f"{k}: {a!r} (checkpoint) -> {b!r} (config)"
            for k, a, b in config_changes({"model": saved["model"]}, {"model": to_dict(cfg.model)})]


def format_kaggle_report(scores: Dict[str, float]) -> List[str]:
    """The Kaggle mAP, then a table of the mean precision at each IoU threshold: all images, and the
    images of each class."""
    classes = sorted({k[len("val/mAP/"):].split("@")[0] for k in scores if k.startswith("val/mAP/")})
    name_w = max([8] + [len(c) + 2 for c in classes])
    lines = [f"Kaggle mAP {scores['val/mAP']:.4f} on {scores['val/num_images']} images"]
    lines.append(f"{'IoU >':<{name_w}}{'mAP':>8}" + "".join(f"{t:>7.2f}" for t in THRESHOLDS))
    lines.append(f"{'all':<{name_w}}{scores['val/mAP']:8.4f}"
                 + "".join(f"{scores[f'val/mAP@{t:.2f}']:7.3f}" for t in THRESHOLDS))
    for c in classes:
        per = [scores.get(f"val/mAP/{c}@{t:.2f}") for t in THRESHOLDS]
        lines.append(f"{c:<{name_w}}{scores[f'val/mAP/{c}']:8.4f}"
                     + "".join(f"{v:7.3f}" if v is not None else f"{'-':>7}" for v in per))
    return lines


def coco_summary(scores: Dict[str, float]) -> Dict[str, dict]:
    """``{iou_type: {stat: value}}`` from validation's ``val/segm/AP`` ... keys."""
    out: Dict[str, dict] = {}
    for t in ("segm", "bbox"):  # masks first: the figure a segmentation user reads
        stats = {k.split("/")[2]: v for k, v in scores.items() if k.startswith(f"val/{t}/")}
        if stats:
            out[t] = stats
    return out


def main_eval_only(cfg: Config, weights: str, progress: bool = True, out: Optional[str] = None) -> int:
    """Evaluate ``weights`` on ``cfg``'s validation split and print the report (rank 0); see the
    module doc. Returns the exit code (0)."""
    launched = du.launched_by_torchrun()
    try:
        device = du.init_distributed(device=cfg.train.device) if launched else resolve_device(cfg.train.device, key="train.device")
        if cfg.train.num_threads > 0:
            import torch

            torch.set_num_threads(cfg.train.num_threads)
        main = du.is_main_process()
        weights = resolve_weights(weights)  # a file, or a model zoo name: the file it names
        ck = read_checkpoint(weights)
        saved = ck.get("config") if isinstance(ck, dict) else None
        saved = saved if isinstance(saved, dict) else None  # not a mapping: the given config decides
        if main:
            for line in model_differences(saved, cfg):
                print(f"warning: {weights} was trained with another model section: {line}", file=sys.stderr)
        model, _ = model_from_checkpoint(ck, weights, device, cfg)
        del ck
        dataset = build_dataset(cfg.data, split="val")
        if len(dataset) == 0:
            raise ConfigError(f"the validation split of data.format={cfg.data.format!r} is empty "
                              f"(data.fold {cfg.data.fold} of data.num_folds {cfg.data.num_folds})")
        n = len(dataset) if cfg.train.max_eval_images <= 0 else min(len(dataset), cfg.train.max_eval_images)
        if main:
            print(f"eval-only: {weights} on {n} of the {len(dataset)} validation images (data.fold {cfg.data.fold} "
                  f"of {cfg.data.num_folds}) on {device}", file=sys.stderr)
        scores = run_validation(model, dataset, cfg.test, device, batch_size=cfg.data.batch_size,
                                max_images=cfg.train.max_eval_images, autocast=amp_context(device, cfg.solver.amp),
                                progress="bar" if progress else "lines", coco=True,
                                class_names=dataset.class_names, details=True)
    finally:
        if launched:
            du.cleanup()
    if main:
        for line in format_kaggle_report(scores):
            print(line)
        print(f"COCO AP ({MAX_DETS[-1]} detections per image, before post-processing):")
        for line in format_coco_report(coco_summary(scores)):
            print(line)
        if out:
            atomic_json({"weights": os.path.abspath(weights), "split": "val", "fold": cfg.data.fold,
                         "num_folds": cfg.data.num_folds, "metrics": scores}, out)
            print(f"wrote {out}")
    return 0
