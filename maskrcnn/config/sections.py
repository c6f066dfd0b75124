"""The ``data``, ``solver``, ``train`` and ``test`` sections and the whole ``Config``: each key's
type, default, checks and whether ``--resume`` may change it, declared once."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from maskrcnn.config.keys import (ConfigError, Section, config_changes, key, one_of, resume_policy, rule,
                                  section)
from maskrcnn.config.model import ModelConfig


def _at_least(low, note: str = "") -> Any:
    return rule(lambda v: v >= low, f"{{key}} must be >= {low}{note}, got {{v}}")


# ---------------------------------------------------------------------------- data
DATA_FORMATS = ("synthetic", "sartorius", "sartorius_unlabeled", "coco", "dsb2018", "label_folders", "cache")


@dataclass(frozen=True)
class SyntheticConfig(Section):
    PREFIX = "data.synthetic"

    num_images: int = key(48, _at_least(0))
    height: int = key(128)
    width: int = key(160)
    cells_per_image: Tuple[int, int] = key(
        (6, 24), rule(lambda v: 0 <= v[0] <= v[1], "{key} must be [low, high] with 0 <= low <= high, got {vl}"))
    seed: int = key(0)

    def check(self) -> None:
        if self.height < 32 or self.width < 32:
            raise ConfigError(f"data.synthetic.height/width must be at least 32, got {self.height}x{self.width}")


@dataclass(frozen=True)
class AugmentConfig(Section):
    PREFIX = "data.augment"
    RESUME = True  # augmentation applies from the resume point on

    hflip: float = key(0.5)
    vflip: float = key(0.5)
    rot90: float = key(0.0)
    rotate_degrees: float = key(0.0)
    rotate_prob: float = key(0.0)
    scale_range: Tuple[float, float] = key((1.0, 1.0), rule(
        lambda v: math.isfinite(v[0]) and math.isfinite(v[1]) and 0 < v[0] <= v[1],
        "{key} must be [low, high] with 0 < low <= high, got {vl}"))
    crop_size: Tuple[int, int] = key((0, 0), rule(  # (h, w); 0 = no crop
        lambda v: v[0] >= 0 and v[1] >= 0 and (v[0] == 0) == (v[1] == 0),
        "{key} must be [0, 0] (no crop) or two sizes > 0, got {vl}"))
    min_area: int = key(4)  # instances cut below this many pixels by a crop are dropped
    # Colour and stain (probabilities, applied in this order): RGB -> gray (in 3 channels),
    # 1 - image, haematoxylin/eosin/DAB jitter of +-stain_sigma, a random channel permutation.
    to_gray: float = key(0.0)
    invert: float = key(0.0)
    stain_jitter: float = key(0.0)
    stain_sigma: float = key(0.2)
    channel_shuffle: float = key(0.0)
    brightness: float = key(0.0)
    contrast: float = key(0.0)
    gamma: float = key(0.0)
    blur_prob: float = key(0.0)
    noise_std: float = key(0.0)
    copy_paste_prob: float = key(0.0)


@dataclass(frozen=True)
class PseudoConfig(Section):
    """A pseudo-labelled dataset (``python -m maskrcnn pseudo_label``) mixed into the training split."""

    PREFIX = "data.pseudo"

    path: str = key("")  # the .npz the tool wrote; empty: no pseudo-labels
    # Fraction of each epoch's training images drawn from the pseudo-labelled set: the labelled
    # images are repeated to reach it (0: each image of both sets once per epoch).
    ratio: float = key(0.0)


@dataclass(frozen=True)
class DataConfig(Section):
    PREFIX = "data"

    # synthetic | sartorius | coco | dsb2018 | label_folders | cache (build_reader picks the reader)
    format: str = key("synthetic", one_of(DATA_FORMATS, "unknown data.format {v!r}; expected synthetic, sartorius, "
                                                        "sartorius_unlabeled, coco, dsb2018, label_folders or cache"))
    # Where the data lives may change on resume (the training split must keep its size).
    root: str = key("", resume=True)
    ann_file: str = key("", resume=True)
    class_agnostic: bool = key(False)
    classes: Tuple[str, ...] = key(())  # empty: the reader's own class list
    split_file: str = key("")  # written on first use and reused
    # A compact .npz copy of the dataset (maskrcnn.formats.dataset_cache), written from the source reader on
    # first use and read instead of it afterwards (DSB2018: ~30 ms instead of ~400 ms per image).
    cache_file: str = key("")
    num_folds: int = key(5)
    fold: int = key(0)
    # A json list of image ids (or {"ids": [...]}): the training split keeps only these images
    # (e.g. the labelled quarter of a semi-supervised run); validation is unchanged.
    train_ids_file: str = key("")
    # images per batch per process; a resume converts the data position by images seen
    batch_size: int = key(2, _at_least(1), resume=True)
    num_workers: int = key(2, _at_least(0), resume=True)
    # Domain-balanced sampling: each training image is drawn (with replacement) with weight
    # count(its cell_type) ** -balance_domains; 0: every image once per epoch (plain shuffle),
    # 1: each cell type (DSB2018: imaging domain) equally often, 0.5: between the two.
    balance_domains: float = key(0.0, rule(lambda v: v >= 0.0, "{key}: a power >= 0 (0: off, 1: cell types "
                                                               "equally often), got {v}"))
    synthetic: SyntheticConfig = section(SyntheticConfig)
    augment: AugmentConfig = section(AugmentConfig)
    pseudo: PseudoConfig = section(PseudoConfig)


# ---------------------------------------------------------------------- training
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine")
AMP_MODES = ("", "bf16", "fp16", "auto")


@dataclass(frozen=True)
class SolverConfig(Section):
    """A resume may change the rate, its schedule (evaluated at the resume iteration: a larger max_iter
    under a cosine schedule continues at the rate the longer schedule has there), the optimiser's
    hyperparameters (the saved momentum/Adam state stays valid), clipping, accumulation and mixed
    precision; not the optimiser or which parameters decay (the saved state would not fit)."""

    PREFIX = "solver"
    RESUME = True
    CHECK_WHEN_BUILT = False  # validated where training starts (build_optimizer, the trainer)

    optimizer: str = key("sgd", one_of(OPTIMIZERS, "{key}: unknown optimizer {v!r}; choose one of {choices}"),
                         resume=False)  # sgd | adamw
    lr: float = key(0.02, rule(lambda v: v > 0, "{key} must be > 0, got {v}"))
    momentum: float = key(0.9, rule(lambda v: 0 <= v < 1, "{key} must be in [0, 1), got {v}"))
    weight_decay: float = key(1e-4, _at_least(0))
    betas: Tuple[float, float] = key((0.9, 0.999), rule(lambda v: all(0 <= b < 1 for b in v),
                                                        "{key} must be in [0, 1), got {vl}"))
    schedule: str = key("multistep", one_of(SCHEDULES, "{key}: unknown schedule {v!r}; choose one of {choices}"))
    max_iter: int = key(1000, _at_least(1))
    steps: Tuple[int, ...] = key((700, 900))
    gamma: float = key(0.1)
    warmup_iters: int = key(100)
    warmup_factor: float = key(0.001, rule(lambda v: 0 < v <= 1, "{key} must be in (0, 1], got {v}"))
    clip_grad_norm: float = key(0.0, _at_least(0, " (0 = off)"))  # 0: off
    accum_steps: int = key(1, _at_least(1, " (micro-batches per optimiser step)"))
    # Mixed precision of the forward pass: '' (float32), bf16, fp16 (with a GradScaler), or auto:
    # bf16 where the device computes it in hardware (maskrcnn.device.native_bf16: a CPU with
    # AVX512-BF16 or AMX, a GPU with bf16), float32 elsewhere (emulated bf16 is slower than float32).
    amp: str = key("", one_of(AMP_MODES, "{key}: unknown mode {v!r}; choose one of '' (off), bf16, fp16, auto"))
    # no weight decay on biases and norm-layer parameters
    no_decay_norm_bias: bool = key(True, resume=False)

    def check(self) -> None:
        if self.warmup_iters < 0 or self.warmup_iters > self.max_iter:
            raise ConfigError(f"solver.warmup_iters must be in [0, max_iter={self.max_iter}], got {self.warmup_iters}")
        if self.schedule != "multistep":
            return
        steps = list(self.steps)
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ConfigError(f"solver.steps must be strictly increasing, got {steps}")
        bad = [s for s in steps if s <= 0 or s > self.max_iter]
        if bad:
            raise ConfigError(f"solver.steps {bad} lie outside (0, max_iter={self.max_iter}]: "
                              "those decays would never happen")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"solver.gamma must be in (0, 1], got {self.gamma}")


@dataclass(frozen=True)
class TrainConfig(Section):
    PREFIX = "train"
    RESUME = True  # the periods and other run settings apply from the resume point on
    CHECK_WHEN_BUILT = False  # validated where training starts (the trainer)

    output_dir: str = key("output/run", rule(bool, "{key} must name a folder for checkpoints and logs"))
    checkpoint_period: int = key(500, _at_least(0), rule(
        lambda v: v != 0, "{key} must be >= 1 (iterations between checkpoints)"))
    eval_period: int = key(500, _at_least(0))
    log_period: int = key(20, _at_least(0))
    # The epoch's data order is drawn from the seed: a new seed mid-epoch would repeat some images and skip others.
    seed: int = key(42, resume=False)
    device: str = key("auto")  # auto | cpu | cuda
    max_eval_images: int = key(0, _at_least(0))  # 0: the whole validation split
    eval_coco: bool = key(False)  # validation also logs COCO mask/box AP (val/segm/AP ...; costs encoding time)
    # periodic model_<iter>.pth files kept (0: all); best/final always kept
    keep_checkpoints: int = key(2, _at_least(0))
    find_unused_parameters: bool = key(False)  # DDP: set when some parameters get no gradient in a step
    # CPU threads for torch ops (0: torch's default); 1 is fastest on a busy machine
    num_threads: int = key(0, _at_least(0))


# ---------------------------------------------------------------------- inference
IMAGE_CLASS_MODES = ("relabel", "filter", "none")


def _per_class(low: float, high: float) -> Any:
    """A non-empty list (one value per class or one for all) of numbers in [low, high]."""
    bound = f"in [{low}, {high}]" if high != math.inf else f">= {low}"

    def check(name: str, values: Sequence[float]) -> Optional[str]:
        if len(values) == 0:
            return f"{name} is empty; give one value per class or one for all"
        for k, v in enumerate(values):
            if not (isinstance(v, (int, float)) and low <= v <= high):  # NaN fails both comparisons
                label = f"{name}[{k}]" if len(values) > 1 else name
                return f"{label} must be {bound}, got {v!r}"
        return None

    return check


@dataclass(frozen=True)
class TestConfig(Section):
    """Post-processing settings; validation uses them, so a resume may change any of them."""

    PREFIX = "test"
    RESUME = True

    tta: Tuple[str, ...] = key(())  # hflip | vflip | rot90 | scale=1.25
    # keep a merged instance seen in at least this many views
    tta_min_views: int = key(1, rule(lambda v: v >= 1, "{key} must be >= 1, got {v!r}"))
    merge_iou: float = key(0.5, rule(lambda v: 0.0 < v <= 1.0, "{key} must be in (0, 1] (the mask IoU above which "
                                                                 "two views' objects are one), got {v!r}"))
    score_thresh: Tuple[float, ...] = key((0.5,), _per_class(0.0, 1.0))  # one per class (or one for all)
    mask_thresh: Tuple[float, ...] = key((0.5,), _per_class(0.0, 1.0))
    min_area: Tuple[int, ...] = key((0,), _per_class(0, math.inf))
    remove_overlaps: bool = key(True)
    # drop a mask that lost more than half its pixels to overlaps
    overlap_min_keep: float = key(0.5, rule(lambda v: 0.0 <= v <= 1.0,
                                            "{key} must be in [0, 1] (a fraction of the mask's pixels), got {v!r}"))
    fill_holes: bool = key(False)
    # Each mask keeps only its largest 4-connected piece after overlap removal (islands dropped).
    one_piece: bool = key(True)
    # Score = detection score x mean mask probability inside the binarised mask (Sartorius 1st
    # place), before the score threshold and the overlap ranking; needs soft masks.
    mask_rescore: bool = key(False)
    # The image's cell type is its most frequent predicted class (Sartorius images hold one type):
    # relabel = give every instance that class (and its thresholds) | filter = drop the other classes
    # | none = each instance keeps its own class.
    image_class: str = key("relabel", one_of(IMAGE_CLASS_MODES, "{key} must be one of {choices}, got {v!r}"))
    # Tiled inference of large images (maskrcnn.inference.tiling): tiles of tile_size pixels (0: off,
    # else >= 64) overlapping by tile_overlap pixels (>= the largest cell's size, < tile_size).
    tile_size: int = key(0, rule(lambda v: v == 0 or v >= 64, "{key} must be 0 (off) or at least 64 pixels, got {v!r}"))
    tile_overlap: int = key(64)

    def check(self) -> None:
        if self.tile_overlap < 0 or (self.tile_size and 2 * self.tile_overlap > self.tile_size):
            raise ConfigError(f"test.tile_overlap must be >= 0 and at most half of test.tile_size ({self.tile_size}; "
                              f"more would multiply the tiles), got {self.tile_overlap!r}")


@dataclass(frozen=True)
class Config(Section):
    PREFIX = ""

    model: ModelConfig = section(ModelConfig)
    data: DataConfig = section(DataConfig)
    solver: SolverConfig = section(SolverConfig)
    train: TrainConfig = section(TrainConfig)
    test: TestConfig = section(TestConfig)


# ------------------------------------------------------------------------- resume
_RESUME_POLICY: Dict[str, bool] = resume_policy(Config)
Change = Tuple[str, Any, Any]


def may_change_on_resume(name: str) -> bool:
    """Whether config key ``name`` (``section.name``) may differ from the checkpoint's on ``--resume``
    (each key's ``resume`` declaration, else its section's ``RESUME``)."""
    return _RESUME_POLICY.get(name, False)


def resume_changes(saved: Dict[str, Any], current: Dict[str, Any]) -> Tuple[List[Change], List[Change]]:
    """The keys that differ between a checkpoint's saved config and the current one (both as
    ``to_dict`` writes them), as ``(key, saved value, current value)``: ``(allowed, refused)``, those
    ``--resume`` may change (they apply from the resume point on) and those it may not."""
    changes = config_changes(saved, current)
    return ([c for c in changes if may_change_on_resume(c[0])],
            [c for c in changes if not may_change_on_resume(c[0])])
