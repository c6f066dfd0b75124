"""Final predictions -> ``submission.csv`` (Kaggle's format, ../shared/CONVENTIONS.md).

``id,predicted``: one row per object, RLE with 1-indexed starts in row-major order by default
(Sartorius; ``order="col"`` for the 2018 Data Science Bowl), and one row with an empty
``predicted`` for an image without objects.

Encoding, validation and writing are the evaluation team's (``maskrcnn.evaluation.submission``:
``masks_to_rows``, ``validate_submission_rows``, ``write_submission``); this module checks that
predictions are final (binary), that every image has a row, and refuses to write an invalid file.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from maskrcnn.evaluation.submission import (SubmissionError, SubmissionRow, masks_to_rows, validate_submission_rows,
                                            write_submission)
from maskrcnn.structures import Instances

Row = Tuple[str, str]


def instances_to_rows(image_id: str, instances: Instances, order: str = "row") -> List[Row]:
    """Rows ``(image_id, rle)`` of one image's final (bool, non-overlapping) masks.

    Empty masks are left out; an image without objects gets one row ``(image_id, "")``.
    """
    m = instances.masks
    if m is None:
        raise ValueError(f"{image_id}: instances have no masks")
    if m.is_soft:
        raise ValueError(f"{image_id}: masks must be binary (run postprocess first)")
    return masks_to_rows(image_id, m, order)


def validate_rows(rows: Sequence[Row], image_sizes: Dict[str, Tuple[int, int]], source: str = "submission") -> None:
    """Raise SubmissionError listing every problem Kaggle would reject ``rows`` for.

    Args:
        rows: ``(image_id, rle)`` pairs in file order (row k is line k + 2 of the file).
        image_sizes: ``image_id -> (height, width)`` of every image that must appear.
    """
    sub_rows = [SubmissionRow(str(r[0]), r[1] or "", k + 2) for k, r in enumerate(rows)]
    errors = validate_submission_rows(sub_rows, image_sizes, source)
    missing = sorted(set(image_sizes) - {r.image_id for r in sub_rows})
    if missing:
        errors.append(f"{source}: {len(missing)} image(s) have no row, e.g. {missing[0]!r}")
    if errors:
        more = f"\n... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise SubmissionError("invalid submission:\n" + "\n".join(errors[:10]) + more)


def save_submission(rows: Sequence[Row], path: str, image_sizes: Dict[str, Tuple[int, int]]) -> None:
    """Validate ``rows`` against ``image_sizes`` and write them to ``path`` atomically."""
    validate_rows(rows, image_sizes, source=path)
    write_submission(rows, path)


__all__ = ["SubmissionError", "instances_to_rows", "save_submission", "validate_rows"]
