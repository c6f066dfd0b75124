"""Final predictions -> ``submission.csv`` rows (Kaggle's format, ../shared/CONVENTIONS.md).

``id,predicted``: one row per object, RLE with 1-indexed starts in row-major order by default
(Sartorius; ``order="col"`` for the 2018 Data Science Bowl), and one row with an empty
``predicted`` for an image without objects.

Validation and writing belong to the evaluation team (``maskrcnn.evaluation.submission``:
``validate_submission_rows``, ``write_submission``); they are used when present, and the local
twins below (same checks: decodes, positive sorted pairs, no pixel twice within an image, every
image present) stand in until then.
"""
from __future__ import annotations

import csv
import os
import tempfile
from typing import Dict, List, Sequence, Tuple

import numpy as np

from maskrcnn.data.rle import RLEError, encode_crops, parse_rle
from maskrcnn.structures import Instances

Row = Tuple[str, str]


def instances_to_rows(image_id: str, instances: Instances, order: str = "row") -> List[Row]:
    """Rows ``(image_id, rle)`` of one image's final (bool, non-overlapping) masks.

    Masks that are empty inside the image are skipped; an image without objects gets one row
    ``(image_id, "")``.
    """
    m = instances.masks
    if m is None:
        raise ValueError(f"{image_id}: instances have no masks")
    if m.is_soft:
        raise ValueError(f"{image_id}: masks must be binary (run postprocess first)")
    rles = [r for r in encode_crops(m.crops, m.origins, m.image_size, order) if r]
    if not rles:
        return [(image_id, "")]
    return [(image_id, r) for r in rles]


def _validate_rows_local(rows: Sequence[Row], image_sizes: Dict[str, Tuple[int, int]], order: str = "row") -> None:
    by_image: Dict[str, List[int]] = {}
    for k, row in enumerate(rows):
        if len(row) != 2:
            raise ValueError(f"submission row {k}: expected (id, predicted), got {row!r}")
        by_image.setdefault(str(row[0]), []).append(k)
    unknown = sorted(set(by_image) - set(image_sizes))
    if unknown:
        raise ValueError(f"submission: {len(unknown)} row id(s) name no known image, e.g. {unknown[0]!r}")
    missing = sorted(set(image_sizes) - set(by_image))
    if missing:
        raise ValueError(f"submission: {len(missing)} image(s) have no row, e.g. {missing[0]!r}")
    for image_id, ks in by_image.items():  # a loop over images; runs of one image are checked at once
        h, w = image_sizes[image_id]
        runs = [parse_rle(rows[k][1], h, w, source=f"submission {image_id}", row=k) for k in ks]
        empty = [k for k, r in zip(ks, runs) if r.shape[0] == 0]
        if empty and len(ks) > 1:
            raise ValueError(f"submission row {empty[0]}: empty prediction for {image_id}, which has other objects")
        allr = np.concatenate(runs) if runs else np.zeros((0, 2), dtype=np.int64)
        if allr.shape[0] > 1:
            allr = allr[np.argsort(allr[:, 0], kind="stable")]
            ends = allr[:-1, 0] + allr[:-1, 1]
            bad = allr[1:, 0] < ends
            if bad.any():
                pixel = int(allr[1:, 0][bad][0])
                raise ValueError(f"submission: masks of {image_id} overlap (pixel {pixel + 1} is covered twice)")


def validate_rows(rows: Sequence[Row], image_sizes: Dict[str, Tuple[int, int]], order: str = "row") -> None:
    """Raise ValueError (RLEError) naming the row when ``rows`` break Kaggle's rules.

    Args:
        rows: ``(image_id, rle)`` pairs.
        image_sizes: ``image_id -> (height, width)`` of every image that must appear.
    """
    _validate_rows_local(rows, image_sizes, order)


def write_rows(rows: Sequence[Row], path: str) -> None:
    """Write ``id,predicted`` rows to ``path`` atomically (temp file in the same folder + os.replace)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".submission.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["id", "predicted"])
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_submission(rows: Sequence[Row], path: str, image_sizes: Dict[str, Tuple[int, int]], order: str = "row") -> None:
    """Validate ``rows`` against ``image_sizes`` and write them to ``path`` atomically."""
    validate_rows(rows, image_sizes, order)
    write_rows(rows, path)


__all__ = ["RLEError", "instances_to_rows", "save_submission", "validate_rows", "write_rows"]
