"""Configuration: YAML files -> nested frozen dataclasses, each key declared and checked once.

- ``keys.py``: how a key is declared (``key(default, *checks, resume=...)``) and the one checker
  every section runs on construction; ``model.py`` and ``sections.py``: the sections themselves.
- ``loading.py``: files with their ``base: other.yaml`` chain, ``--set a.b=v`` overrides (values
  parsed as YAML: ``--set solver.lr=0.01``, ``--set model.anchors.sizes=[8,16,32,64,128]``),
  unknown keys (with the nearest valid one), retired keys; ``yamlfile.py``: the YAML reader.
- ``thresholds.py``: ``apply_thresholds`` / ``override_test_config`` replace ``test`` fields (tuned
  thresholds, command-line settings), checked like a config file.

Modules never receive the whole config: each maps its own section to explicit constructor
arguments in a ``from_config`` classmethod (e.g. ``maskrcnn.model.rpn.RPN.from_config``).
"""
from maskrcnn.config.keys import ConfigError, config_changes
from maskrcnn.config.loading import (RETIRED_KEYS, config_keys, did_you_mean, dump_config, from_dict, load_config,
                                     parse_overrides, reject_repeated_keys, suggest_key, to_dict)
from maskrcnn.config.model import (COMPILE_MODES, MAX_CLASSES, NORMS, AnchorConfig, BackboneConfig, FPNConfig,
                                   InputConfig, MaskHeadConfig, ModelConfig, RoIHeadsConfig, RPNConfig)
from maskrcnn.config.sections import (AMP_MODES, DATA_FORMATS, IMAGE_CLASS_MODES, OPTIMIZERS, SCHEDULES,
                                      AugmentConfig, Config, DataConfig, PseudoConfig, SolverConfig, SyntheticConfig,
                                      TestConfig, TrainConfig, may_change_on_resume, resume_changes)
from maskrcnn.config.thresholds import (PREDICT_MODEL_KEYS, apply_thresholds, check_class_counts, override_test_config,
                                        split_predict_overrides)
from maskrcnn.config.yamlfile import load_yaml, read_yaml_mapping

__all__ = [
    "AMP_MODES", "COMPILE_MODES", "DATA_FORMATS", "IMAGE_CLASS_MODES", "MAX_CLASSES", "NORMS", "OPTIMIZERS",
    "PREDICT_MODEL_KEYS", "RETIRED_KEYS", "SCHEDULES",
    "AnchorConfig", "AugmentConfig", "BackboneConfig", "Config", "ConfigError", "DataConfig", "FPNConfig",
    "InputConfig", "MaskHeadConfig", "ModelConfig", "PseudoConfig", "RPNConfig", "RoIHeadsConfig", "SolverConfig",
    "SyntheticConfig", "TestConfig", "TrainConfig",
    "apply_thresholds", "check_class_counts", "config_changes", "config_keys", "did_you_mean", "dump_config",
    "from_dict", "load_config", "load_yaml", "may_change_on_resume", "override_test_config", "parse_overrides",
    "read_yaml_mapping", "reject_repeated_keys", "resume_changes", "split_predict_overrides", "suggest_key", "to_dict",
]
