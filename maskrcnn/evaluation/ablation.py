"""Ablation runs: variants x validation split -> Kaggle mAP tables (``python evaluate.py ablate``).

The ablation file (its keys, checks and relative paths) is ``maskrcnn.evaluation.ablation_spec``'s;
the table's columns are ``maskrcnn.evaluation.ablation_table``'s.

Raw (soft) predictions are cached per variant under ``output_dir/cache/<hash>`` where the hash
covers only prediction-relevant settings (weights files, TTA, merge settings, model overrides,
data split), so variants that differ in post-processing reuse one run and ``evaluate.py tune``
can read the same cache. The ground truth of the split is written once to
``output_dir/labels_<hash>.csv`` and read from there afterwards.

Outputs (atomic): ``ablation.md`` and ``ablation.csv`` with columns
Variant | Backbone | Iterations | Ensemble | Normalization | Color aug | TTA | mAP | <per class>,
and ``results.json`` with each variant's summary and cache directory.

The calls into data and inference (dataset, checkpoint loading, Predictor, filter_predictions) are in
``Backend``, so tests can pass a fake one.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from maskrcnn.config import Config, TestConfig, apply_thresholds, load_config, override_test_config, to_dict
from maskrcnn.evaluation.ablation_spec import AblationSpec, Variant, load_ablation_spec
from maskrcnn.evaluation.ablation_table import describe, format_tables, per_class_columns
from maskrcnn.formats.prediction_cache import PredictionCache, settings_key, weights_fingerprint
from maskrcnn.fileio import atomic_json, atomic_write_text
from maskrcnn.evaluation.kaggle import KaggleEvaluator
from maskrcnn.progress import track
from maskrcnn.structures import Instances, MaskList

CACHE_FORMAT = 2  # bump when the cache's file layout changes


# ------------------------------------------------------------- calls into data and inference
class Backend:
    """The few calls ablation makes into data and inference code (tests fake this)."""

    def dataset(self, cfg: Config, split: str):
        from maskrcnn.data import build_dataset

        return build_dataset(cfg.data, split=split)

    def checkpoint_info(self, path: str) -> Tuple[Optional[Config], Optional[int]]:
        """The run's Config and iteration saved in a checkpoint (None when absent)."""
        from maskrcnn.config import from_dict
        from maskrcnn.inference.checkpoint import load_checkpoint

        ck = load_checkpoint(path)
        cfg = from_dict(ck["config"], source=path) if "config" in ck else None
        it = ck.get("iteration")
        return cfg, (int(it) if it is not None else None)

    def load_model(self, path: str, device: str, overrides: Sequence[str] = ()):
        """Model of a checkpoint with ``key=value`` overrides of its saved config (e.g. the input
        normalisation); the backbone's own pretrained file is not read."""
        from maskrcnn.inference.checkpoint import load_model

        return load_model(path, device, overrides=overrides)[0]

    def predictor(self, variant: Variant, test_cfg: TestConfig, device: str):
        from maskrcnn.device import resolve_device
        from maskrcnn.inference.predictor import build_predictor

        dev = str(resolve_device(device))
        models = [self.load_model(w, dev, variant.set) for w in variant.weights]
        return build_predictor(models, test_cfg, device=dev)  # test_cfg.tta is the variant's

    def filter_predictions(self, inst: Instances, test_cfg: TestConfig) -> Instances:
        from maskrcnn.inference.filtering import filter_predictions

        return filter_predictions(inst, test_cfg)


# ------------------------------------------------------------------------------- helpers
def variant_test_config(base: TestConfig, v: Variant) -> TestConfig:
    """The config's test section with the variant's thresholds file, overrides and merge settings."""
    test_cfg = apply_thresholds(base, v.thresholds) if v.thresholds else base
    values = dict(v.test)
    if v.merge_iou is not None:
        values["merge_iou"] = v.merge_iou
    if v.min_views is not None:
        values["tta_min_views"] = v.min_views
    values["tta"] = list(v.tta)
    return override_test_config(test_cfg, values, source=f"variant {v.name!r}")


def data_settings(cfg: Config, split: str, max_images: int) -> dict:
    d = to_dict(cfg.data)
    for k in ("batch_size", "num_workers", "augment"):  # do not change which images or labels
        d.pop(k, None)
    return {"data": d, "split": split, "max_images": max_images}


