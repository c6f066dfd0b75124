"""The ablation table: one row per variant, columns
Variant | Backbone | Iterations | Ensemble | Normalization | Color aug | TTA | mAP | <per class>,
as Markdown (``ablation.md``) and CSV (``ablation.csv``)."""
from __future__ import annotations

import csv
import io
from typing import Dict, List, Optional, Sequence, Tuple

from maskrcnn.config import Config
from maskrcnn.evaluation.ablation_spec import Variant

TABLE_COLUMNS = ("Variant", "Backbone", "Iterations", "Ensemble", "Normalization", "Color aug", "TTA", "mAP")
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


def per_class_columns(summaries: Sequence[dict], class_names: Sequence[str]) -> List[str]:
    """The per-class columns: the classes some variant scored, in label order, then any others."""
    seen = []
    for summary in summaries:
        for name in summary["per_class"]:
            if name not in seen:
                seen.append(name)
    return [c for c in class_names if c in seen] + [c for c in seen if c not in class_names]


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
