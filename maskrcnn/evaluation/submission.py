"""Submission and label CSV files: read, validate as Kaggle would, decode into crops, write.

- Submission (``submission.csv``): header ``id,predicted``; one row per predicted object; an image
  with no prediction has one row with an empty ``predicted``.
- Labels (Sartorius ``train.csv``): ``id,annotation,width,height[,cell_type,...]``, one row per
  object (objects may overlap). The 2018 Data Science Bowl's header ``ImageId,EncodedPixels,
  Height,Width`` is read too (its RLE is column-major: pass ``order="col"``).
- RLE: ``start length`` pairs, 1-indexed starts, row-major by default (../shared/CONVENTIONS.md).

Kaggle rejects a submission whose pairs are malformed, not positive, not sorted, run past the
image, or whose masks overlap within an image (a pixel covered twice).
``validate_submission_rows`` lists each such problem naming the CSV line and the image id.

Masks are decoded from runs straight into crops (``MaskList``): never one full-image mask per
object.
"""
from __future__ import annotations

import csv
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from maskrcnn.data.rle import ORDERS, RLEError, encode_crops, parse_rle
from maskrcnn.fileio import atomic_open
from maskrcnn.structures import MaskList

SUBMISSION_HEADER = ("id", "predicted")
# Our names for the label columns, and the DSB2018 solution file's names for the same.
_LABEL_ALIASES = {"imageid": "id", "encodedpixels": "annotation"}
_UNBOUNDED = 1 << 62  # image size when bounds are unknown: only pair syntax and order are checked


class SubmissionError(ValueError):
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


def _open_csv(path: str):
    if not os.path.isfile(path):
        raise SubmissionError(f"{path}: file not found")
    f = open(path, newline="", encoding="utf-8-sig")  # utf-8-sig drops a BOM some editors write
    return f, csv.reader(f)


