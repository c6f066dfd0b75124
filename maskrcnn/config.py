"""Configuration: YAML files -> nested frozen dataclasses.

- ``base: other.yaml`` (relative to the file) is loaded first and overridden key by key.
- ``--set a.b=v`` overrides (values parsed as YAML: ``--set solver.lr=0.01``,
  ``--set model.anchors.sizes=[8,16,32,64,128]``).
- YAML is read with one loader (``load_yaml``): PyYAML's YAML 1.1 rules, except that a number
  in exponent form without a dot (``1e-4``, ``5E3``, ``-2.5e-3``) is a float, as YAML 1.2 and
  Python read it (YAML 1.1 makes ``1e-4`` a string).
- An unknown key is an error that suggests the nearest valid key (``did you mean
  solver.max_iter?``: the same name in another section, else the closest by ``difflib``) and lists
  the valid keys at that level; a value of the wrong type is an error naming the key. Keys that older versions wrote (``RETIRED_KEYS``) are dropped from
  files and saved checkpoint configs, with a warning when they held a non-default value.
- ``apply_thresholds`` / ``override_test_config`` replace ``test`` fields (tuned thresholds,
  command-line settings), checked like a config file.

Modules never receive the whole config: builders (e.g. ``maskrcnn.model.build_model``) map the
relevant section to explicit constructor arguments.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import os
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import yaml

from maskrcnn.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad configuration file, key or value; the message names the key and what is wrong."""


MAX_CLASSES = 1000  # model.roi_heads.num_classes: beyond this the heads' weights alone are a mistake's size


def _check_positive(key: str, values: Sequence[float]) -> None:
    """ConfigError unless ``values`` is a non-empty list of finite numbers > 0."""
    if len(values) == 0:
        raise ConfigError(f"{key} is empty; give at least one value")
    for k, v in enumerate(values):
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{key}[{k}] must be a finite number > 0, got {v!r}")


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class BackboneConfig:
    name: str = "resnet50"  # resnet50 | resnet101 | resnext101_32x8d | resnet18 | resnet34
    norm: str = "frozen_bn"  # frozen_bn | gn | bn
    freeze_at: int = 2  # 0: train all; 1: freeze stem; k: freeze stem and res2..res{k}
    weights: str = ""  # local file: torchvision .pth or detectron2 .pkl; empty = random init
    width_per_group: int = 64
    groups: int = 1
    stem_out_channels: int = 64
    res2_out_channels: int = 0  # 0: standard (256 for ResNet-50+, 64 for ResNet-18/34); halve for slim nets
    stride_in_1x1: bool = False  # true for MSRA/Caffe2 weights (R-50.pkl, detectron2 COCO R-50/101)
    weights_channel_order: str = "auto"  # auto | rgb | bgr: channel order the weights' first conv expects
    weights_pixel_std: Tuple[float, ...] = ()  # std (0-255 units) the weights expect; empty: auto


@dataclass(frozen=True)
class FPNConfig:
    out_channels: int = 256
    norm: str = ""  # "" | gn
    top_block: str = "maxpool"  # P6 from P5 by max-pooling (as in Mask R-CNN's FPN)


@dataclass(frozen=True)
class AnchorConfig:
    # One size per FPN level P2..P6 (cells are small: 8 px at P2).
    sizes: Tuple[float, ...] = (8.0, 16.0, 32.0, 64.0, 128.0)
    aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    scales_per_octave: int = 1
    offset: float = 0.0  # anchor centres at (cell + offset) * stride; 0 as detectron2/torchvision

    def __post_init__(self):
        _check_positive("model.anchors.sizes", self.sizes)
        _check_positive("model.anchors.aspect_ratios", self.aspect_ratios)
        if self.scales_per_octave < 1:
            raise ConfigError(f"model.anchors.scales_per_octave must be >= 1, got {self.scales_per_octave}")


@dataclass(frozen=True)
class RPNConfig:
    pre_nms_topk_train: int = 2000  # per level
    post_nms_topk_train: int = 2000  # per image
    pre_nms_topk_test: int = 2000
    post_nms_topk_test: int = 2000  # must exceed the detection cap (up to ~800 cells per image)
    nms_thresh: float = 0.7
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    min_size: float = 0.0
    smooth_l1_beta: float = 1.0 / 9.0
    # Training: an anchor that is not positive and lies inside an ignore region of the ground truth
    # (label -1, e.g. an uncertain pseudo-label) by intersection over its own area >= this is not sampled.
    ignore_iof_thresh: float = 0.5


