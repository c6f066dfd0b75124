"""Import weights from local files (never downloads) into our Mask R-CNN.

Supported files, recognised by their key names:

- ``torchvision``: ImageNet ResNet/ResNeXt state dicts (``.pth``: ``conv1.weight``, ``bn1.*``,
  ``layer1.0.conv1.weight``, ``layer1.0.downsample.0.weight``...), and torchvision's detection
  ``maskrcnn_resnet50_fpn`` state dicts (``backbone.body.*``, ``backbone.fpn.*``, ``rpn.head.*``,
  ``roi_heads.*``; background is class 0 there and is moved last).
- ``detectron2``: pickled dicts of numpy arrays (``.pkl``), either a backbone alone
  (``stem.conv1.weight``, ``res2.0.conv1.norm.weight``, ``res2.0.shortcut.weight``; e.g. the
  torchvision-converted ``R-50.pkl`` or FAIR's ``X-101-32x8d.pkl``) or a whole model
  (``model_final_*.pkl``: ``backbone.bottom_up.*``, ``backbone.fpn_lateral2.*``,
  ``proposal_generator.rpn_head.*``, ``roi_heads.box_head.fc1.*``, ``roi_heads.mask_head.mask_fcn1.*``).
- ``caffe2``: MSRA's ImageNet pickles (``conv1_w``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``,
  ``res2_0_branch1_bn_b``...), affine-only BN (loaded with mean 0, variance 1).
- ``ours``: our own checkpoints (``{"model": state_dict}`` or a bare state dict).

The first conv is converted to our input convention: images in [0, 1], RGB (grayscale repeated),
normalised by the model's ``pixel_mean``/``pixel_std``. A file's first conv expects
``(255 x - mean_src) / std_src`` in its own channel order, so its weights are flipped
BGR -> RGB when needed and multiplied per input channel by ``255 * std_ours / std_src``; for a
one-channel model the three input channels are summed. Defaults (``channel_order="auto"``):
torchvision files: RGB, std (58.395, 57.12, 57.375); Caffe2/MSRA files and detectron2 files
built on them: BGR, std (1, 1, 1); detectron2 files of grouped (ResNeXt, FAIR) backbones: BGR,
std (57.375, 57.12, 58.395); detectron2 files whose ``__author__`` is ``torchvision``: RGB. The
mean is not converted: keep the model's ``pixel_mean`` at the ImageNet mean with imported weights.
MSRA weights (and detectron2's COCO R-50/R-101 models) need ``stride_in_1x1: true``.

Tensors whose shapes differ are skipped (e.g. box/mask predictors with another class count), and
a report of what was loaded, skipped, missing and unused is printed.

Reading the files (and refusing unsafe pickles or NaN/inf weights) is ``maskrcnn.model.weight_files``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from maskrcnn.model.weight_files import WeightsError, read_weights_file

STEM = "backbone.stem.conv1.weight"
TORCHVISION_STD = (58.395, 57.12, 57.375)  # ImageNet std x 255, RGB
MSRA_STD = (1.0, 1.0, 1.0)
FAIR_STD_BGR = (57.375, 57.12, 58.395)
# Predictors whose shape depends on the number of classes.
CLASS_HEADS = ("roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred", "roi_heads.mask_head.predictor")


@dataclass
class ImportReport:
    """What :func:`import_weights` did. Names are the model's parameter/buffer names."""

    path: str
    scheme: str
    channel_order: str = ""
    source_std: Tuple[float, ...] = ()
    loaded: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)  # model name -> reason
    missing: List[str] = field(default_factory=list)
    unused: List[str] = field(default_factory=list)  # file keys
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"weights {self.path}: {self.scheme} file"
            + (f", first conv from {self.channel_order.upper()} std {tuple(round(s, 3) for s in self.source_std)}"
               if self.channel_order else ""),
            f"  loaded  {len(self.loaded)} tensors",
        ]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)}: " + _short([f"{k} ({v})" for k, v in self.skipped.items()]))
        lines.append(f"  missing {len(self.missing)} (left at their initialisation): " + _short(_group(self.missing)))
        lines.append(f"  unused  {len(self.unused)} from the file: " + _short(_group(self.unused)))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _group(names: Sequence[str]) -> List[str]:
    """Collapse names to their module prefixes for printing (``res4.*`` instead of 100 names)."""
    out: Dict[str, int] = {}
    for n in names:
        parts = n.split(".")
        key = ".".join(parts[:3]) + ".*" if len(parts) > 3 else n
        out[key] = out.get(key, 0) + 1
    return [k if c == 1 else f"{k} ({c})" for k, c in out.items()]


