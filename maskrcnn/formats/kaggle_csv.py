"""Kaggle's mask CSV files, both competitions: the one reader and writer of the format.

- Submission: Sartorius ``id,predicted`` or the 2018 Data Science Bowl's ``ImageId,EncodedPixels``
  (``SUBMISSION_HEADER``, ``DSB_SUBMISSION_HEADER``); one row per predicted object; an image with
  no prediction has one row with an empty RLE.
- Label file (ground truth): Sartorius ``id,annotation,width,height[,cell_type,...]`` or DSB2018's
  ``ImageId,EncodedPixels,Height,Width``; one row per object (objects may overlap); a row with an
  empty annotation declares an image without objects.

One set of column names (``COLUMN_ALIASES``: ``ImageId`` is ``id``; ``EncodedPixels`` and
``predicted`` are ``annotation``; case and spaces do not count) and one error type,
``KaggleCsvError``, whose message names the file and the line (the header is line 1).
``csv_kind`` / ``order_for`` tell a file's competition and so its RLE order (DSB2018 column-major,
Sartorius row-major); the RLE strings themselves are ``maskrcnn.formats.rle``'s (the one codec).
Masks are decoded from runs straight into crops (``MaskList``): never one full-image mask per object.
"""
from __future__ import annotations

import csv
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from maskrcnn.errors import UserError
from maskrcnn.fileio import atomic_open
from maskrcnn.formats.rle import decode_crops, encode_crops
from maskrcnn.structures import MaskList

SUBMISSION_HEADER = ("id", "predicted")
DSB_SUBMISSION_HEADER = ("ImageId", "EncodedPixels")  # 2018 Data Science Bowl (column-major RLE)
LABEL_HEADER = ("id", "annotation", "width", "height", "cell_type")
DSB_LABEL_HEADER = ("ImageId", "EncodedPixels", "Height", "Width", "cell_type")
# The other names of our columns (lower case): DSB2018's, and a submission's RLE column.
COLUMN_ALIASES = {"imageid": "id", "encodedpixels": "annotation", "predicted": "annotation"}
# Largest image side a label file may declare: larger sizes are typos (and would overflow pixel
# numbers); 2^20 px per side is beyond any microscope's single field of view.
MAX_SIDE = 1 << 20


class KaggleCsvError(UserError, ValueError):
    """A malformed submission or label file; the message names the file and line."""


@dataclass
class SubmissionRow:
    """One row of a submission: ``rle`` is "" for an image's "no object" row; ``line`` is 1-based
    (the header is line 1)."""

    image_id: str
    rle: str
    line: int = 0


@dataclass
class ImageTruth:
    """The ground truth of one image in a label file: its declared size and its objects' rows."""

    image_id: str
    height: int
    width: int
    cell_type: Optional[str] = None
    rles: List[str] = field(default_factory=list)  # non-empty annotations only
    lines: List[int] = field(default_factory=list)
    first_line: int = 0  # the image's first row (also an empty annotation's)
    empty_lines: List[int] = field(default_factory=list)  # rows with an empty annotation


def column_names(header: Sequence[str]) -> Dict[str, int]:
    """``{our column name: index}`` of a header, through ``COLUMN_ALIASES`` (the first of two
    columns that mean the same wins)."""
    col: Dict[str, int] = {}
    for k, name in enumerate(header):
        n = name.strip().lower()
        col.setdefault(COLUMN_ALIASES.get(n, n), k)
    return col


def csv_records(path: str) -> Iterator[Tuple[int, List[str]]]:
    """``(line number, fields)`` of each record of a CSV file (the header is line 1).

    Raises KaggleCsvError naming the file for a folder, a missing file, bytes that are not UTF-8
    text (a binary file) and a malformed record (a NUL byte, an unclosed quote), with its line.
    """
    if os.path.isdir(path):
        raise KaggleCsvError(f"a CSV file expected, got a folder ({path})")
    if not os.path.isfile(path):
        raise KaggleCsvError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig drops a BOM some editors write
        reader = csv.reader(f)
        try:
            for rec in reader:
                yield reader.line_num, rec
        except UnicodeDecodeError:
            raise KaggleCsvError(f"not a UTF-8 text (CSV) file: undecodable bytes near line "
                                 f"{reader.line_num + 1} ({path})") from None
        except csv.Error as e:
            raise KaggleCsvError(f"{path}: line {reader.line_num}: not a valid CSV record ({e})") from None


