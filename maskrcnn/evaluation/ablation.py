"""Ablation runs: variants x validation split -> Kaggle mAP tables (``python evaluate.py ablate``).

An ablation file (YAML)::

    config: r50.yaml                  # its data section gives the validation split; its test
                                      # section the default post-processing
    output_dir: ../output/ablation    # tables, caches and the split's label CSV go here
    split: val                        # train | val | all
    max_images: 0                     # 0: the whole split
    device: auto
    defaults: {tta: []}               # merged into every variant
    variants:
      - name: R50 12k
        weights: ../output/r50/model_final.pth   # or a list: an ensemble
        tta: [hflip, vflip]                      # prediction-relevant (part of the cache key)
        merge_iou: 0.5                           # prediction-relevant
        min_views: 1                             # prediction-relevant
        set: [model.input.pixel_std=[0.2,0.2,0.2]]   # model overrides, prediction-relevant
        test: {score_thresh: [0.3, 0.5, 0.6]}    # post-processing only (shares the cache)
        thresholds: tuned.yaml                   # post-processing from `evaluate.py tune`
        columns: {Backbone: R50 (LIVECell)}      # override cells of the table

Relative paths (``config``, ``output_dir``, ``weights``, ``thresholds``) are relative to the folder of
the ablation file, as ``base:`` in configs: the file above, saved as ``configs/ablation.yaml``, reads
``configs/r50.yaml`` and ``output/r50/model_final.pth`` from any current directory, and a spec kept
next to its checkpoints moves with them; a ``weights`` entry that is no file there may name a model of
the zoo (``weights: nuclei``). ``config``, ``weights`` and ``thresholds`` must exist when
the file is read (before any prediction); one that does not is one error naming the key, the path as
written and as resolved, and, when the path exists relative to the current directory instead, the
value to write. (Paths inside the config itself, such as ``data.root``, are relative to the current
directory, as for ``train.py``.) A ``configs/ablation_example.yaml`` runs the README's small model.

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

import csv
import dataclasses
import io
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from maskrcnn.config import (Config, ConfigError, TestConfig, apply_thresholds, load_config, override_test_config,
                             read_yaml_mapping, to_dict)
from maskrcnn.formats.prediction_cache import PredictionCache, settings_key, weights_fingerprint
from maskrcnn.fileio import atomic_json, atomic_write_text
from maskrcnn.evaluation.kaggle import KaggleEvaluator
from maskrcnn.progress import track
from maskrcnn.structures import Instances, MaskList

CACHE_FORMAT = 2  # bump when the cache's file layout changes
TABLE_COLUMNS = ("Variant", "Backbone", "Iterations", "Ensemble", "Normalization", "Color aug", "TTA", "mAP")
_TOP_KEYS = ("config", "output_dir", "split", "max_images", "device", "defaults", "variants")
_VARIANT_KEYS = ("name", "weights", "tta", "merge_iou", "min_views", "set", "test", "thresholds", "columns")


# ------------------------------------------------------------------------------ the spec
@dataclass
class Variant:
    name: str
    weights: List[str]
    tta: List[str] = field(default_factory=list)
    merge_iou: Optional[float] = None  # None: the config's test.merge_iou
    min_views: Optional[int] = None  # None: the config's test.tta_min_views
    set: List[str] = field(default_factory=list)
    test: Dict[str, Any] = field(default_factory=dict)
    thresholds: str = ""
    columns: Dict[str, str] = field(default_factory=dict)


@dataclass
class AblationSpec:
    config: str
    output_dir: str
    variants: List[Variant]
    split: str = "val"
    max_images: int = 0
    device: str = "auto"


def _as_list(v, key: str, where: str) -> list:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list):
        raise ConfigError(f"{where}: {key} must be a list, got {v!r}")
    return list(v)


def load_ablation_spec(path: str) -> AblationSpec:
    """Parse and check an ablation YAML; relative paths are taken from the file's folder (module doc).

    Raises ConfigError naming the file, the variant and the key for unknown keys, missing
    ``config``/``variants``/``weights``, duplicate names, values of the wrong type, or a
    ``config``/``weights``/``thresholds`` file that does not exist (``check_spec_paths``).
    """
    data = read_yaml_mapping(path, "ablation")
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(_TOP_KEYS)}")
    base = os.path.dirname(os.path.abspath(path))

    def rel(p: str) -> str:
        return p if not p or os.path.isabs(p) else os.path.normpath(os.path.join(base, p))

    def weights_file(p: str) -> str:  # a path relative to the file, else a model zoo name (nuclei)
        from maskrcnn.inference.zoo import zoo_path

        return rel(p) if os.path.isfile(rel(p)) or zoo_path(p) is None else zoo_path(p)

    if not data.get("config"):
        raise ConfigError(f"{path}: 'config' (the YAML config with the data and test sections) is required")
    raw_variants = data.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise ConfigError(f"{path}: 'variants' must be a non-empty list")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: 'defaults' must be a mapping")
    variants, names = [], set()
    for k, rv in enumerate(raw_variants):
        where = f"{path}: variants[{k}]"
        if not isinstance(rv, dict):
            raise ConfigError(f"{where}: must be a mapping, got {rv!r}")
        v = {**defaults, **rv}
        unknown = sorted(set(v) - set(_VARIANT_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(_VARIANT_KEYS)}")
        name = str(v.get("name") or "").strip()
        if not name:
            raise ConfigError(f"{where}: 'name' is required")
        if name in names:
            raise ConfigError(f"{where}: duplicate variant name {name!r}")
        names.add(name)
        weights = [weights_file(str(w)) for w in _as_list(v.get("weights"), "weights", where)]
        if not weights:
            raise ConfigError(f"{where} ({name}): 'weights' is required (a checkpoint path or a list)")
        for key, tp in (("test", dict), ("columns", dict)):
            if v.get(key) is not None and not isinstance(v[key], tp):
                raise ConfigError(f"{where} ({name}): {key} must be a mapping, got {v[key]!r}")
        try:
            merge_iou = None if v.get("merge_iou") is None else float(v["merge_iou"])
            min_views = None if v.get("min_views") is None else int(v["min_views"])
        except (TypeError, ValueError):
            raise ConfigError(f"{where} ({name}): merge_iou must be a number and min_views an integer") from None
        variants.append(Variant(
            name=name, weights=weights, tta=[str(t) for t in _as_list(v.get("tta"), "tta", where)],
            merge_iou=merge_iou, min_views=min_views,
            set=[str(s) for s in _as_list(v.get("set"), "set", where)], test=dict(v.get("test") or {}),
            thresholds=rel(str(v.get("thresholds") or "")),
            columns={str(a): str(b) for a, b in (v.get("columns") or {}).items()},
        ))
    split = str(data.get("split", "val"))
    if split not in ("train", "val", "all"):
        raise ConfigError(f"{path}: split must be train, val or all, got {split!r}")
    try:
        max_images = int(data.get("max_images", 0) or 0)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: max_images must be an integer, got {data.get('max_images')!r}") from None
    spec = AblationSpec(rel(str(data["config"])), rel(str(data.get("output_dir") or "output/ablation")),
                        variants, split, max_images, str(data.get("device", "auto")))
    written = {"config": str(data["config"])}
    for k, rv in enumerate(raw_variants):
        v = {**defaults, **rv}
        written[f"variants[{k}]"] = {"weights": [str(w) for w in _as_list(v.get("weights"), "weights", path)],
                                     "thresholds": str(v.get("thresholds") or "")}
    check_spec_paths(spec, path, written)
    return spec


def _missing_path(spec_path: str, key: str, as_written: str, resolved: str) -> ConfigError:
    """The one error for an input of an ablation file that is not there (see the module doc)."""
    msg = (f"{spec_path}: {key}: {as_written} not found: relative paths are relative to the ablation file's "
           f"folder, so this is {resolved}")
    if not os.path.isabs(as_written) and os.path.exists(as_written):
        fix = os.path.relpath(os.path.abspath(as_written), os.path.dirname(os.path.abspath(spec_path)))
        msg += f"; it exists relative to the current directory: write {fix} (or an absolute path)"
    return ConfigError(msg)


def check_spec_paths(spec: AblationSpec, spec_path: str, written: Dict[str, Any]) -> None:
    """Raise ConfigError (``_missing_path``) for the first ``config``, ``weights`` or ``thresholds``
    file of ``spec`` that does not exist; ``written`` holds the values as the file spells them."""
    if not os.path.isfile(spec.config):
        raise _missing_path(spec_path, "config", written["config"], spec.config)
    for k, v in enumerate(spec.variants):
        raw = written[f"variants[{k}]"]
        for w, w_raw in zip(v.weights, raw["weights"]):
            if not os.path.isfile(w):
                raise _missing_path(spec_path, f"variants[{k}] ({v.name}): weights", w_raw, w)
        if v.thresholds and not os.path.isfile(v.thresholds):
            raise _missing_path(spec_path, f"variants[{k}] ({v.name}): thresholds", raw["thresholds"], v.thresholds)


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


_BACKBONES = {"resnet18": "R18", "resnet34": "R34", "resnet50": "R50", "resnet101": "R101", "resnext101_32x8d": "X101-32x8d"}
_NORMS = {"frozen_bn": "FrozenBN", "bn": "BN", "gn": "GN"}


def _join(values: Sequence[str]) -> str:
    out = []
    for x in values:
        if x not in out:
            out.append(x)
    return " + ".join(out)


def describe(v: Variant, infos: Sequence[Tuple[Optional[Config], Optional[int]]]) -> Dict[str, str]:
    """Table cells of a variant from its checkpoints' configs; ``v.columns`` overrides any."""
    cfgs = [c for c, _ in infos]
    cells = {
        "Variant": v.name,
        "Backbone": _join([_BACKBONES.get(c.model.backbone.name, c.model.backbone.name) if c else "?" for c in cfgs]),
        "Iterations": _join([str(it) if it is not None else "?" for _, it in infos]),
        "Ensemble": "no" if len(v.weights) == 1 else f"{len(v.weights)} models",
        "Normalization": _join([_NORMS.get(c.model.backbone.norm, c.model.backbone.norm) if c else "?" for c in cfgs]),
        "Color aug": _join(["yes" if c and (c.data.augment.brightness or c.data.augment.contrast or c.data.augment.gamma)
                            else ("no" if c else "?") for c in cfgs]),
        "TTA": "+".join(v.tta) if v.tta else "none",
    }
    cells.update(v.columns)
    return cells