def _short(items: Sequence[str], limit: int = 12) -> str:
    if not items:
        return "none"
    s = ", ".join(items[:limit])
    return s + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


# ---------------------------------------------------------------------- naming
def detect_scheme(keys: Sequence[str]) -> str:
    """``ours`` | ``torchvision`` | ``torchvision_detection`` | ``detectron2`` | ``caffe2``."""
    ks = set(keys)
    if any(k.startswith("backbone.stem.") for k in ks) or any(k.startswith("fpn.lateral.") for k in ks):
        return "ours"
    if any(k.startswith("backbone.body.") for k in ks):
        return "torchvision_detection"
    if any(k.startswith(("backbone.bottom_up.", "proposal_generator.", "backbone.fpn_lateral")) for k in ks):
        return "detectron2"
    if "stem.conv1.weight" in ks or any(k.startswith("res2.0.") for k in ks):
        return "detectron2"
    if "conv1_w" in ks or any(re.match(r"res\d+_\d+_branch", k) for k in ks):
        return "caffe2"
    if "conv1.weight" in ks and any(k.startswith("layer1.") for k in ks):
        return "torchvision"
    raise WeightsError(f"unrecognised weight names (first keys: {sorted(ks)[:6]})")


_BN_SUFFIX = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}


def _first_rule(rules: Sequence[Tuple[str, Callable[[re.Match], str]]], k: str) -> Optional[str]:
    """The name the first matching ``(pattern, name_of_match)`` rule gives ``k``, or None."""
    for pat, fn in rules:
        m = re.match(pat, k)
        if m:
            return fn(m)
    return None


def _res(m: re.Match) -> str:
    """``backbone.res<stage>.<block>.`` of a torchvision ``layer<stage - 1>.<block>.`` match."""
    return f"backbone.res{int(m.group(1)) + 1}.{m.group(2)}."


_TORCHVISION_RESNET = (
    (r"conv1\.weight$", lambda m: STEM),
    (r"bn1\.(.+)$", lambda m: f"backbone.stem.conv1.norm.{m.group(1)}"),
    (r"layer(\d)\.(\d+)\.conv(\d)\.weight$", lambda m: f"{_res(m)}conv{m.group(3)}.weight"),
    (r"layer(\d)\.(\d+)\.bn(\d)\.(.+)$", lambda m: f"{_res(m)}conv{m.group(3)}.norm.{m.group(4)}"),
    (r"layer(\d)\.(\d+)\.downsample\.0\.weight$", lambda m: f"{_res(m)}shortcut.weight"),
    (r"layer(\d)\.(\d+)\.downsample\.1\.(.+)$", lambda m: f"{_res(m)}shortcut.norm.{m.group(3)}"),
)


def _map_torchvision_resnet(k: str) -> Optional[str]:
    if k.endswith("num_batches_tracked"):
        return None
    return _first_rule(_TORCHVISION_RESNET, k)