@dataclass(frozen=True)
class RoIHeadsConfig:
    num_classes: int = 1
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    box_pooler_resolution: int = 7
    pooler_sampling_ratio: int = 0
    box_fc_dim: int = 1024
    bbox_reg_weights: Tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 1000
    smooth_l1_beta: float = 0.0
    proposal_append_gt: bool = True  # add GT boxes to the proposals in training
    ignore_iof_thresh: float = 0.5  # as rpn.ignore_iof_thresh, for the sampled proposals

    def __post_init__(self):
        if not 1 <= self.num_classes <= MAX_CLASSES:
            raise ConfigError(f"model.roi_heads.num_classes must be in [1, {MAX_CLASSES}], got {self.num_classes}")


@dataclass(frozen=True)
class MaskHeadConfig:
    pooler_resolution: int = 14
    resolution: int = 28  # 28 (default) or 56
    num_convs: int = 4
    conv_dim: int = 256
    norm: str = ""  # "" | gn
    # Initial bias of the mask logits. The predictor reads ReLU features, so where they are zero
    # (most background) its probability is sigmoid(bias); from 0 (p = 0.5) AdamW moves the bias
    # by at most ~lr per step, and a short run ends with background near 0.45 (boxy masks).
    predictor_bias_init: float = 0.0


@dataclass(frozen=True)
class InputConfig:
    in_channels: int = 3  # grayscale images are repeated to 3 channels when this is 3
    # Training resize: shortest side drawn from min_size_train, capped by max_size; or a fixed scale.
    min_size_train: Tuple[int, ...] = (0,)  # 0: no resize (keep the image's own size)
    max_size_train: int = 0
    min_size_test: int = 0
    max_size_test: int = 0
    scale: float = 1.0  # multiply image size by this factor (upscaling helps small cells)
    pixel_mean: Tuple[float, ...] = (0.485, 0.456, 0.406)  # images are in [0, 1]
    pixel_std: Tuple[float, ...] = (0.229, 0.224, 0.225)
    size_divisibility: int = 32
    # Intensity normalisation before pixel_mean/std, per image and channel (docs/data.md):
    # none = as read ([0, 1]; 16-bit data / 65535) | percentile = percentile_low -> 0 and
    # percentile_high -> 1, not clipped (StarDist/Cellpose style, for 12/16-bit microscopy images).
    normalize: str = "none"
    percentile_low: float = 1.0
    percentile_high: float = 99.8
    # Typical object diameter in the training images' pixels (before ``scale``): the median
    # equivalent diameter 2 * sqrt(area / pi) of the training objects; 0: not recorded. predict.py
    # --diameter D maps to scale * object_diameter / D (objects of D px reach the size the model learnt).
    object_diameter: float = 0.0

    def __post_init__(self):
        if self.normalize not in ("none", "percentile"):
            raise ConfigError(f"model.input.normalize: none or percentile, got {self.normalize!r}")
        if not self.object_diameter >= 0.0:
            raise ConfigError(f"model.input.object_diameter: pixels >= 0 (0: not recorded), got {self.object_diameter}")
        if not 0.0 <= self.percentile_low < self.percentile_high <= 100.0:
            raise ConfigError(
                "model.input.percentile_low/percentile_high: need 0 <= low < high <= 100, "
                f"got {self.percentile_low} and {self.percentile_high}"
            )


@dataclass(frozen=True)
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    input: InputConfig = field(default_factory=InputConfig)
    channels_last: bool = False
    # none | regional: torch.compile the static parts (backbone, FPN, heads); maskrcnn/model/compile.py
    compile: str = "none"


# ---------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SyntheticConfig:
    num_images: int = 48
    height: int = 128
    width: int = 160
    cells_per_image: Tuple[int, int] = (6, 24)
    seed: int = 0

    def __post_init__(self):
        if self.num_images < 0:
            raise ConfigError(f"data.synthetic.num_images must be >= 0, got {self.num_images}")
        if self.height < 32 or self.width < 32:
            raise ConfigError(f"data.synthetic.height/width must be at least 32, got {self.height}x{self.width}")
        lo, hi = self.cells_per_image
        if not 0 <= lo <= hi:
            raise ConfigError(f"data.synthetic.cells_per_image must be [low, high] with 0 <= low <= high, got [{lo}, {hi}]")


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.0
    rotate_degrees: float = 0.0
    rotate_prob: float = 0.0
    scale_range: Tuple[float, float] = (1.0, 1.0)
    crop_size: Tuple[int, int] = (0, 0)  # (h, w); 0 = no crop
    min_area: int = 4  # instances cut below this many pixels by a crop are dropped
    # Colour and stain (probabilities, applied in this order): RGB -> gray (in 3 channels),
    # 1 - image, haematoxylin/eosin/DAB jitter of +-stain_sigma, a random channel permutation.
    to_gray: float = 0.0
    invert: float = 0.0
    stain_jitter: float = 0.0
    stain_sigma: float = 0.2
    channel_shuffle: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    blur_prob: float = 0.0
    noise_std: float = 0.0
    copy_paste_prob: float = 0.0

    def __post_init__(self):
        h, w = self.crop_size
        if h < 0 or w < 0 or (h == 0) != (w == 0):
            raise ConfigError(f"data.augment.crop_size must be [0, 0] (no crop) or two sizes > 0, got [{h}, {w}]")
        lo, hi = self.scale_range
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
            raise ConfigError(f"data.augment.scale_range must be [low, high] with 0 < low <= high, got [{lo}, {hi}]")


