"""Cross-validation figures: one training per fold, scored on its held-out fold, summarised.

``evaluate.py crossval CONFIG --out DIR --folds 0,1,2,3,4`` trains the config once per fold (run
folders ``DIR/fold<k>``; a fold whose run already finished is not trained again, an interrupted
one resumes) and summarises the final validation each run wrote to its ``metrics.jsonl``: the
Kaggle mAP of the held-out fold with the config's test section (the submission's post-processing,
no TTA), overall, per imaging domain (``val/mAP/<domain>``: DSB2018's fluorescence, brightfield
and histology), and at the strict IoU thresholds.

Two means, because the folds inherit the data's mix (DSB2018 stage1_train: 541 fluorescence,
107 histology and 16 brightfield images; each fold about 108 / 21 / 3):

- **mAP**: the mean over images, as Kaggle scores a test set with this mix;
- **domain-weighted**: the mean of the per-domain mAPs, each domain counted once, the figure to
  decide levers on when the test set's mix is unknown (a model can raise the plain mean while
  losing the minority domains).

``mAP@0.75+`` is the mean precision at IoU 0.75, 0.80, ..., 0.95: how well masks follow the
boundary. Each column is reported as mean and sample standard deviation over the folds.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence

from maskrcnn.errors import UserError
from maskrcnn.fileio import atomic_write_text

STRICT_IOUS = ("0.75", "0.80", "0.85", "0.90", "0.95")


def fold_dir(root: str, fold: int) -> str:
    """The run folder of ``fold`` under ``root``."""
    return os.path.join(root, f"fold{int(fold)}")


def final_validation(run_dir: str) -> Optional[dict]:
    """The last record with ``val/mAP`` in ``run_dir/metrics.jsonl``, or None (no file, no validation yet)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    last = None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise UserError(f"{path}, line {n}: not a JSON record") from None
            if isinstance(rec, dict) and "val/mAP" in rec:
                last = rec
    return last


def fold_row(scores: dict, domains: Sequence[str]) -> Dict[str, float]:
    """One fold's figures from its validation record: mAP, each domain, domain-weighted, mAP@0.75+."""
    row = {"mAP": float(scores["val/mAP"])}
    present = [d for d in domains if f"val/mAP/{d}" in scores]
    for d in present:
        row[d] = float(scores[f"val/mAP/{d}"])
    if present:
        row["domain-weighted"] = sum(row[d] for d in present) / len(present)
    strict = [float(scores[f"val/mAP@{t}"]) for t in STRICT_IOUS if f"val/mAP@{t}" in scores]
    if strict:
        row["mAP@0.75+"] = sum(strict) / len(strict)
    row["images"] = float(scores.get("val/num_images", 0))
    return row


def domains_of(records: Sequence[dict]) -> List[str]:
    """The domain (class) names that have a per-domain score in any record, in first-seen order."""
    names: List[str] = []
    for rec in records:
        for k in rec:
            if k.startswith("val/mAP/") and "@" not in k and k[8:] not in names:
                names.append(k[8:])
    return names


def mean_std(values: Sequence[float]):
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, sd


def summarize(records: Dict[int, dict]) -> dict:
    """``{"folds": {k: row}, "columns": [...], "mean": {col: m}, "std": {col: sd}}`` over the folds."""
    if not records:
        raise ValueError("no fold has a validation record")
    domains = domains_of(list(records.values()))
    rows = {int(k): fold_row(rec, domains) for k, rec in sorted(records.items())}
    columns = ["mAP", "domain-weighted", *domains, "mAP@0.75+"]
    columns = [c for c in columns if any(c in r for r in rows.values())]
    mean, std = {}, {}
    for c in columns:
        vals = [r[c] for r in rows.values() if c in r]
        mean[c], std[c] = mean_std(vals)
    return {"folds": rows, "columns": columns, "mean": mean, "std": std}


def format_table(summary: dict, title: str = "") -> str:
    """A Markdown table: one row per fold, then mean and standard deviation."""
    cols = summary["columns"]
    lines = [f"# {title}", ""] if title else []
    lines += ["| fold | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for k, row in summary["folds"].items():
        lines.append(f"| {k} | " + " | ".join(f"{row[c]:.4f}" if c in row else "-" for c in cols) + " |")
    n = len(summary["folds"])
    lines.append(f"| mean of {n} | " + " | ".join(f"**{summary['mean'][c]:.4f}**" for c in cols) + " |")
    lines.append("| std | " + " | ".join(f"{summary['std'][c]:.4f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_report(root: str, summary: dict, title: str = "") -> List[str]:
    """Write ``root/crossval.md`` (the table) and ``root/crossval.json`` atomically; return their paths."""
    md, js = os.path.join(root, "crossval.md"), os.path.join(root, "crossval.json")
    atomic_write_text(md, format_table(summary, title))
    atomic_write_text(js, json.dumps({**summary, "folds": {str(k): v for k, v in summary["folds"].items()}},
                                     indent=1, sort_keys=True) + "\n")
    return [md, js]


__all__ = ["fold_dir", "final_validation", "fold_row", "summarize", "format_table", "write_report", "mean_std",
           "STRICT_IOUS"]
