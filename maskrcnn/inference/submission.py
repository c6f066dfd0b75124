"""A submission Kaggle accepts: predictions to rows, checked as Kaggle would, then written.

Kaggle rejects a submission whose pairs are malformed, not positive, not sorted, run past the
image, or whose masks overlap within an image (a pixel covered twice).
``validate_submission_rows`` lists each such problem naming the CSV line and the image id;
``save_submission`` (what ``predict.py`` writes through) refuses to write an invalid file.
The file format itself (reading, writing, the columns of both competitions) is
``maskrcnn.formats.kaggle_csv``'s.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from maskrcnn.formats.kaggle_csv import (SUBMISSION_HEADER, KaggleCsvError, SubmissionRow, group_rows, masks_to_rows,
                                         write_submission)
from maskrcnn.formats.rle import RLEError, parse_rle, parse_rle_batch
from maskrcnn.structures import Instances

_UNBOUNDED = 1 << 62  # image size when bounds are unknown: only pair syntax and order are checked


# ---------------------------------------------------------------------------- validation
@dataclass
class ParsedRows:
    """The rows of one image whose RLE parsed: their runs, and which row each run belongs to."""

    rows: List[SubmissionRow]
    runs: np.ndarray  # int64[K, 2]: 0-indexed start, length
    owner: np.ndarray  # int64[K]: index into rows


def parse_image_rows(rows: Sequence[SubmissionRow], height: int, width: int, source: str = "") -> Tuple[ParsedRows, list]:
    """Parse the non-empty RLE rows of one image.

    Returns ``(parsed, errors)``: the rows that parse with their runs, and a message (naming the
    line and image) for each row that does not; such rows are left out of ``parsed``.
    """
    rows = [r for r in rows if r.rle]
    runs, owner, bad = parse_rle_batch([r.rle for r in rows], height, width, strict=True)
    errors = []
    for k in bad:  # only the rejected rows are parsed again, for parse_rle's precise message
        try:
            parse_rle(rows[k].rle, height, width, strict=True)
        except RLEError as e:
            errors.append(f"{source}line {rows[k].line} (image {rows[k].image_id}): {e}")
    if bad:  # renumber owners to the rows that parsed
        good = np.ones(len(rows), dtype=bool)
        good[bad] = False
        new_index = np.cumsum(good) - 1
        owner = new_index[owner]
        rows = [r for r, g in zip(rows, good) if g]
    return ParsedRows(rows, runs, owner), errors


def find_overlaps(parsed: ParsedRows, max_report: int = 5) -> List[str]:
    """Messages for pixels covered by two rows of one image (``parsed`` from ``parse_image_rows``)."""
    if len(parsed.rows) < 2:
        return []
    order = np.argsort(parsed.runs[:, 0], kind="stable")
    starts = parsed.runs[order, 0]
    ends = starts + parsed.runs[order, 1]
    owner = parsed.owner[order]
    prev_max = np.maximum.accumulate(ends)
    # Index of the run that holds the running maximum end, to name the earlier row.
    holder = np.maximum.accumulate(np.where(ends == prev_max, np.arange(ends.size), 0))
    k = np.flatnonzero(starts[1:] < prev_max[:-1]) + 1
    if k.size == 0:
        return []
    pairs = OrderedDict()
    for kk in k[: 50 * max_report]:  # messages for the first few overlaps only
        a, b = parsed.rows[owner[holder[kk - 1]]], parsed.rows[owner[kk]]
        key = (min(a.line, b.line), max(a.line, b.line))
        if key[0] != key[1] and key not in pairs:
            pairs[key] = int(starts[kk]) + 1
    image_id = parsed.rows[0].image_id
    msgs = [f"lines {l1} and {l2} (image {image_id}): masks overlap (pixel {px} is covered twice)"
            for (l1, l2), px in list(pairs.items())[:max_report]]
    more = len(pairs) - max_report
    if more > 0:
        msgs.append(f"image {image_id}: {more} more overlapping pairs of rows")
    return msgs


def validate_submission_rows(rows: Sequence[SubmissionRow], image_sizes: Optional[Dict[str, Tuple[int, int]]] = None,
                             source: str = "") -> List[str]:
    """Problems Kaggle would reject the submission for; an empty list means valid.

    Args:
        rows: from ``read_submission``.
        image_sizes: ``{image_id: (height, width)}``; when given, runs past the image and image ids
            not in it are errors. Without it only the pairs' syntax, sign and order are checked,
            and overlaps between rows.
        source: prefix for messages (e.g. the file name).
    Each message names the CSV line(s) and the image id.
    """
    prefix = f"{source}: " if source else ""
    errors: List[str] = []
    for image_id, img_rows in group_rows(rows).items():
        if image_sizes is not None and image_id not in image_sizes:
            errors.append(f"{prefix}line {img_rows[0].line}: image id {image_id!r} is not in the label file")
            continue
        h, w = image_sizes[image_id] if image_sizes is not None else (1, _UNBOUNDED)
        parsed, errs = parse_image_rows(img_rows, h, w, prefix)
        errors.extend(errs)
        errors.extend(prefix + m for m in find_overlaps(parsed))
    return errors


# ------------------------------------------------------------ predictions -> submission
Row = Tuple[str, str]


def instances_to_rows(image_id: str, instances: Instances, order: str = "row") -> List[Row]:
    """Rows ``(image_id, rle)`` of one image's final (bool, non-overlapping) masks.

    Empty masks are left out; an image without objects gets one row ``(image_id, "")``.
    """
    m = instances.masks
    if m is None:
        raise ValueError(f"{image_id}: instances have no masks")
    if m.is_soft:
        raise ValueError(f"{image_id}: masks must be binary (run filter_predictions first)")
    return masks_to_rows(image_id, m, order)


def validate_rows(rows: Sequence[Row], image_sizes: Dict[str, Tuple[int, int]], source: str = "submission") -> None:
    """Raise KaggleCsvError listing every problem Kaggle would reject ``rows`` for.

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
        raise KaggleCsvError("invalid submission:\n" + "\n".join(errors[:10]) + more)


def save_submission(rows: Sequence[Row], path: str, image_sizes: Dict[str, Tuple[int, int]],
                    header: Sequence[str] = SUBMISSION_HEADER) -> None:
    """Validate ``rows`` against ``image_sizes`` and write them to ``path`` atomically (``header``:
    see ``write_submission``)."""
    validate_rows(rows, image_sizes, source=path)
    write_submission(rows, path, header)