def _map_torchvision_detection(k: str) -> Optional[str]:
    if k.startswith("backbone.body."):
        return _map_torchvision_resnet(k[len("backbone.body."):])
    rules = (
        (r"backbone\.fpn\.inner_blocks\.(\d)\.(?:0\.)?(weight|bias)$", r"fpn.lateral.\1.\2"),
        (r"backbone\.fpn\.layer_blocks\.(\d)\.(?:0\.)?(weight|bias)$", r"fpn.output.\1.\2"),
        (r"rpn\.head\.conv\.(?:0\.)?(?:0\.)?(weight|bias)$", r"rpn.head.conv.\1"),
        (r"rpn\.head\.cls_logits\.(weight|bias)$", r"rpn.head.objectness_logits.\1"),
        (r"rpn\.head\.bbox_pred\.(weight|bias)$", r"rpn.head.anchor_deltas.\1"),
        (r"roi_heads\.box_head\.fc6\.(weight|bias)$", r"roi_heads.box_head.fc1.\1"),
        (r"roi_heads\.box_head\.fc7\.(weight|bias)$", r"roi_heads.box_head.fc2.\1"),
        (r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)$", r"roi_heads.box_predictor.\1.\2"),
        (r"roi_heads\.mask_head\.(?:mask_fcn)?(\d)\.(?:0\.)?(weight|bias)$", None),
        (r"roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)$", r"roi_heads.mask_head.deconv.\1"),
        (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(weight|bias)$", r"roi_heads.mask_head.predictor.\1"),
    )
    for pat, rep in rules:
        m = re.match(pat, k)
        if m:
            if rep is None:  # torchvision numbers mask_fcn1..4 (older) or 0..3 (newer)
                i = int(m.group(1)) - (1 if "mask_fcn" in k else 0)
                return f"roi_heads.mask_head.convs.{i}.{m.group(2)}"
            return m.expand(rep)
    return None


def _map_detectron2(k: str) -> Optional[str]:
    if k.startswith("backbone.bottom_up."):
        k = k[len("backbone.bottom_up."):]
    if re.match(r"(stem|res\d)\.", k):
        return "backbone." + k
    rules = (
        (r"backbone\.fpn_lateral(\d)\.(.+)$", lambda m: f"fpn.lateral.{int(m.group(1)) - 2}.{m.group(2)}"),
        (r"backbone\.fpn_output(\d)\.(.+)$", lambda m: f"fpn.output.{int(m.group(1)) - 2}.{m.group(2)}"),
        (r"proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)\.(.+)$",
         lambda m: f"rpn.head.{m.group(1)}.{m.group(2)}"),
        (r"roi_heads\.box_head\.(fc\d)\.(.+)$", lambda m: f"roi_heads.box_head.{m.group(1)}.{m.group(2)}"),
        (r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(.+)$",
         lambda m: f"roi_heads.box_predictor.{m.group(1)}.{m.group(2)}"),
        (r"roi_heads\.mask_head\.mask_fcn(\d)\.(.+)$",
         lambda m: f"roi_heads.mask_head.convs.{int(m.group(1)) - 1}.{m.group(2)}"),
        (r"roi_heads\.mask_head\.(deconv|predictor)\.(.+)$", lambda m: f"roi_heads.mask_head.{m.group(1)}.{m.group(2)}"),
    )
    return _first_rule(rules, k)


def _map_caffe2(k: str) -> Optional[str]:
    if k.endswith("_momentum"):
        return None
    if k == "conv1_w":
        return STEM
    m = re.match(r"(?:res_conv1_bn|conv1_gn)_(s|b|rm|riv)$", k)
    if m:
        return f"backbone.stem.conv1.norm.{_BN_SUFFIX[m.group(1)]}"
    m = re.match(r"res(\d)_(\d+)_branch(1|2a|2b|2c)_(w|(?:bn|gn)_(?:s|b|rm|riv))$", k)
    if not m:
        return None
    stage, block, branch, suffix = m.groups()
    conv = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}[branch]
    pre = f"backbone.res{stage}.{block}.{conv}"
    if suffix == "w":
        return pre + ".weight"
    return pre + ".norm." + _BN_SUFFIX[suffix.split("_")[1]]


_MAPPERS = {
    "ours": lambda k: k,
    "torchvision": _map_torchvision_resnet,
    "torchvision_detection": _map_torchvision_detection,
    "detectron2": _map_detectron2,
    "caffe2": _map_caffe2,
}


