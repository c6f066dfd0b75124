"""Make a model zoo entry from a training checkpoint; list the entries.

    python -m maskrcnn zoo export output/nuclei_cpu/model_final.pth --name nuclei \
        [--thresholds tuned.yaml] [--out-dir DIR] [--overwrite]
    python -m maskrcnn zoo list

``export`` writes into the zoo folder (default: ``maskrcnn/zoo/`` of the package, or ``$MASKRCNN_ZOO``):

- ``<name>.pth``: ``{"model": state dict with every float tensor in float16, "config": the
  checkpoint's config, "iteration": int, "zoo": provenance}``: about half the size of the float32
  checkpoint, without the optimizer, scaler and RNG states. It loads back as float32 (the model is
  built in float32 and ``load_state_dict`` copies the fp16 values into it).
- ``<name>.thresholds.yaml``: a copy of ``--thresholds`` (checked against the model's classes),
  applied automatically with the weights.
- ``<name>.md``: a model card from ``CARD_TEMPLATE.md`` with the facts the checkpoint holds filled
  in and ``TBD`` for the rest, unless a card is already there (a hand-written card is never
  overwritten).

Each file is written atomically, the weights last, so a name is listed only once its entry is
complete. Before anything is written the checkpoint must load into the model its config builds
(finite weights that fit), and every float must fit float16: a value beyond float16's range
(65504) is an error naming the tensor; the largest relative rounding error and the number of
nonzero values that round to 0 are reported.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import re
import string
from typing import Any, Dict, Optional

import torch

from maskrcnn.config import apply_thresholds, check_class_counts, to_dict
from maskrcnn.errors import UserError
from maskrcnn.fileio import atomic_write_text
from maskrcnn.inference.checkpoint import atomic_save, model_from_checkpoint, read_checkpoint
from maskrcnn.inference.zoo import CARD_SUFFIX, THRESHOLDS_SUFFIX, WEIGHTS_SUFFIX, resolve_weights, zoo_dir

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
CARD_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "CARD_TEMPLATE.md")
FP16_MAX = float(torch.finfo(torch.float16).max)


class ExportError(UserError, ValueError):
    """A checkpoint that cannot become a zoo entry, or an entry that would be overwritten."""


def to_half(state: Dict[str, torch.Tensor], where: str) -> Dict[str, Any]:
    """``state`` with every floating-point tensor in float16 (others unchanged), and what rounding did.

    Returns:
        ``{"state": the fp16 state dict, "max_rel_error": the largest |fp16 - fp32| / max|fp32| of
        any tensor, "worst": its name, "flushed": nonzero values that became 0, "fp32_bytes": the
        tensors' bytes in float32, "fp16_bytes": in float16}``.
    Raises:
        ExportError: a finite value beyond float16's range (it would become inf), naming the tensor.
    """
    out, worst, worst_name, flushed, fp32_bytes, fp16_bytes = {}, 0.0, "", 0, 0, 0
    for k, v in state.items():
        if not v.is_floating_point():
            out[k] = v
            fp32_bytes += v.numel() * v.element_size()
            fp16_bytes += v.numel() * v.element_size()
            continue
        fp32_bytes += 4 * v.numel()
        fp16_bytes += 2 * v.numel()
        v32 = v.detach().float()
        peak = float(v32.abs().max()) if v32.numel() else 0.0
        if peak > FP16_MAX:
            raise ExportError(f"{k} holds {peak:.4g}, beyond float16's range ({FP16_MAX:.0f}): cannot export it "
                              f"as fp16 ({where})")
        h = v32.half()
        if peak > 0:
            err = float((h.float() - v32).abs().max()) / peak
            if err > worst:
                worst, worst_name = err, k
        flushed += int(((h == 0) & (v32 != 0)).sum())
        out[k] = h
    return {"state": out, "max_rel_error": worst, "worst": worst_name, "flushed": flushed,
            "fp32_bytes": fp32_bytes, "fp16_bytes": fp16_bytes}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _card(name: str, src: str, cfg, entry: Dict[str, Any], size: int, params: int) -> str:
    """The model card of a new entry: ``CARD_TEMPLATE.md`` with the checkpoint's facts filled in."""
    m, d = cfg.model, cfg.data
    split = ("every image (data.fold -1: no validation split)" if d.fold < 0
             else f"all but fold {d.fold} of {d.num_folds} (data.fold {d.fold})")
    with open(CARD_TEMPLATE, encoding="utf-8") as f:
        template = string.Template(f.read())
    return template.safe_substitute(
        name=name, source=os.path.basename(src), iteration=entry["iteration"], exported=entry["zoo"]["exported"],
        sha256=entry["zoo"]["source_sha256"][:16], data_format=d.format, data_root=d.root, split=split,
        backbone=f"{m.backbone.name} ({m.backbone.norm})", params=f"{params / 1e6:.2f}M",
        size=f"{size / 2**20:.1f} MiB", in_channels=m.input.in_channels, scale=m.input.scale,
        normalize=m.input.normalize, num_classes=m.roi_heads.num_classes, tta=", ".join(cfg.test.tta) or "none",
    )


def export(src: str, name: str, out_dir: Optional[str] = None, thresholds: Optional[str] = None,
           overwrite: bool = False, config: Optional[str] = None) -> Dict[str, Any]:
    """Write the zoo entry ``name`` from checkpoint ``src`` (see the module doc).

    Args:
        src: a training checkpoint (or a bare state dict with ``config``).
        out_dir: the zoo folder (default ``zoo_dir()``).
        thresholds: a tuned thresholds YAML to ship beside the weights.
        overwrite: replace an existing entry's weights and thresholds (never its card).
    Returns:
        what was written and measured: ``weights``, ``card`` (None when one was kept),
        ``thresholds``, ``source_bytes``, ``bytes`` and ``to_half``'s measures (``max_rel_error``,
        ``worst``, ``flushed``, ``fp32_bytes``, ``fp16_bytes``).
    """
    if not NAME.match(name):
        raise ExportError(f"--name must be letters, digits, '_' or '-' (it becomes a file name), got {name!r}")
    out_dir = out_dir or zoo_dir()
    weights = os.path.join(out_dir, name + WEIGHTS_SUFFIX)
    if os.path.exists(weights) and not overwrite:
        raise ExportError(f"the zoo already has {name!r}: pass --overwrite to replace it ({weights})")
    src = resolve_weights(src)
    ck = read_checkpoint(src)
    model, cfg = model_from_checkpoint(ck, src, "cpu", config)  # finite, fitting its config
    test_cfg = apply_thresholds(cfg.test, thresholds) if thresholds else cfg.test
    check_class_counts(test_cfg, cfg.model.roi_heads.num_classes, source=thresholds or src)
    state = ck["model"] if isinstance(ck, dict) and isinstance(ck.get("model"), dict) else ck
    half = to_half(state, src)
    entry = {
        "model": half["state"], "config": to_dict(cfg), "iteration": int(ck.get("iteration", 0) or 0),
        "zoo": {"name": name, "source": os.path.abspath(src), "source_sha256": _sha256(src), "dtype": "float16",
                "exported": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")},
    }
    os.makedirs(out_dir, exist_ok=True)
    if thresholds:
        with open(thresholds, encoding="utf-8") as f:
            atomic_write_text(os.path.join(out_dir, name + THRESHOLDS_SUFFIX), f.read())
    atomic_save(entry, weights)  # before the card, which states the file's size
    card = os.path.join(out_dir, name + CARD_SUFFIX)
    wrote_card = not os.path.exists(card)
    if wrote_card:
        params = sum(p.numel() for p in model.parameters())
        atomic_write_text(card, _card(name, src, cfg, entry, os.path.getsize(weights), params))
    return {"weights": weights, "card": card if wrote_card else None,
            "thresholds": os.path.join(out_dir, name + THRESHOLDS_SUFFIX) if thresholds else None,
            "source_bytes": os.path.getsize(src), "bytes": os.path.getsize(weights),
            **{k: half[k] for k in ("max_rel_error", "worst", "flushed", "fp32_bytes", "fp16_bytes")}}