def prediction_settings(v: Variant, test_cfg: TestConfig, data: dict) -> dict:
    """Everything that changes raw predictions; post-processing settings are left out on purpose.

    ``test.mask_thresh`` counts only when views are merged (TTA or an ensemble), where it decides
    which masks match; a single view's raw predictions do not depend on it.
    """
    settings = {
        "format": CACHE_FORMAT,
        "weights": [weights_fingerprint(w) for w in v.weights],
        "tta": list(v.tta),
        "merge_iou": test_cfg.merge_iou,
        "min_views": test_cfg.tta_min_views,
        "set": list(v.set),
        **data,
    }
    if len(v.weights) > 1 or v.tta:
        settings["merge_mask_thresh"] = list(test_cfg.mask_thresh)
    return settings


def class_name_of(sample, class_names: Sequence[str]) -> Optional[str]:
    """The image's class: ``meta['cell_type']`` when the reader gives it, else the most frequent
    ground-truth label's name when there are several classes."""
    meta = getattr(sample, "meta", None) or {}
    for key in ("cell_type", "class_name"):
        if meta.get(key):
            return str(meta[key])
    labels = sample.instances.labels
    if len(class_names) > 1 and labels.numel():
        c = int(torch.bincount(labels.cpu()).argmax())
        return class_names[c] if c < len(class_names) else str(c)
    return None


# ------------------------------------------------------------------------------- the run
@dataclass
class _GT:
    image_id: str
    masks: MaskList
    class_name: Optional[str]


def _ground_truth(spec: AblationSpec, data: dict, class_names: Sequence[str], dataset: Callable) -> Tuple[List[_GT], str]:
    """The split's ground truth, from ``labels_<hash>.csv`` when written before, else from the dataset."""
    from maskrcnn.formats.kaggle_csv import label_masks, read_labels, write_labels

    path = os.path.join(spec.output_dir, f"labels_{settings_key(data)}.csv")
    if os.path.isfile(path):
        labels = read_labels(path)
        return [_GT(i, label_masks(img, "row", source=path), img.cell_type) for i, img in labels.items()], path
    ds = dataset()
    n = len(ds) if spec.max_images <= 0 else min(len(ds), spec.max_images)
    gts = []
    for k in range(n):  # a loop over images
        s = ds[k]
        gts.append(_GT(str(s.image_id), s.instances.masks, class_name_of(s, class_names)))
    write_labels(path, [(g.image_id, g.masks, g.class_name) for g in gts])
    return gts, path


def split_class_names(cfg: Config, dataset) -> List[str]:
    """The class names in label order: ``data.classes``, else the dataset's (its reader's built-in
    list, e.g. synthetic or Sartorius cell types); ``dataset`` is called only in the second case."""
    if cfg.data.classes:
        return list(cfg.data.classes)
    return [str(c) for c in getattr(dataset(), "class_names", ()) or ()]


def run_ablation(spec: AblationSpec, backend: Optional[Backend] = None, device: Optional[str] = None,
                 log=print, progress: str = "off") -> List[Dict[str, Any]]:
    """Run every variant of ``spec``; returns the table rows (also written to the output files).

    ``progress``: ``bar``, ``lines`` or ``off`` (``maskrcnn.progress``) for the predictions and the
    scoring of each variant.
    """
    backend = backend or Backend()
    device = device or spec.device
    cfg = load_config(spec.config)
    holder: dict = {}

    def dataset():  # read once, and only when needed
        return holder.setdefault("ds", backend.dataset(cfg, spec.split))

    # The cache records the class names, so that `evaluate.py tune` needs no --classes.
    class_names = split_class_names(cfg, dataset)
    os.makedirs(spec.output_dir, exist_ok=True)
    data = data_settings(cfg, spec.split, spec.max_images)
    gts, labels_path = _ground_truth(spec, data, class_names, dataset)
    log(f"{len(gts)} images of split {spec.split!r}; ground truth in {labels_path}")
    rows, results = [], {}
    for v in spec.variants:
        test_cfg = variant_test_config(cfg.test, v)
        cache = PredictionCache(os.path.join(spec.output_dir, "cache"), prediction_settings(v, test_cfg, data))
        _fill_cache(cache, v, test_cfg, [g.image_id for g in gts], class_names, labels_path, backend, dataset,
                    device, log, progress)
        row, summary = _score_variant(v, cache, gts, test_cfg, backend, progress)
        rows.append(row)
        results[v.name] = {"summary": summary, "cache": cache.dir, "test": to_dict(test_cfg)}
        log(f"[{v.name}] mAP {summary['mAP']:.4f}")
    _write_outputs(spec, rows, results, class_names, labels_path, log)
    return rows


