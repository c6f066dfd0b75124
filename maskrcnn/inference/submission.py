"""Kaggle's CSV files: submissions and label files, read, validated as Kaggle would, written.

- Submission (``submission.csv``): header ``id,predicted``; one row per predicted object; an image
  with no prediction has one row with an empty ``predicted``. The 2018 Data Science Bowl's
  ``ImageId,EncodedPixels`` (column-major RLE) is read and written too (``DSB_SUBMISSION_HEADER``;
  ``csv_kind`` and ``order_for`` tell a file's competition and RLE order).
- Labels (Sartorius ``train.csv``): ``id,annotation,width,height[,cell_type,...]``, one row per
  object (objects may overlap). The 2018 Data Science Bowl's header ``ImageId,EncodedPixels,
  Height,Width`` is read too (its RLE is column-major: pass ``order="col"``).
- RLE: ``start length`` pairs, 1-indexed starts, row-major by default (``maskrcnn.formats.rle``, the
  one codec; docs/conventions.md).

Kaggle rejects a submission whose pairs are malformed, not positive, not sorted, run past the
image, or whose masks overlap within an image (a pixel covered twice).
``validate_submission_rows`` lists each such problem naming the CSV line and the image id;
``save_submission`` (what ``predict.py`` writes through) refuses to write an invalid file.

Masks are decoded from runs straight into crops (``MaskList``): never one full-image mask per
object.
"""
from __future__ import annotations

import csv
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from maskrcnn.formats.rle import RLEError, decode_crops, encode_crops, parse_rle, parse_rle_batch
from maskrcnn.errors import UserError
from maskrcnn.fileio import atomic_open
from maskrcnn.structures import Instances, MaskList

SUBMISSION_HEADER = ("id", "predicted")
DSB_SUBMISSION_HEADER = ("ImageId", "EncodedPixels")  # 2018 Data Science Bowl (column-major RLE)
# Our names for the label columns, and the DSB2018 solution file's names for the same.
_LABEL_ALIASES = {"imageid": "id", "encodedpixels": "annotation"}
_DSB_HEADER_LOWER = tuple(h.lower() for h in DSB_SUBMISSION_HEADER)
_UNBOUNDED = 1 << 62  # image size when bounds are unknown: only pair syntax and order are checked


class SubmissionError(UserError, ValueError):
    """A malformed submission or label file; the message names the file and line."""


@dataclass
class SubmissionRow:
    """One row of a submission: ``rle`` is "" for an image's "no object" row; ``line`` is 1-based
    (the header is line 1)."""

    image_id: str
    rle: str
    line: int = 0


@dataclass
class LabelImage:
    """Ground truth of one image read from a label file."""

    image_id: str
    height: int
    width: int
    cell_type: Optional[str] = None
    rles: List[str] = field(default_factory=list)  # non-empty annotations only
    lines: List[int] = field(default_factory=list)


# Largest image side a label file may declare: larger sizes are typos (and would overflow pixel
# numbers); 2^20 px per side is beyond any microscope's single field of view.
MAX_SIDE = 1 << 20


def csv_records(path: str) -> Iterator[Tuple[int, List[str]]]:
    """``(line number, fields)`` of each record of a CSV file (the header is line 1).

    Raises SubmissionError naming the file for a folder, a missing file, bytes that are not UTF-8
    text (a binary file) and a malformed record (a NUL byte, an unclosed quote), with its line.
    """
    if os.path.isdir(path):
        raise SubmissionError(f"a CSV file expected, got a folder ({path})")
    if not os.path.isfile(path):
        raise SubmissionError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig drops a BOM some editors write
        reader = csv.reader(f)
        try:
            for rec in reader:
                yield reader.line_num, rec
        except UnicodeDecodeError:
            raise SubmissionError(f"not a UTF-8 text (CSV) file: undecodable bytes near line "
                                  f"{reader.line_num + 1} ({path})") from None
        except csv.Error as e:
            raise SubmissionError(f"{path}: line {reader.line_num}: not a valid CSV record ({e})") from None


def csv_kind(path: str) -> str:
    """``"dsb"`` when the CSV's header has the 2018 Data Science Bowl's column names
    (``ImageId``, ``EncodedPixels``: its RLE is column-major), else ``"sartorius"`` (row-major)."""
    _, first = next(csv_records(path), (1, []))
    header = {h.strip().lower() for h in first}
    return "dsb" if {"imageid", "encodedpixels"} <= header else "sartorius"