def csv_kind(path: str) -> str:
    """``"dsb"`` when the CSV's header has the 2018 Data Science Bowl's column names
    (``ImageId``, ``EncodedPixels``: its RLE is column-major), else ``"sartorius"`` (row-major)."""
    _, first = next(csv_records(path), (1, []))
    header = {h.strip().lower() for h in first}
    return "dsb" if {"imageid", "encodedpixels"} <= header else "sartorius"


def order_for(paths: Sequence[str], order: str = "auto") -> str:
    """The RLE order to read ``paths`` with: ``order`` unless ``"auto"``, which takes the files'
    competition (``csv_kind``: DSB2018 -> ``"col"``, Sartorius -> ``"row"``). Files of both
    competitions under ``"auto"`` are a KaggleCsvError asking for ``--order``."""
    if order != "auto":
        return order
    kinds = {p: csv_kind(p) for p in paths}
    if len(set(kinds.values())) > 1:
        named = ", ".join(f"{p} ({'ImageId,EncodedPixels' if k == 'dsb' else 'id,...'})" for p, k in kinds.items())
        raise KaggleCsvError(f"the files mix DSB2018 and Sartorius headers, so their RLE order is unclear: "
                             f"give --order row or col, and --labels-order for a label file of the other kind ({named})")
    return "col" if "dsb" in kinds.values() else "row"


# ------------------------------------------------------------------------------ reading
def read_submission(path: str) -> List[SubmissionRow]:
    """Rows of a submission file, in file order.

    The header is Sartorius' ``id,predicted`` or the 2018 Data Science Bowl's
    ``ImageId,EncodedPixels`` (``csv_kind`` tells which; the RLE order is the caller's).
    Raises KaggleCsvError for another header, a row without exactly two fields, or an empty id.
    RLE strings are not parsed here (``validate_submission_rows`` does that).
    """
    records = csv_records(path)
    _, header = next(records, (1, None))
    if header is None:
        raise KaggleCsvError(f"{path}: empty file; expected the header 'id,predicted' (or 'ImageId,EncodedPixels')")
    if tuple(h.strip().lower() for h in header) not in (SUBMISSION_HEADER, tuple(h.lower() for h in DSB_SUBMISSION_HEADER)):
        raise KaggleCsvError(f"{path}: line 1: header is {','.join(header)!r}; expected 'id,predicted' "
                             "(Sartorius) or 'ImageId,EncodedPixels' (DSB2018)")
    rows = []
    for line, rec in records:
        if not rec:
            continue  # a blank line
        if len(rec) != 2:
            raise KaggleCsvError(f"{path}: line {line}: expected 2 fields (id,predicted), got {len(rec)}: {rec!r}")
        image_id = rec[0].strip()
        if not image_id:
            raise KaggleCsvError(f"{path}: line {line}: empty image id")
        rows.append(SubmissionRow(image_id, rec[1].strip(), line))
    return rows


