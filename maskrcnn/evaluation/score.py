"""Score a submission file against a label file (``python evaluate.py score``).

Image ids and sizes come from the label file; an image missing from the submission counts as
an image with no prediction; the submission is validated as Kaggle would (``maskrcnn.inference.submission``).
Masks are scored as run lists (``maskrcnn.evaluation.run_masks.RunMasks``): memory and time follow the
objects' runs, so one image-sized object among a thousand small ones costs what it holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from maskrcnn.evaluation.kaggle import THRESHOLDS, KaggleEvaluator
from maskrcnn.evaluation.run_masks import RunMasks
from maskrcnn.formats.kaggle_csv import group_rows, read_labels, read_submission
from maskrcnn.inference.submission import find_overlaps, parse_image_rows


@dataclass
class ScoreResult:
    summary: dict  # KaggleEvaluator.summary()
    errors: List[str]  # what Kaggle would reject the submission for; empty when valid
    per_image: dict  # image_id -> score
    num_rows: int
    missing_images: List[str]  # label images with no row in the submission (scored as empty)


def score_files(submission_path: str, labels_path: str, order: str = "row",
                evaluator: Optional[KaggleEvaluator] = None, labels_order: Optional[str] = None) -> ScoreResult:
    """Validate and score ``submission_path`` against ``labels_path``.

    ``order`` is the submission's RLE pixel order, ``labels_order`` the label file's (default:
    ``order``). Rows that do not parse are left out of the scoring (and reported in ``errors``);
    rows whose masks overlap are reported and scored as they are. Raises KaggleCsvError /
    RLEError for a malformed file (header, columns) or a malformed label row.
    """
    labels_order = order if labels_order is None else labels_order
    labels = read_labels(labels_path)
    rows = read_submission(submission_path)
    per_image_rows = group_rows(rows)
    errors: List[str] = []
    for image_id, img_rows in per_image_rows.items():
        if image_id not in labels:
            errors.append(f"{submission_path}: line {img_rows[0].line}: image id {image_id!r} is not in the label file")
    ev = evaluator if evaluator is not None else KaggleEvaluator()
    missing = []
    for image_id, img in labels.items():  # one image at a time; masks stay run lists (RunMasks)
        gt = RunMasks.from_rles(img.rles, img.height, img.width, labels_order, source=labels_path, rows=img.lines,
                                strict=False)  # label files may hold unsorted or overlapping runs
        img_rows = per_image_rows.get(image_id)
        if img_rows is None:
            missing.append(image_id)
            pred = RunMasks.empty((img.height, img.width))
        else:
            parsed, errs = parse_image_rows(img_rows, img.height, img.width, f"{submission_path}: ")
            errors.extend(errs)
            errors.extend(f"{submission_path}: {m}" for m in find_overlaps(parsed))
            pred = RunMasks(parsed.runs, parsed.owner, len(parsed.rows), img.height, img.width, order)
        ev.add(image_id, pred, gt, class_name=img.cell_type)
    return ScoreResult(ev.summary(), errors, ev.per_image(), len(rows), missing)


# A score this low with predictions present is worth a second look at the pixel order.
_SUSPICIOUS_MAP = 0.3


def order_hint(result: ScoreResult, submission_path: str, labels_path: str, order: str = "row",
               labels_order: Optional[str] = None) -> Optional[str]:
    """A warning when the submission scores far better read in the other pixel order, else None.

    A column-major submission read as row-major (or the reverse) decodes into scattered pixels and
    scores ~0 with no other sign: when the score is low (< 0.3) and the submission has objects,
    it is scored again in the other order (the labels keep theirs); a clearly better score
    (> 2x + 0.05) is reported with the option to use.
    """
    mAP = result.summary["mAP"]
    if not (result.num_rows and mAP < _SUSPICIOUS_MAP):
        return None
    labels_order = order if labels_order is None else labels_order
    other = "col" if order == "row" else "row"
    alt = score_files(submission_path, labels_path, order=other, labels_order=labels_order).summary["mAP"]
    if not alt > 2 * mAP + 0.05:
        return None
    return (f"the submission scores {alt:.4f} read in {other}-major pixel order but {mAP:.4f} in {order}-major: "
            f"try --order {other}" + ("" if other == labels_order else f" --labels-order {labels_order}")
            + f" ({submission_path})")


def format_report(result: ScoreResult) -> List[str]:
    """Lines to print; the last one is ``mAP <value>`` with 4 decimals."""
    s = result.summary
    lines = [f"images {s['num_images']}  submission rows {result.num_rows}  images without rows {len(result.missing_images)}"]
    for name, value in s["per_class"].items():
        lines.append(f"class {name:<12} {value:.4f}  ({s['per_class_num_images'][name]} images)")
    lines.append("per threshold " + " ".join(f"{t:.2f}:{p:.4f}" for t, p in zip(THRESHOLDS, s["per_threshold"])))
    lines.append(f"mAP {s['mAP']:.4f}")
    return lines