def format_tables(rows: List[Dict[str, str]], class_names: Sequence[str]) -> Tuple[str, str]:
    """(Markdown, CSV) texts of the ablation table; ``rows`` hold TABLE_COLUMNS and class cells."""
    cols = list(TABLE_COLUMNS) + [c for c in class_names]
    md = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if c in TABLE_COLUMNS[:-1] else "---:" for c in cols) + "|"]
    for r in rows:
        md.append("| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in cols) + " |")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([r.get(c, "") for c in cols])
    return "\n".join(md) + "\n", buf.getvalue()


# ------------------------------------------------------------------------------- the run
@dataclass
class _GT:
    image_id: str
    masks: MaskList
    class_name: Optional[str]


def _ground_truth(spec: AblationSpec, cfg: Config, backend: Backend, data: dict, class_names: Sequence[str],
                  dataset_holder: dict) -> Tuple[List[_GT], str]:
    """The split's ground truth, from ``labels_<hash>.csv`` when written before, else from the dataset."""
    from maskrcnn.formats.kaggle_csv import label_masks, read_labels, write_labels

    path = os.path.join(spec.output_dir, f"labels_{settings_key(data)}.csv")
    if os.path.isfile(path):
        labels = read_labels(path)
        return [_GT(i, label_masks(img, "row", source=path), img.cell_type) for i, img in labels.items()], path
    ds = dataset_holder.setdefault("ds", backend.dataset(cfg, spec.split))
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
    # The cache records the class names, so that `evaluate.py tune` needs no --classes.
    class_names = split_class_names(cfg, lambda: holder.setdefault("ds", backend.dataset(cfg, spec.split)))
    os.makedirs(spec.output_dir, exist_ok=True)
    data = data_settings(cfg, spec.split, spec.max_images)
    gts, labels_path = _ground_truth(spec, cfg, backend, data, class_names, holder)
    image_ids = [g.image_id for g in gts]
    log(f"{len(gts)} images of split {spec.split!r}; ground truth in {labels_path}")
    rows, results = [], {}
    for v in spec.variants:
        test_cfg = variant_test_config(cfg.test, v)
        cache = PredictionCache(os.path.join(spec.output_dir, "cache"), prediction_settings(v, test_cfg, data))
        if not cache.is_complete(image_ids):
            missing = [k for k, i in enumerate(image_ids) if not cache.has(i)]
            log(f"[{v.name}] predicting {len(missing)} of {len(image_ids)} images -> {cache.dir}")
            if missing:
                predictor = backend.predictor(v, test_cfg, device)
                ds = holder.setdefault("ds", backend.dataset(cfg, spec.split))
                for k in track(missing, f"[{v.name}] predict", mode=progress):
                    s = ds[k]
                    if str(s.image_id) != image_ids[k]:
                        raise RuntimeError(f"dataset order changed: image {k} is {s.image_id}, labels say {image_ids[k]}")
                    cache.put(image_ids[k], predict_raw(predictor, s.image))
            cache.mark_complete(image_ids, class_names, extra={"labels": os.path.abspath(labels_path)})
        else:
            log(f"[{v.name}] cached: {cache.dir}")
        ev = KaggleEvaluator()
        for g in track(gts, f"[{v.name}] score", mode=progress):  # a loop over images
            ev.add(g.image_id, backend.filter_predictions(cache.get(g.image_id), test_cfg), g.masks, g.class_name)
        summary = ev.summary()
        infos = [backend.checkpoint_info(w) for w in v.weights]
        row = describe(v, infos)
        row["mAP"] = f"{summary['mAP']:.4f}"
        for name, val in summary["per_class"].items():
            row[name] = f"{val:.4f}"
        rows.append(row)
        results[v.name] = {"summary": summary, "cache": cache.dir, "test": to_dict(test_cfg)}
        log(f"[{v.name}] mAP {summary['mAP']:.4f}")
    seen = []
    for r in results.values():
        for name in r["summary"]["per_class"]:
            if name not in seen:
                seen.append(name)
    per_class_cols = [c for c in class_names if c in seen] + [c for c in seen if c not in class_names]
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
    return rows


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