def order_for(paths: Sequence[str], order: str = "auto") -> str:
    """The RLE order to read ``paths`` with: ``order`` unless ``"auto"``, which takes the files'
    competition (``csv_kind``: DSB2018 -> ``"col"``, Sartorius -> ``"row"``). Files of both
    competitions under ``"auto"`` are a SubmissionError asking for ``--order``."""
    if order != "auto":
        return order
    kinds = {p: csv_kind(p) for p in paths}
    if len(set(kinds.values())) > 1:
        named = ", ".join(f"{p} ({'ImageId,EncodedPixels' if k == 'dsb' else 'id,...'})" for p, k in kinds.items())
        raise SubmissionError(f"the files mix DSB2018 and Sartorius headers, so their RLE order is unclear: "
                              f"give --order row or col, and --labels-order for a label file of the other kind ({named})")
    return "col" if "dsb" in kinds.values() else "row"


# ------------------------------------------------------------------------------ reading
def read_submission(path: str) -> List[SubmissionRow]:
    """Rows of a submission file, in file order.

    The header is Sartorius' ``id,predicted`` or the 2018 Data Science Bowl's
    ``ImageId,EncodedPixels`` (``csv_kind`` tells which; the RLE order is the caller's).
    Raises SubmissionError for another header, a row without exactly two fields, or an empty id.
    RLE strings are not parsed here (``validate_submission_rows`` does that).
    """
    records = csv_records(path)
    _, header = next(records, (1, None))
    if header is None:
        raise SubmissionError(f"{path}: empty file; expected the header 'id,predicted' (or 'ImageId,EncodedPixels')")
    if tuple(h.strip().lower() for h in header) not in (SUBMISSION_HEADER, _DSB_HEADER_LOWER):
        raise SubmissionError(f"{path}: line 1: header is {','.join(header)!r}; expected 'id,predicted' "
                              "(Sartorius) or 'ImageId,EncodedPixels' (DSB2018)")
    rows = []
    for line, rec in records:
        if not rec:
            continue  # a blank line
        if len(rec) != 2:
            raise SubmissionError(f"{path}: line {line}: expected 2 fields (id,predicted), got {len(rec)}: {rec!r}")
        image_id = rec[0].strip()
        if not image_id:
            raise SubmissionError(f"{path}: line {line}: empty image id")
        rows.append(SubmissionRow(image_id, rec[1].strip(), line))
    return rows


def read_labels(path: str) -> "OrderedDict[str, LabelImage]":
    """Ground truth of a label file, grouped per image in order of first appearance.

    Columns (any order, extra columns ignored): ``id, annotation, width, height`` and optionally
    ``cell_type`` (Sartorius), or ``ImageId, EncodedPixels, Height, Width`` (DSB2018). A row with
    an empty annotation declares an image without objects. Raises SubmissionError naming the line
    for a missing column, a bad width/height, or sizes / cell types that differ between rows of
    one image.
    """
    records = csv_records(path)
    images: "OrderedDict[str, LabelImage]" = OrderedDict()
    _, header = next(records, (1, None))
    if header is None:
        raise SubmissionError(f"{path}: empty file; expected a header with id,annotation,width,height")
    names = [h.strip().lower() for h in header]
    names = [_LABEL_ALIASES.get(n, n) for n in names]
    col = {n: k for k, n in enumerate(names)}
    missing = [n for n in ("id", "annotation", "width", "height") if n not in col]
    if missing:
        raise SubmissionError(f"{path}: line 1: missing column(s) {', '.join(missing)} (header: {','.join(header)})")
    i_id, i_ann, i_w, i_h = col["id"], col["annotation"], col["width"], col["height"]
    i_ct = col.get("cell_type")
    seen: Dict[Tuple[str, str], int] = {}
    for line, rec in records:
        if not rec:
            continue
        if len(rec) < len(names):
            raise SubmissionError(f"{path}: line {line}: expected {len(names)} fields, got {len(rec)}")
        image_id = rec[i_id].strip()
        try:
            w, h = int(rec[i_w]), int(rec[i_h])
        except ValueError:
            raise SubmissionError(f"{path}: line {line}: width/height must be integers, got {rec[i_w]!r}/{rec[i_h]!r}") from None
        if w < 1 or h < 1:
            raise SubmissionError(f"{path}: line {line}: width/height must be positive, got {w}/{h}")
        if w > MAX_SIDE or h > MAX_SIDE:
            raise SubmissionError(f"{path}: line {line}: width/height {w}/{h} is too large (at most {MAX_SIDE} per side)")
        cell_type = rec[i_ct].strip() if i_ct is not None else None
        img = images.get(image_id)
        if img is None:
            img = images[image_id] = LabelImage(image_id, h, w, cell_type or None)
        elif (img.height, img.width) != (h, w):
            raise SubmissionError(
                f"{path}: line {line}: image {image_id} is {h}x{w} here but {img.height}x{img.width} on line {img.lines[0] if img.lines else '?'}"
            )
        elif cell_type and img.cell_type and cell_type != img.cell_type:
            raise SubmissionError(f"{path}: line {line}: image {image_id} has cell_type {cell_type!r} here but {img.cell_type!r} before")
        ann = rec[i_ann].strip()
        if ann:
            first = seen.setdefault((image_id, " ".join(ann.split())), line)
            if first != line:  # scored as two objects, it caps a perfect submission below 1
                raise SubmissionError(f"{path}: line {line}: image {image_id} lists the same object as on line {first}; "
                                      "a label file holds each object once")
            img.rles.append(ann)
            img.lines.append(line)
    return images