@dataclass(frozen=True)
class PseudoConfig:
    """A pseudo-labelled dataset (``python -m maskrcnn pseudo_label``) mixed into the training split."""

    path: str = ""  # the .npz the tool wrote; empty: no pseudo-labels
    # Fraction of each epoch's training images drawn from the pseudo-labelled set: the labelled
    # images are repeated to reach it (0: each image of both sets once per epoch).
    ratio: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    format: str = "synthetic"  # synthetic | sartorius | coco | dsb2018 | label_folders | cache
    root: str = ""
    ann_file: str = ""
    class_agnostic: bool = False
    classes: Tuple[str, ...] = ()  # empty: the reader's own class list
    split_file: str = ""  # written on first use and reused
    # A compact .npz copy of the dataset (maskrcnn.formats.dataset_cache), written from the source reader on
    # first use and read instead of it afterwards (DSB2018: ~30 ms instead of ~400 ms per image).
    cache_file: str = ""
    num_folds: int = 5
    fold: int = 0
    # A json list of image ids (or {"ids": [...]}): the training split keeps only these images
    # (e.g. the labelled quarter of a semi-supervised run); validation is unchanged.
    train_ids_file: str = ""
    batch_size: int = 2  # images per batch per process
    num_workers: int = 2
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)


# ---------------------------------------------------------------------- training
@dataclass(frozen=True)
class SolverConfig:
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: Tuple[float, float] = (0.9, 0.999)
    schedule: str = "multistep"  # multistep | cosine
    max_iter: int = 1000
    steps: Tuple[int, ...] = (700, 900)
    gamma: float = 0.1
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    clip_grad_norm: float = 0.0  # 0: off
    accum_steps: int = 1
    amp: str = ""  # "" | bf16 | fp16
    no_decay_norm_bias: bool = True  # no weight decay on biases and norm-layer parameters


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "output/run"
    checkpoint_period: int = 500
    eval_period: int = 500
    log_period: int = 20
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    max_eval_images: int = 0  # 0: the whole validation split
    eval_coco: bool = False  # validation also logs COCO mask/box AP (val/segm/AP ...; costs encoding time)
    keep_checkpoints: int = 2  # periodic model_<iter>.pth files kept (0: all); best/final always kept
    find_unused_parameters: bool = False  # DDP: set when some parameters get no gradient in a step
    num_threads: int = 0  # CPU threads for torch ops (0: torch's default); 1 is fastest on a busy machine


# ---------------------------------------------------------------------- inference
@dataclass(frozen=True)
class TestConfig:
    tta: Tuple[str, ...] = ()  # hflip | vflip | rot90 | scale=1.25
    tta_min_views: int = 1  # keep a merged instance seen in at least this many views
    merge_iou: float = 0.5
    score_thresh: Tuple[float, ...] = (0.5,)  # one per class (or one for all)
    mask_thresh: Tuple[float, ...] = (0.5,)
    min_area: Tuple[int, ...] = (0,)
    remove_overlaps: bool = True
    overlap_min_keep: float = 0.5  # drop a mask that lost more than half its pixels to overlaps
    fill_holes: bool = False
    # Each mask keeps only its largest 4-connected piece after overlap removal (islands dropped).
    one_piece: bool = True
    # Score = detection score x mean mask probability inside the binarised mask (Sartorius 1st
    # place), before the score threshold and the overlap ranking; needs soft masks.
    mask_rescore: bool = False
    # The image's cell type is its most frequent predicted class (Sartorius images hold one type):
    # relabel = give every instance that class (and its thresholds) | filter = drop the other classes
    # | none = each instance keeps its own class.
    image_class: str = "relabel"
    # Tiled inference of large images (maskrcnn.inference.tiling): tiles of tile_size pixels (0: off,
    # else >= 64) overlapping by tile_overlap pixels (>= the largest cell's size, < tile_size).
    tile_size: int = 0
    tile_overlap: int = 64

    def __post_init__(self):
        check_test_values(self)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)


