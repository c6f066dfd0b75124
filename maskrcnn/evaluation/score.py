"""Score a submission file against a label file (``python evaluate.py score``).

Image ids and sizes come from the label file; an image missing from the submission counts as
an image with no prediction; the submission is validated as Kaggle would (``maskrcnn.inference.submission``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from maskrcnn.data.rle import runs_to_crops
from maskrcnn.evaluation.kaggle import THRESHOLDS, KaggleEvaluator
from maskrcnn.inference.submission import (
    find_overlaps,
    group_rows,
    label_masks,
    parse_image_rows,
    read_labels,
    read_submission,
)
from maskrcnn.structures import MaskList


@dataclass
class ScoreResult:
    summary: dict  # KaggleEvaluator.summary()
    errors: List[str]  # what Kaggle would reject the submission for; empty when valid
    per_image: dict  # image_id -> score
    num_rows: int
    missing_images: List[str]  # label images with no row in the submission (scored as empty)


def score_files(submission_path: str, labels_path: str, order: str = "row",
                evaluator: Optional[KaggleEvaluator] = None) -> ScoreResult:
    """Validate and score ``submission_path`` against ``labels_path``.

    Rows that do not parse are left out of the scoring (and reported in ``errors``); rows whose
    masks overlap are reported and scored as they are. Raises SubmissionError / RLEError for a
    malformed file (header, columns) or a malformed label row.
    """
    labels = read_labels(labels_path)
    rows = read_submission(submission_path)
    per_image_rows = group_rows(rows)
    errors: List[str] = []
    for image_id, img_rows in per_image_rows.items():
        if image_id not in labels:
            errors.append(f"{submission_path}: line {img_rows[0].line}: image id {image_id!r} is not in the label file")
    ev = evaluator if evaluator is not None else KaggleEvaluator()
    missing = []
    for image_id, img in labels.items():  # one image at a time bounds memory
        gt = label_masks(img, order, source=labels_path)
        img_rows = per_image_rows.get(image_id)
        if img_rows is None:
            missing.append(image_id)
            pred = MaskList.empty((img.height, img.width))
        else:
            parsed, errs = parse_image_rows(img_rows, img.height, img.width, f"{submission_path}: ")
            errors.extend(errs)
            errors.extend(f"{submission_path}: {m}" for m in find_overlaps(parsed))
            pred = runs_to_crops(parsed.runs, parsed.owner, len(parsed.rows), img.height, img.width, order, pad=0)
        ev.add(image_id, pred, gt, class_name=img.cell_type)
    return ScoreResult(ev.summary(), errors, ev.per_image(), len(rows), missing)


def format_report(result: ScoreResult) -> List[str]:
    """Lines to print; the last one is ``mAP <value>`` with 4 decimals."""
    s = result.summary
    lines = [f"images {s['num_images']}  submission rows {result.num_rows}  images without rows {len(result.missing_images)}"]
    for name, value in s["per_class"].items():
        lines.append(f"class {name:<12} {value:.4f}  ({s['per_class_num_images'][name]} images)")
    lines.append("per threshold " + " ".join(f"{t:.2f}:{p:.4f}" for t, p in zip(THRESHOLDS, s["per_threshold"])))
    lines.append(f"mAP {s['mAP']:.4f}")
    return lines