def group_rows(rows: Iterable[SubmissionRow]) -> "OrderedDict[str, List[SubmissionRow]]":
    """Rows per image id, in order of first appearance."""
    out: "OrderedDict[str, List[SubmissionRow]]" = OrderedDict()
    for r in rows:
        out.setdefault(r.image_id, []).append(r)
    return out


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


# ------------------------------------------------------------------------------ decoding
def label_masks(img: LabelImage, order: str = "row", source: Optional[str] = None) -> MaskList:
    """Ground-truth masks of one image of a label file, cropped to their tight boxes. Unsorted runs
    are allowed in labels; RLEError names ``source`` and the line of a malformed one."""
    return decode_crops(img.rles, img.height, img.width, order, pad=0, source=source, rows=img.lines, strict=False)


# ------------------------------------------------------------------------------- writing
def masks_to_rows(image_id: str, masks: MaskList, order: str = "row") -> List[Tuple[str, str]]:
    """Submission rows ``(image_id, rle)`` of one image; one ``(image_id, "")`` row when it has none.

    Masks that are empty are left out (they would be rows Kaggle cannot score).
    """
    masks = masks.threshold()
    rles = [r for r in encode_crops(masks.crops, masks.origins, masks.image_size, order) if r]
    return [(image_id, r) for r in rles] if rles else [(image_id, "")]


def _atomic_write_rows(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow(r)


def write_submission(rows: Iterable, path: str, header: Sequence[str] = SUBMISSION_HEADER) -> None:
    """Write ``id,predicted`` rows atomically (temp file + os.replace).

    ``rows``: ``SubmissionRow``s or ``(image_id, rle)`` pairs, e.g. from ``masks_to_rows``.
    ``header``: ``DSB_SUBMISSION_HEADER`` for a 2018 Data Science Bowl file (encode its rows with
    ``order="col"``).
    """
    def as_pair(r):
        return (r.image_id, r.rle) if isinstance(r, SubmissionRow) else (str(r[0]), r[1] or "")

    _atomic_write_rows(path, header, (as_pair(r) for r in rows))


def write_labels(path: str, items: Iterable[Tuple[str, MaskList, Optional[str]]], order: str = "row") -> None:
    """Write ground truth as a label file (atomically): Sartorius-style ``id,annotation,width,height,
    cell_type`` for row-major RLE, and with ``order="col"`` the 2018 Data Science Bowl's column names
    ``ImageId,EncodedPixels,Height,Width,cell_type``, so that the header tells every reader the order
    (``order_for``).

    ``items``: ``(image_id, masks, cell_type)`` per image; ``cell_type`` may be None (then the
    column is written empty). An image without objects gets one row with an empty annotation.
    """
    def gen():
        for image_id, masks, cell_type in items:
            H, W = masks.image_size
            for _, rle in masks_to_rows(image_id, masks, order):
                yield (image_id, rle, W, H, cell_type or "") if order != "col" else (image_id, rle, H, W, cell_type or "")

    header = (("ImageId", "EncodedPixels", "Height", "Width", "cell_type") if order == "col"
              else ("id", "annotation", "width", "height", "cell_type"))
    _atomic_write_rows(path, header, gen())


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


def save_submission(rows: Sequence[Row], path: str, image_sizes: Dict[str, Tuple[int, int]],
                    header: Sequence[str] = SUBMISSION_HEADER) -> None:
    """Validate ``rows`` against ``image_sizes`` and write them to ``path`` atomically (``header``:
    see ``write_submission``)."""
    validate_rows(rows, image_sizes, source=path)
    write_submission(rows, path, header)