# ------------------------------------------------------------------------------ reading
def read_submission(path: str) -> List[SubmissionRow]:
    """Rows of a submission file, in file order.

    Raises SubmissionError for a wrong header, a row without exactly two fields, or an empty id.
    RLE strings are not parsed here (``validate_submission_rows`` does that).
    """
    f, reader = _open_csv(path)
    with f:
        header = next(reader, None)
        if header is None:
            raise SubmissionError(f"{path}: empty file; expected the header 'id,predicted'")
        if tuple(h.strip().lower() for h in header) != SUBMISSION_HEADER:
            raise SubmissionError(f"{path}: line 1: header is {','.join(header)!r}; expected 'id,predicted'")
        rows = []
        for line, rec in enumerate(reader, start=2):
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
    f, reader = _open_csv(path)
    images: "OrderedDict[str, LabelImage]" = OrderedDict()
    with f:
        header = next(reader, None)
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
        for line, rec in enumerate(reader, start=2):
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
def parse_rle_batch(rles: Sequence[str], height: int, width: int, strict: bool = True):
    """Parse many RLE strings of one image at once.

    Returns ``(runs int64[K, 2], owner int64[K], bad)``: 0-indexed ``(start, length)`` runs, the
    index of the string each run comes from, and the indices of strings that fail the checks of
    ``parse_rle`` (non-integers, odd counts, start < 1, length < 1, past the image, and with
    ``strict`` unsorted or overlapping runs). Callers run ``parse_rle`` on those for the message.
    """
    tokens = [str(r).split() for r in rles]  # per-string split; the rest is vectorised
    counts = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    flat = [t for ts in tokens for t in ts]
    try:
        nums = np.array(flat, dtype=np.int64) if flat else np.zeros(0, np.int64)
    except (ValueError, OverflowError):  # some token is not an integer: find its strings one by one
        bad = []
        for k, ts in enumerate(tokens):  # error path only
            try:
                np.array(ts, dtype=np.int64)
            except (ValueError, OverflowError):
                bad.append(k)
        cleared = ["" if k in set(bad) else r for k, r in enumerate(rles)]
        runs, owner, more_bad = parse_rle_batch(cleared, height, width, strict)
        return runs, owner, sorted(set(bad) | set(more_bad))
    odd = counts % 2 == 1
    pairs_per = np.where(odd, 0, counts // 2)
    keep_tok = np.repeat(~odd, counts)
    runs = nums[keep_tok].reshape(-1, 2)
    owner = np.repeat(np.arange(len(tokens)), pairs_per)
    starts, lengths = runs[:, 0], runs[:, 1]
    ends = starts - 1 + lengths
    bad_run = (starts < 1) | (lengths < 1) | (ends > int(height) * int(width))
    if strict and runs.shape[0] > 1:
        same = owner[1:] == owner[:-1]
        bad_run[1:] |= same & (starts[1:] - 1 < ends[:-1])
    bad_str = odd.copy()
    bad_str[owner[bad_run]] = True
    ok_run = ~bad_str[owner]
    out = np.stack([starts[ok_run] - 1, lengths[ok_run]], axis=1) if runs.size else np.zeros((0, 2), np.int64)
    return out, owner[ok_run], np.flatnonzero(bad_str).tolist()


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
        where = f"{source}line {rows[k].line} (image {rows[k].image_id})"
        try:
            parse_rle(rows[k].rle, height, width, strict=True)
            errors.append(f"{where}: malformed RLE")
        except RLEError as e:
            errors.append(f"{where}: {e}")
        except OverflowError:
            errors.append(f"{where}: RLE holds a number too large for a pixel index")
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
def runs_to_masklist(runs: np.ndarray, owner: np.ndarray, n: int, height: int, width: int, order: str = "row") -> MaskList:
    """Bool ``MaskList`` of ``n`` objects from their runs.

    Args:
        runs (int64[K, 2]): 0-indexed ``(start, length)``; owner (int64[K]): the object of each run
            (objects without runs get empty masks).
    Runs are cut at line ends (rows for ``order="row"``, columns for ``"col"``) and painted into
    per-object crops through a difference array, all objects at once. Cost ~ n x crop size.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    H, W = int(height), int(width)
    if n == 0:
        return MaskList.empty((H, W))
    allr = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    inst = np.asarray(owner, dtype=np.int64)
    line_len = W if order == "row" else H
    start, end = allr[:, 0], allr[:, 0] + allr[:, 1]  # end exclusive
    first, last = start // line_len, (end - 1) // line_len
    nseg = last - first + 1
    seg_run = np.repeat(np.arange(start.size), nseg)
    seg_line = first[seg_run] + (np.arange(seg_run.size) - np.repeat(np.cumsum(nseg) - nseg, nseg))
    s0 = np.where(seg_line == first[seg_run], start[seg_run] % line_len, 0)
    s1 = np.where(seg_line == last[seg_run], (end[seg_run] - 1) % line_len + 1, line_len)
    seg_inst = inst[seg_run]
    # Segment = line `seg_line`, pixels [s0, s1) along it.
    if order == "row":
        y, ylo, yhi = seg_line, seg_line, seg_line + 1
        xlo, xhi = s0, s1
    else:
        xlo, xhi = seg_line, seg_line + 1
        ylo, yhi = s0, s1
    big = max(H, W) + 1
    bx0 = np.full(n, big); by0 = np.full(n, big)
    bx1 = np.zeros(n, np.int64); by1 = np.zeros(n, np.int64)
    np.minimum.at(bx0, seg_inst, xlo); np.minimum.at(by0, seg_inst, ylo)
    np.maximum.at(bx1, seg_inst, xhi); np.maximum.at(by1, seg_inst, yhi)
    empty = bx1 == 0
    bx0[empty] = 0; by0[empty] = 0
    h = max(1, int((by1 - by0).max()))
    w = max(1, int((bx1 - bx0).max()))
    ox, oy = bx0[seg_inst], by0[seg_inst]
    if order == "row":
        diff = np.zeros((n, h, w + 1), dtype=np.int32)
        np.add.at(diff, (seg_inst, y - oy, xlo - ox), 1)
        np.add.at(diff, (seg_inst, y - oy, xhi - ox), -1)
        crops = np.cumsum(diff, axis=2)[:, :, :w] > 0
    else:
        diff = np.zeros((n, h + 1, w), dtype=np.int32)
        np.add.at(diff, (seg_inst, ylo - oy, xlo - ox), 1)
        np.add.at(diff, (seg_inst, yhi - oy, xlo - ox), -1)
        crops = np.cumsum(diff, axis=1)[:, :h, :] > 0
    origins = torch.from_numpy(np.stack([bx0, by0], axis=1).astype(np.int64))
    return MaskList(torch.from_numpy(crops), origins, (H, W))


def _decode_strict(rles: Sequence[str], height: int, width: int, order: str, strict: bool,
                   source: Optional[str], lines: Optional[Sequence[int]]) -> MaskList:
    runs, owner, bad = parse_rle_batch(rles, height, width, strict)
    for k in bad:  # raises with the line and what is wrong
        row = None if lines is None else lines[k]
        try:
            parse_rle(rles[k], height, width, source=source, row=row, strict=strict)
        except OverflowError:
            raise RLEError(f"{source or ''}: row {row}: RLE holds a number too large for a pixel index") from None
    return runs_to_masklist(runs, owner, len(rles), height, width, order)


def decode_to_masklist(rles: Sequence[str], height: int, width: int, order: str = "row",
                       source: Optional[str] = None, lines: Optional[Sequence[int]] = None) -> MaskList:
    """Bool ``MaskList`` of one image from RLE strings (empty strings give empty masks).

    Raises RLEError naming ``source`` and the line for a malformed string.
    """
    return _decode_strict(list(rles), height, width, order, True, source, lines)


def label_masks(img: LabelImage, order: str = "row", source: Optional[str] = None) -> MaskList:
    """Ground-truth masks of one image of a label file. Unsorted runs are allowed in labels."""
    return _decode_strict(img.rles, img.height, img.width, order, False, source, img.lines)


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


def write_submission(rows: Iterable, path: str) -> None:
    """Write ``id,predicted`` rows atomically (temp file + os.replace).

    ``rows``: ``SubmissionRow``s or ``(image_id, rle)`` pairs, e.g. from ``masks_to_rows``.
    """
    def as_pair(r):
        return (r.image_id, r.rle) if isinstance(r, SubmissionRow) else (str(r[0]), r[1] or "")

    _atomic_write_rows(path, SUBMISSION_HEADER, (as_pair(r) for r in rows))


def write_labels(path: str, items: Iterable[Tuple[str, MaskList, Optional[str]]], order: str = "row") -> None:
    """Write ground truth as a Sartorius-style label file (atomically).

    ``items``: ``(image_id, masks, cell_type)`` per image; ``cell_type`` may be None (then the
    column is written empty). An image without objects gets one row with an empty annotation.
    """
    def gen():
        for image_id, masks, cell_type in items:
            H, W = masks.image_size
            for _, rle in masks_to_rows(image_id, masks, order):
                yield (image_id, rle, W, H, cell_type or "")

    _atomic_write_rows(path, ("id", "annotation", "width", "height", "cell_type"), gen())