# -------------------------------------------------------------------- conversion
def _source_convention(scheme: str, extras: Dict[str, object], tensors: Dict[str, Tensor],
                       channel_order: str, source_std: Optional[Sequence[float]]) -> Tuple[str, Tuple[float, ...]]:
    """(channel order, std in 0-255 units in that order) that the file's first conv expects."""
    if scheme == "ours":
        return "", ()
    if channel_order == "auto":
        if scheme in ("torchvision", "torchvision_detection") or extras.get("__author__") == "torchvision":
            order, std = "rgb", TORCHVISION_STD
        elif scheme == "caffe2":
            order, std = "bgr", MSRA_STD
        else:  # detectron2: MSRA-based unless the backbone is grouped (FAIR's ResNeXt)
            w = tensors.get("backbone.bottom_up.res2.0.conv2.weight", tensors.get("res2.0.conv2.weight"))
            grouped = w is not None and w.shape[1] != w.shape[0]
            order, std = ("bgr", FAIR_STD_BGR) if grouped else ("bgr", MSRA_STD)
    else:
        order = channel_order
        std = TORCHVISION_STD if order == "rgb" else MSRA_STD
    if source_std:
        std = tuple(float(s) for s in source_std)
        if len(std) == 1:
            std = std * 3
    if len(std) != 3:
        raise WeightsError(f"source pixel std needs 3 values (or 1), got {std}")
    return order, tuple(std)


def convert_first_conv(w: Tensor, channel_order: str, source_std: Sequence[float], pixel_std: Tensor,
                       in_channels: int) -> Tensor:
    """First-conv weights ``Tensor[O, 3, k, k]`` expecting ``(255 x - mean) / source_std`` in
    ``channel_order`` -> weights for our normalised input ``(x - mean) / pixel_std`` (RGB or 1 channel)."""
    w = w.float()
    std = torch.tensor(list(source_std), dtype=torch.float32)
    if channel_order == "bgr":
        w = w.flip(1)
        std = std.flip(0)
    ours = pixel_std.detach().float().flatten().cpu()
    ours = ours.expand(3) if ours.numel() == 1 else ours
    w = w * (255.0 * ours / std)[None, :, None, None]
    if in_channels == 1:
        w = w.sum(dim=1, keepdim=True)
    return w


def import_weights(model: nn.Module, path: str, channel_order: str = "auto",
                   source_pixel_std: Optional[Sequence[float]] = None, verbose: bool = True) -> ImportReport:
    """Load the tensors of ``path`` that fit ``model`` (a ``MaskRCNN``); print and return the report.

    Args:
        channel_order: ``auto`` | ``rgb`` | ``bgr``: the order the file's first conv expects.
        source_pixel_std: std (0-255 units, in the file's channel order) the file expects; None: auto.
    """
    if channel_order not in ("auto", "rgb", "bgr"):
        raise WeightsError(f"channel_order must be auto, rgb or bgr, got {channel_order!r}")
    tensors, extras = read_weights_file(path)
    scheme = detect_scheme(list(tensors))
    order, std = _source_convention(scheme, extras, tensors, channel_order, source_pixel_std)
    report = ImportReport(path=path, scheme=scheme, channel_order=order, source_std=std)
    mapper = _MAPPERS[scheme]
    target = model.state_dict()
    mapped: Dict[str, Tensor] = {}
    source_key: Dict[str, str] = {}  # our name -> file key, for every key that maps
    for k, v in tensors.items():
        name = mapper(k)
        if name is not None:
            source_key[name] = k
        if name is None or name not in target:
            if not k.endswith(("num_batches_tracked", "_momentum")):
                report.unused.append(k)
            continue
        mapped[name] = v

    if scheme == "torchvision_detection":
        _background_last(mapped)
    if STEM in mapped and order:
        _convert_stem(model, mapped, path, order, std, report)
    _fit_norms(model, target, mapped, source_key, scheme, report)

    state = {}
    for name, v in mapped.items():
        want = target[name].shape
        if tuple(v.shape) != tuple(want):
            head = next((h for h in CLASS_HEADS if name.startswith(h)), None)
            reason = "class count differs" if head else "shape differs"
            report.skipped[name] = f"{reason}: file {tuple(v.shape)} vs model {tuple(want)}"
            continue
        state[name] = v.to(target[name].dtype)
    model.load_state_dict(state, strict=False)
    report.loaded = sorted(state)
    report.missing = [n for n in target if n not in state and not n.endswith("num_batches_tracked")]
    if verbose:
        print(report.summary())
    return report


