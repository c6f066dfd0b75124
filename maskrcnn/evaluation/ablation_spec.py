"""The ablation file (YAML) of ``python evaluate.py ablate``: its keys, checks and paths.

An ablation file::

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
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from maskrcnn.config import ConfigError, read_yaml_mapping

_TOP_KEYS = ("config", "output_dir", "split", "max_images", "device", "defaults", "variants")
_VARIANT_KEYS = ("name", "weights", "tta", "merge_iou", "min_views", "set", "test", "thresholds", "columns")


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


def _unknown_keys(where: str, found, valid) -> None:
    unknown = sorted(set(found) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")


def load_ablation_spec(path: str) -> AblationSpec:
    """Parse and check an ablation YAML; relative paths are taken from the file's folder (module doc).

    Raises ConfigError naming the file, the variant and the key for unknown keys, missing
    ``config``/``variants``/``weights``, duplicate names, values of the wrong type, or a
    ``config``/``weights``/``thresholds`` file that does not exist (``check_spec_paths``).
    """
    data = read_yaml_mapping(path, "ablation")
    _unknown_keys(path, data, _TOP_KEYS)
    base = os.path.dirname(os.path.abspath(path))

    def rel(p: str) -> str:
        return p if not p or os.path.isabs(p) else os.path.normpath(os.path.join(base, p))

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
        v = _parse_variant(f"{path}: variants[{k}]", rv, defaults, names, rel)
        names.add(v.name)
        variants.append(v)
    split = str(data.get("split", "val"))
    if split not in ("train", "val", "all"):
        raise ConfigError(f"{path}: split must be train, val or all, got {split!r}")
    try:
        max_images = int(data.get("max_images", 0) or 0)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: max_images must be an integer, got {data.get('max_images')!r}") from None
    spec = AblationSpec(rel(str(data["config"])), rel(str(data.get("output_dir") or "output/ablation")),
                        variants, split, max_images, str(data.get("device", "auto")))
    check_spec_paths(spec, path, _as_written(path, data, raw_variants, defaults))
    return spec


def _parse_variant(where: str, rv, defaults: dict, names: set, rel: Callable[[str], str]) -> Variant:
    """One entry of ``variants`` merged over ``defaults``, checked (``names``: the earlier variants')."""
    if not isinstance(rv, dict):
        raise ConfigError(f"{where}: must be a mapping, got {rv!r}")
    v = {**defaults, **rv}
    _unknown_keys(where, v, _VARIANT_KEYS)
    name = str(v.get("name") or "").strip()
    if not name:
        raise ConfigError(f"{where}: 'name' is required")
    if name in names:
        raise ConfigError(f"{where}: duplicate variant name {name!r}")

    def weights_file(p: str) -> str:  # a path relative to the file, else a model zoo name (nuclei)
        from maskrcnn.inference.zoo import zoo_path

        return rel(p) if os.path.isfile(rel(p)) or zoo_path(p) is None else zoo_path(p)

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
    return Variant(
        name=name, weights=weights, tta=[str(t) for t in _as_list(v.get("tta"), "tta", where)],
        merge_iou=merge_iou, min_views=min_views,
        set=[str(s) for s in _as_list(v.get("set"), "set", where)], test=dict(v.get("test") or {}),
        thresholds=rel(str(v.get("thresholds") or "")),
        columns={str(a): str(b) for a, b in (v.get("columns") or {}).items()},
    )


def _as_written(path: str, data: dict, raw_variants: list, defaults: dict) -> Dict[str, Any]:
    """The input paths as the file spells them, for the errors of ``check_spec_paths``."""
    written = {"config": str(data["config"])}
    for k, rv in enumerate(raw_variants):
        v = {**defaults, **rv}
        written[f"variants[{k}]"] = {"weights": [str(w) for w in _as_list(v.get("weights"), "weights", path)],
                                     "thresholds": str(v.get("thresholds") or "")}
    return written


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