# ------------------------------------------------------------------------ loading
class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose floats also match the exponent form without a dot (``1e-4``)."""


# YAML 1.1's float pattern (PyYAML's resolver) with the dot made optional before an exponent.
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
_Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(stream) -> Any:
    """Parse YAML text (or a file object) with the package's loader: ``yaml.safe_load`` plus
    exponent floats without a dot (``1e-4``, ``1E3``) read as floats."""
    return yaml.load(stream, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def config_keys(cls=None, prefix: str = "") -> list:
    """Every dotted leaf key of ``cls`` (default: ``Config``), e.g. ``solver.max_iter``."""
    cls = Config if cls is None else cls
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        out += config_keys(hints[f.name], key) if dataclasses.is_dataclass(hints[f.name]) else [key]
    return out


def suggest_key(key: str, valid: Sequence[str]) -> Optional[str]:
    """The valid key nearest to ``key``: one with the same last name (``train.max_iter`` ->
    ``solver.max_iter``), else the closest by ``difflib`` (``solver.lrr`` -> ``solver.lr``), or None."""
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in valid if k.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return difflib.get_close_matches(key, same_leaf, n=1, cutoff=0.0)[0]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return close[0]
    close = difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in valid], n=1, cutoff=0.75)
    return next((k for k in valid if close and k.rsplit(".", 1)[-1] == close[0]), None)


def did_you_mean(key: str, valid: Sequence[str]) -> str:
    """`` (did you mean X?)`` for the nearest valid key, or an empty string."""
    near = suggest_key(key, valid)
    return f" (did you mean {near}?)" if near else ""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _build(cls, values: Dict[str, Any], prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        full = f"{prefix}.{k}" if prefix else k
        if k not in names:
            hint = did_you_mean(full, config_keys())
            raise ConfigError(f"unknown config key '{full}'{hint}; valid keys here: {', '.join(names)}")
        kwargs[k] = _coerce(v, hints[k], full)
    return cls(**kwargs)


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class _UniqueKeyLoader(_Loader):
    """The package's loader (``_Loader``: exponent floats) that also refuses a key written twice in
    one mapping (plain YAML keeps the last one silently: a second ``model:`` section would replace
    the first)."""

    def construct_mapping(self, node, deep=False):
        seen: Dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if first != line:
                raise ConfigError(f"the key {key!r} is written twice, on lines {first} and {line}: "
                                  f"keep one ({key_node.start_mark.name})")
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def read_yaml_mapping(path: str, kind: str = "config", missing: type = ConfigError,
                      allow_empty: bool = True) -> Dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file gives ``{}``, or with ``allow_empty=False``
    a ConfigError: a config file that holds nothing is a mistake, not "all defaults").

    Raises ``missing`` ("<kind> file not found: <path>") for a missing file, and ConfigError naming
    the file for invalid YAML, a key written twice in one mapping, or a top level that is not a mapping.
    """
    if os.path.isdir(path):
        raise ConfigError(f"{kind} file expected, got a folder ({path})")
    if not os.path.isfile(path):
        raise missing(f"{kind} file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        except UnicodeDecodeError:
            raise ConfigError(f"not a text (YAML) file: {kind} files are YAML ({path})") from None
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            line = f" line {where.line + 1}" if where is not None else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"not valid YAML: {what} ({path}{line})") from None
    if data is None:
        if not allow_empty:
            raise ConfigError(f"the {kind} file is empty (or only comments): give at least one section ({path})")
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _load_yaml(path: str, seen: Sequence[str] = ()) -> Dict[str, Any]:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: circular 'base:' chain ({' -> '.join(seen)})")
    data = read_yaml_mapping(path, allow_empty=False)
    base = data.pop("base", None)
    if base:
        base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
        data = _merge(_load_yaml(base_path, list(seen) + [path]), data)
    return data


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """``["a.b=1", "c=[1,2]"]`` -> nested dict, values parsed as YAML."""
    out: Dict[str, Any] = {}
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[parts[-1]] = value
    return out


