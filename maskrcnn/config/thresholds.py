"""Post-processing settings from outside a config file: tuned thresholds files, command-line
``--set test.*`` and the few ``model.*`` keys predict-time commands may set."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Sequence, Tuple

from maskrcnn.config.keys import ConfigError
from maskrcnn.config.loading import build_section, config_keys, did_you_mean, parse_overrides, to_dict
from maskrcnn.config.sections import Config, TestConfig
from maskrcnn.config.yamlfile import read_yaml_mapping


def check_class_counts(t: TestConfig, num_classes: int, source: str = "") -> None:
    """Raise ConfigError unless every per-class ``test.*`` list holds one value or ``num_classes``."""
    for key in ("score_thresh", "mask_thresh", "min_area"):
        n = len(getattr(t, key))
        if n not in (1, num_classes):
            raise ConfigError(
                f"test.{key} has {n} values but the model has {num_classes} classes "
                f"(model.roi_heads.num_classes); give one per class or one for all" + (f" ({source})" if source else "")
            )


def override_test_config(test_cfg: TestConfig, values: Dict[str, Any], source: str = "overrides") -> TestConfig:
    """``test_cfg`` with ``values`` (TestConfig field -> value) replaced, checked like a config file.

    Raises ConfigError naming ``source`` and the key for an unknown field or a bad value.
    """
    merged = dict(to_dict(test_cfg))
    merged.update(values)
    try:
        return build_section(Config, {"test": merged}).test
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


# Model keys that change only how a trained model is run, not what it learnt: predict.py (and
# python -m maskrcnn pseudo_label) take them with --set. Other model.* keys are fixed by the
# weights (the architecture) or only act in training.
PREDICT_MODEL_KEYS = (
    "model.rpn.pre_nms_topk_test", "model.rpn.post_nms_topk_test", "model.rpn.nms_thresh", "model.rpn.min_size",
    "model.roi_heads.score_thresh", "model.roi_heads.nms_thresh", "model.roi_heads.detections_per_image",
    "model.input.normalize", "model.input.percentile_low", "model.input.percentile_high",
    "model.input.scale", "model.input.min_size_test", "model.input.max_size_test", "model.input.object_diameter",
)


def split_predict_overrides(items: Sequence[str], source: str = "--set") -> Tuple[Dict[str, Any], list]:
    """Predict-time ``--set`` items -> ``(test.* values as a dict, model.* items as key=value strings)``.

    Only ``test.*`` keys and ``PREDICT_MODEL_KEYS`` are accepted: a key of the config that is fixed
    at training (``model.backbone.name``, ``solver.lr``...) is a ConfigError that says so and lists
    the predict-time keys; an unknown key one that suggests the nearest valid one.
    """
    test: Dict[str, Any] = {}
    model = []
    valid = [k for k in config_keys() if k.startswith("test.")] + list(PREDICT_MODEL_KEYS)
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value ({source})")
        key = item.split("=", 1)[0].strip()
        if key.startswith("test.") and key in valid:
            test.update(parse_overrides([item])["test"])
        elif key in PREDICT_MODEL_KEYS:
            model.append(item)
        elif key in config_keys():
            raise ConfigError(
                f"{source} {key}: fixed when the model was trained (its architecture or a training setting), "
                f"not settable at predict time; {source} takes test.* keys and "
                + ", ".join(PREDICT_MODEL_KEYS))
        else:
            raise ConfigError(f"{source}: unknown key '{key}'{did_you_mean(key, valid)}; predict-time keys: "
                              "test.* and " + ", ".join(PREDICT_MODEL_KEYS))
    return test, model


def apply_thresholds(test_cfg: TestConfig, path: str) -> TestConfig:
    """``test_cfg`` with the fields of a thresholds YAML file (``evaluate.py tune`` writes one).

    The file holds TestConfig fields, either at the top level or under a ``test:`` section (other
    top-level sections are then ignored, e.g. tuning metadata). Unknown ``test`` keys are errors.
    """
    data = read_yaml_mapping(path, "thresholds", missing=FileNotFoundError)
    section = data["test"] if "test" in data else data
    beside = sorted(k for k in data if k != "test" and k in {f.name for f in dataclasses.fields(TestConfig)})
    if "test" in data and beside:  # top-level test keys next to a test: section would be ignored
        raise ConfigError(f"{path}: {', '.join(beside)} at the top level beside a 'test:' section would be ignored; "
                          "put them inside 'test:'")
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: 'test' must be a mapping, got {section!r}")
    return override_test_config(test_cfg, section, source=path)