def _fill_cache(cache: PredictionCache, v: Variant, test_cfg: TestConfig, image_ids: Sequence[str],
                class_names: Sequence[str], labels_path: str, backend: Backend, dataset: Callable, device: str,
                log, progress: str) -> None:
    """Predict the images missing from the variant's cache (the model is loaded only when some are)."""
    if cache.is_complete(image_ids):
        log(f"[{v.name}] cached: {cache.dir}")
        return
    missing = [k for k, i in enumerate(image_ids) if not cache.has(i)]
    log(f"[{v.name}] predicting {len(missing)} of {len(image_ids)} images -> {cache.dir}")
    if missing:
        predictor = backend.predictor(v, test_cfg, device)
        ds = dataset()
        for k in track(missing, f"[{v.name}] predict", mode=progress):
            s = ds[k]
            if str(s.image_id) != image_ids[k]:
                raise RuntimeError(f"dataset order changed: image {k} is {s.image_id}, labels say {image_ids[k]}")
            cache.put(image_ids[k], predict_raw(predictor, s.image))
    cache.mark_complete(image_ids, class_names, extra={"labels": os.path.abspath(labels_path)})


def _score_variant(v: Variant, cache: PredictionCache, gts: Sequence[_GT], test_cfg: TestConfig, backend: Backend,
                   progress: str) -> Tuple[Dict[str, str], dict]:
    """The variant's table row and Kaggle summary, its cached predictions post-processed by ``test_cfg``."""
    ev = KaggleEvaluator()
    for g in track(gts, f"[{v.name}] score", mode=progress):  # a loop over images
        ev.add(g.image_id, backend.filter_predictions(cache.get(g.image_id), test_cfg), g.masks, g.class_name)
    summary = ev.summary()
    infos = [backend.checkpoint_info(w) for w in v.weights]
    row = describe(v, infos)
    row["mAP"] = f"{summary['mAP']:.4f}"
    for name, val in summary["per_class"].items():
        row[name] = f"{val:.4f}"
    return row, summary


def _write_outputs(spec: AblationSpec, rows: List[Dict[str, str]], results: Dict[str, dict],
                   class_names: Sequence[str], labels_path: str, log) -> None:
    """``ablation.md``, ``ablation.csv`` and ``results.json``; logs the table and how to tune on it."""
    per_class_cols = per_class_columns([r["summary"] for r in results.values()], class_names)
    md, text_csv = format_tables(rows, per_class_cols)
    atomic_write_text(os.path.join(spec.output_dir, "ablation.md"), md)
    atomic_write_text(os.path.join(spec.output_dir, "ablation.csv"), text_csv)
    atomic_json({"spec": dataclasses.asdict(spec), "labels": labels_path, "results": results},
                os.path.join(spec.output_dir, "results.json"))
    log(md)
    first = results[spec.variants[0].name]["cache"]
    if not os.path.relpath(first).startswith(".."):
        first = os.path.relpath(first)  # as the user would type it from here
    log(f"tune thresholds on a variant's cached predictions, e.g.: python evaluate.py tune --predictions {first} "
        f"--out tuned.yaml")


def predict_raw(predictor, image: torch.Tensor) -> Instances:
    """The one call into the Predictor per image."""
    return predictor.predict_raw(image)


def run_ablation_file(path: str, device: Optional[str] = None, max_images: Optional[int] = None,
                      backend: Optional[Backend] = None, progress: str = "off") -> List[Dict[str, Any]]:
    spec = load_ablation_spec(path)
    if max_images is not None:
        spec.max_images = int(max_images)
    return run_ablation(spec, backend=backend, device=device, progress=progress)


def write_split_labels(config: str, split: str, out: str, order: str = "row", overrides: Sequence[str] = (),
                       backend: Optional[Backend] = None) -> int:
    """Write the ground truth of a dataset split as a label CSV (``evaluate.py labels``)."""
    from maskrcnn.formats.kaggle_csv import write_labels

    cfg = load_config(config, overrides)
    ds = (backend or Backend()).dataset(cfg, split)
    names = split_class_names(cfg, lambda: ds)
    n = len(ds)

    def items():
        for k in range(n):
            s = ds[k]
            yield str(s.image_id), s.instances.masks, class_name_of(s, names)

    write_labels(out, items(), order=order)
    return n