def reject_repeated_keys(overrides: Sequence[str], where: str = "--set") -> None:
    """ConfigError naming the key when a user's ``key=value`` list sets one key twice (the later would
    win without a word). Scripts that layer their own defaults under the user's call
    ``parse_overrides`` directly, where the last one wins by design."""
    seen = set()
    for item in overrides or ():
        key = item.split("=", 1)[0].strip()
        if key in seen:
            raise ConfigError(f"{where}: the key {key!r} is given twice; give it once")
        seen.add(key)


def to_dict(cfg) -> Dict[str, Any]:
    """Plain nested dict (tuples as lists) for saving next to checkpoints."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


# Keys that older versions wrote and that no longer exist: (default, why). Files and checkpoints
# holding them still load; the key is dropped, with a warning when it held another value.
RETIRED_KEYS = {
    "model.mask_head.mask_threshold": (
        0.5, "it reached only MaskRCNN.predict, never post-processing; test.mask_thresh binarises masks"),
}


def _drop_retired(values: Dict[str, Any], source: str) -> Dict[str, Any]:
    values = copy.deepcopy(values)
    for key, (default, why) in RETIRED_KEYS.items():
        *parents, leaf = key.split(".")
        node = values
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            value = node.pop(leaf)
            if value != default:
                warnings.warn(f"{source}: {key}={value!r} is ignored: {why}", UserWarning, stacklevel=3)
    return values


def from_dict(values: Dict[str, Any], overrides: Sequence[str] = (), source: str = "saved config") -> Config:
    """A Config from a plain dict (e.g. a checkpoint's ``config``), then ``key=value`` overrides."""
    if not isinstance(values, dict):
        raise ConfigError(f"the config must be a mapping of sections (model, data, ...), got {type(values).__name__} "
                          f"{str(values)[:40]!r} ({source})")
    return _build(Config, _merge(_drop_retired(values, source), parse_overrides(overrides)))


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Load ``path`` (with its ``base:`` chain) and apply ``key=value`` overrides."""
    return from_dict(_load_yaml(path) if path else {}, overrides, source=path or "config")


def dump_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML (atomically)."""
    from maskrcnn.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ------------------------------------------------------------------- test settings
IMAGE_CLASS_MODES = ("relabel", "filter", "none")


def check_test_values(t: TestConfig) -> None:
    """Raise ConfigError naming the ``test.*`` key for a value no post-processing can use.

    Score and mask thresholds are in [0, 1], ``merge_iou`` in (0, 1], ``min_area`` >= 0,
    ``overlap_min_keep`` in [0, 1], ``tta_min_views`` >= 1, ``tile_size`` 0 or >= 64 with
    ``tile_overlap`` in [0, tile_size / 2], no NaN, no empty per-class list.
    Called by ``TestConfig`` itself, so config files, ``--set``, thresholds files, checkpoints'
    saved configs, ablation variants and tuning all get the same checks.
    """
    def bad(key, value, rule):
        raise ConfigError(f"test.{key} must be {rule}, got {value!r}")

    for key, low, high in (("score_thresh", 0.0, 1.0), ("mask_thresh", 0.0, 1.0), ("min_area", 0, math.inf)):
        values = getattr(t, key)
        if len(values) == 0:
            raise ConfigError(f"test.{key} is empty; give one value per class or one for all")
        for k, v in enumerate(values):
            if not (isinstance(v, (int, float)) and low <= v <= high):  # NaN fails both comparisons
                rule = f"in [{low}, {high}]" if high != math.inf else f">= {low}"
                bad(f"{key}[{k}]" if len(values) > 1 else key, v, rule)
    if not (0.0 < t.merge_iou <= 1.0):
        bad("merge_iou", t.merge_iou, "in (0, 1] (the mask IoU above which two views' objects are one)")
    if not (0.0 <= t.overlap_min_keep <= 1.0):
        bad("overlap_min_keep", t.overlap_min_keep, "in [0, 1] (a fraction of the mask's pixels)")
    if t.tta_min_views < 1:
        bad("tta_min_views", t.tta_min_views, ">= 1")
    if t.image_class not in IMAGE_CLASS_MODES:
        bad("image_class", t.image_class, f"one of {', '.join(IMAGE_CLASS_MODES)}")
    if t.tile_size != 0 and t.tile_size < 64:
        bad("tile_size", t.tile_size, "0 (off) or at least 64 pixels")
    if t.tile_overlap < 0 or (t.tile_size and 2 * t.tile_overlap > t.tile_size):
        bad("tile_overlap", t.tile_overlap, f">= 0 and at most half of test.tile_size ({t.tile_size}; "
            "more would multiply the tiles)")


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
        return _build(Config, {"test": merged}).test
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