def _convert_stem(model: nn.Module, mapped: Dict[str, Tensor], path: str, order: str, std: Tuple[float, ...],
                  report: ImportReport) -> None:
    """Convert the file's first conv to our input convention (``convert_first_conv``); note a
    pixel mean or stride placement that does not match what the weights expect."""
    if mapped[STEM].shape[1] != 3:
        raise WeightsError(f"{path}: first conv has {mapped[STEM].shape[1]} input channels, expected 3")
    mapped[STEM] = convert_first_conv(mapped[STEM], order, std, model.pixel_std, getattr(model, "in_channels", 3))
    mean = model.pixel_mean.flatten().cpu()
    imagenet = torch.tensor([0.485, 0.456, 0.406]) if mean.numel() == 3 else torch.tensor([0.449])
    if (mean - imagenet).abs().max() > 0.02:
        report.notes.append(f"model pixel_mean {mean.tolist()} differs from the ImageNet mean these weights expect")
    if order == "bgr" and std == MSRA_STD and not _stride_in_1x1(model):
        report.notes.append("MSRA/Caffe2 weights were trained with the stride in the 1x1 conv: set "
                            "model.backbone.stride_in_1x1: true")


def _fit_norms(model: nn.Module, target: Dict[str, Tensor], mapped: Dict[str, Tensor], source_key: Dict[str, str],
               scheme: str, report: ImportReport) -> None:
    """BatchNorm parameters of the file do not go into GroupNorm layers; affine-only BN files get
    the statistics they folded in."""
    modules = dict(model.named_modules())
    for name in [n for n in mapped if n.endswith(".norm.weight")]:
        base = name[: -len("weight")]
        mod = modules.get(base[:-1])
        file_is_bn = base + "running_mean" in source_key or "_bn_" in source_key[name] or scheme in (
            "torchvision", "torchvision_detection")
        if isinstance(mod, nn.GroupNorm) and file_is_bn:
            for p in ("weight", "bias"):
                if mapped.pop(base + p, None) is not None:
                    report.skipped[base + p] = "BatchNorm parameters do not fit a GroupNorm layer"
        elif hasattr(mod, "running_mean") and base + "running_mean" not in source_key:
            # Affine-only BN (Caffe2): the statistics are folded in already (mean 0, variance 1).
            mapped[base + "running_mean"] = torch.zeros_like(target[base + "running_mean"])
            mapped[base + "running_var"] = torch.ones_like(target[base + "running_var"])


def _stride_in_1x1(model: nn.Module) -> bool:
    block = getattr(getattr(model, "backbone", None), "res3", None)
    if block is None or not hasattr(block[0], "conv3"):
        return True  # basic blocks: no choice to make
    return tuple(block[0].conv1.stride) != (1, 1)


def _background_last(mapped: Dict[str, Tensor]) -> None:
    """torchvision's box predictor has background first and 4 deltas for it; ours: last, none."""
    w = "roi_heads.box_predictor.cls_score.weight"
    b = "roi_heads.box_predictor.cls_score.bias"
    for key in (w, b):
        if key in mapped:
            v = mapped[key]
            mapped[key] = torch.cat([v[1:], v[:1]])
    for key in ("roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"):
        if key in mapped:
            mapped[key] = mapped[key][4:]
    for key in ("roi_heads.mask_head.predictor.weight", "roi_heads.mask_head.predictor.bias"):
        if key in mapped:
            mapped[key] = mapped[key][1:]  # torchvision predicts a (never used) background mask