def read_labels(path: str) -> "OrderedDict[str, ImageTruth]":
    """Ground truth of a label file, grouped per image in order of first appearance.

    Columns (any order, extra columns ignored; names through ``COLUMN_ALIASES``): ``id, annotation,
    width, height`` and optionally ``cell_type``. A row with an empty annotation declares an image
    without objects (``ImageTruth.empty_lines``). Raises KaggleCsvError naming the line for a
    missing column, an empty id, a bad width/height, sizes / cell types that differ between rows of
    one image, and an object listed twice.
    """
    records = csv_records(path)
    _, header = next(records, (1, None))
    if header is None:
        raise KaggleCsvError(f"{path}: empty file; expected a header with id,annotation,width,height")
    col = column_names(header)
    missing = [n for n in ("id", "annotation", "width", "height") if n not in col]
    if missing:
        raise KaggleCsvError(f"{path}: line 1: missing column(s) {', '.join(missing)} (header: {','.join(header)})")
    i_id, i_ann, i_ct = col["id"], col["annotation"], col.get("cell_type")
    images: "OrderedDict[str, ImageTruth]" = OrderedDict()
    seen: Dict[Tuple[str, str], int] = {}
    for line, rec in records:
        if not rec:
            continue
        if len(rec) < len(header):
            raise KaggleCsvError(f"{path}: line {line}: expected {len(header)} fields, got {len(rec)}")
        image_id = rec[i_id].strip()
        if not image_id:
            raise KaggleCsvError(f"{path}: line {line}: empty image id")
        h, w = _size(rec[col["height"]], rec[col["width"]], path, line)
        cell_type = (rec[i_ct].strip() if i_ct is not None else None) or None
        img = images.get(image_id)
        if img is None:
            img = images[image_id] = ImageTruth(image_id, h, w, cell_type, first_line=line)
        elif (img.height, img.width) != (h, w):
            raise KaggleCsvError(f"{path}: line {line}: image {image_id} is {h}x{w} here but "
                                 f"{img.height}x{img.width} on line {img.first_line}")
        elif cell_type and img.cell_type and cell_type != img.cell_type:
            raise KaggleCsvError(f"{path}: line {line}: image {image_id} has cell_type {cell_type!r} here but "
                                 f"{img.cell_type!r} on line {img.first_line}")
        ann = rec[i_ann].strip()
        if not ann:
            img.empty_lines.append(line)
            continue
        first = seen.setdefault((image_id, " ".join(ann.split())), line)
        if first != line:  # scored as two objects, it caps a perfect submission below 1
            raise KaggleCsvError(f"{path}: line {line}: image {image_id} lists the same object as on line {first}; "
                                 "a label file holds each object once")
        img.rles.append(ann)
        img.lines.append(line)
    return images


def _size(height: str, width: str, path: str, line: int) -> Tuple[int, int]:
    """``(height, width)`` of a label row: positive integers up to ``MAX_SIDE``."""
    try:
        h, w = int(height), int(width)
    except ValueError:
        raise KaggleCsvError(f"{path}: line {line}: width/height must be integers, got {width!r}/{height!r}") from None
    if w < 1 or h < 1:
        raise KaggleCsvError(f"{path}: line {line}: width/height must be positive, got {w}/{h}")
    if w > MAX_SIDE or h > MAX_SIDE:
        raise KaggleCsvError(f"{path}: line {line}: width/height {w}/{h} is too large (at most {MAX_SIDE} per side)")
    return h, w


def read_mask_csv(path: str) -> "OrderedDict[str, ImageTruth]":
    """The masks of a label file or a submission, per image (``viz`` draws either): a label file
    through ``read_labels``; a submission through ``read_submission``, its images with size 0 x 0
    (a submission declares none)."""
    _, first = next(csv_records(path), (1, None))
    if first is None:
        raise KaggleCsvError(f"{path}: empty file; expected a header with an id and an RLE column")
    if {"width", "height"} <= set(column_names(first)):
        return read_labels(path)
    images: "OrderedDict[str, ImageTruth]" = OrderedDict()
    for r in read_submission(path):
        img = images.setdefault(r.image_id, ImageTruth(r.image_id, 0, 0, first_line=r.line))
        if r.rle:
            img.rles.append(r.rle)
            img.lines.append(r.line)
        else:
            img.empty_lines.append(r.line)
    return images


def group_rows(rows: Iterable[SubmissionRow]) -> "OrderedDict[str, List[SubmissionRow]]":
    """Rows per image id, in order of first appearance."""
    out: "OrderedDict[str, List[SubmissionRow]]" = OrderedDict()
    for r in rows:
        out.setdefault(r.image_id, []).append(r)
    return out


def label_masks(img: ImageTruth, order: str = "row", source: Optional[str] = None) -> MaskList:
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
