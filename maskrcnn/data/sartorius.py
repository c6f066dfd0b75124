"""Sartorius Cell Instance Segmentation: ``train.csv`` + ``train/<id>.png``, and unlabeled images.

``train.csv`` has one row per object (``id, annotation, width, height, cell_type, ...``); the
annotation is a row-major RLE (docs/conventions.md). Each image holds one cell type; classes
are ``shsy5y, astro, cort`` (or one class ``cell`` with ``class_agnostic``). ``train_semi_supervised/``
holds unlabeled images whose cell type is the file name's prefix before ``[``.

The csv is read and checked once (columns, integers, one size and cell type per image, image files
present); RLEs are decoded lazily per image, straight into crops (``rle.decode_crops``). Errors name
the file and the csv line (``row N`` = line N of the file, the header being line 1).
"""
from __future__ import annotations

import csv
import os
import warnings
from typing import Dict, List, Optional, Sequence

import torch

from maskrcnn.formats.image_files import read_image
from maskrcnn.formats.rle import decode_crops
from maskrcnn.errors import UserError
from maskrcnn.structures import Instances, Sample

SARTORIUS_CLASSES = ("shsy5y", "astro", "cort")
REQUIRED_COLUMNS = ("id", "annotation", "width", "height", "cell_type")


class SartoriusFormatError(UserError, ValueError):
    """A problem in a Sartorius-style csv or its images; the message names the file and row."""


def class_list(class_agnostic: bool, classes: Sequence[str], default: Sequence[str]) -> tuple:
    if class_agnostic:
        return ("cell",)
    return tuple(classes) if classes else tuple(default)


def read_label_csv(path: str) -> Dict[str, dict]:
    """Rows of a Sartorius-style labels csv grouped by image id, in file order.

    Returns:
        ``{image_id: {"rles": [str], "lines": [int], "width": int, "height": int, "cell_type": str}}``
        (``width``/``height``/``cell_type`` are None when the csv lacks those columns).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"labels csv not found: {path}")
    images: Dict[str, dict] = {}
    with open(path, newline="") as f:
        reader = _records(f, path)
        try:
            header = next(reader)
        except StopIteration:
            raise SartoriusFormatError(f"{path}: the file is empty (expected a header with {', '.join(REQUIRED_COLUMNS)})") from None
        col = {name.strip(): k for k, name in enumerate(header)}
        for need in ("id", "annotation"):
            if need not in col and not (need == "annotation" and "predicted" in col):
                raise SartoriusFormatError(f"{path}: missing column {need!r}; the header is {header}")
        c_id = col["id"]
        c_ann = col.get("annotation", col.get("predicted"))
        c_w, c_h, c_t = col.get("width"), col.get("height"), col.get("cell_type")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise SartoriusFormatError(f"{path}: row {line} has {len(row)} fields, the header has {len(header)}")
            image_id = row[c_id].strip()
            if not image_id:
                raise SartoriusFormatError(f"{path}: row {line} has an empty id")
            w = _int(row[c_w], path, line, "width") if c_w is not None else None
            h = _int(row[c_h], path, line, "height") if c_h is not None else None
            t = row[c_t].strip() if c_t is not None else None
            rec = images.get(image_id)
            if rec is None:
                rec = images[image_id] = {"rles": [], "lines": [], "width": w, "height": h, "cell_type": t,
                                          "first_line": line}
            else:
                for key, val in (("width", w), ("height", h), ("cell_type", t)):
                    if rec[key] != val:
                        raise SartoriusFormatError(
                            f"{path}: row {line}: {key} {val!r} of image {image_id} disagrees with "
                            f"{rec[key]!r} on row {rec['first_line']}")
            rec["rles"].append(row[c_ann])
            rec["lines"].append(line)
    return images


def _records(f, path: str):
    """``csv.reader(f)``, with a binary file or a malformed record as SartoriusFormatError naming the line."""
    reader = csv.reader(f)
    try:
        yield from reader
    except UnicodeDecodeError:
        raise SartoriusFormatError(f"{path}: not a UTF-8 text (CSV) file (undecodable bytes near row {reader.line_num + 1})") from None
    except csv.Error as e:
        raise SartoriusFormatError(f"{path}: row {reader.line_num}: not a valid CSV record ({e})") from None


def _int(text: str, path: str, line: int, name: str) -> int:
    try:
        v = int(str(text).strip())
    except ValueError:
        raise SartoriusFormatError(f"{path}: row {line}: {name} {text!r} is not an integer") from None
    if v <= 0:
        raise SartoriusFormatError(f"{path}: row {line}: {name} must be positive, got {v}")
    return v


class SartoriusDataset:
    """Labeled Sartorius images.

    Args:
        root: folder with ``train.csv`` and ``train/``.
        ann_file: the labels csv (default ``<root>/train.csv``).
        image_dir: folder of ``<id>.png`` (default ``<root>/train``).
        class_agnostic: one class ``cell``.
        classes: class order (default ``shsy5y, astro, cort``).
        order: RLE pixel order, ``row`` (Sartorius) or ``col``.
    """

    def __init__(self, root: str, ann_file: str = "", image_dir: str = "", class_agnostic: bool = False,
                 classes: Sequence[str] = (), order: str = "row"):
        self.root = root
        self.ann_file = ann_file or os.path.join(root, "train.csv")
        self.image_dir = image_dir or os.path.join(root, "train")
        self.order = order
        self.class_agnostic = bool(class_agnostic)
        self.class_names = class_list(class_agnostic, classes, SARTORIUS_CLASSES)
        self._images = read_label_csv(self.ann_file)
        self.image_ids: List[str] = list(self._images)
        for image_id, rec in self._images.items():
            if rec["width"] is None or rec["height"] is None:
                raise SartoriusFormatError(f"{self.ann_file}: needs width and height columns")
            if not self.class_agnostic and rec["cell_type"] not in self.class_names:
                raise SartoriusFormatError(
                    f"{self.ann_file}: row {rec['first_line']}: cell_type {rec['cell_type']!r} is not one of "
                    f"the classes {self.class_names}")
            path = self.image_path(image_id)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{self.ann_file}: row {rec['first_line']}: image {image_id!r} has no file {path}")
        if os.path.isdir(self.image_dir):
            extra = sorted(f for f in os.listdir(self.image_dir)
                           if f.endswith(".png") and f[:-4] not in self._images)
            if extra:
                warnings.warn(f"{self.image_dir}: {len(extra)} images have no rows in {self.ann_file} and are not "
                              f"used (e.g. {extra[:3]}); read them with SartoriusUnlabeled if wanted", stacklevel=2)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, image_id: str) -> str:
        return os.path.join(self.image_dir, f"{image_id}.png")

    def strata(self) -> list:
        """Split strata: the cell type of each image."""
        return [self._images[i]["cell_type"] for i in self.image_ids]

    def load(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        rec = self._images[image_id]
        path = self.image_path(image_id)
        image = read_image(path, channels=1)
        H, W = int(image.shape[1]), int(image.shape[2])
        if (H, W) != (rec["height"], rec["width"]):
            raise SartoriusFormatError(
                f"{path} is {W} wide and {H} high but {self.ann_file} row {rec['first_line']} says "
                f"width {rec['width']}, height {rec['height']}")
        masks = decode_crops(rec["rles"], H, W, self.order, source=self.ann_file, rows=rec["lines"])
        areas = masks.crops.flatten(1).sum(1)
        if bool((areas == 0).any()):
            k = int((areas == 0).nonzero()[0, 0])
            raise SartoriusFormatError(f"{self.ann_file}: row {rec['lines'][k]}: empty annotation for image {image_id}")
        label = 0 if self.class_agnostic else self.class_names.index(rec["cell_type"])
        labels = torch.full((len(masks),), label, dtype=torch.long)
        inst = Instances((H, W), masks.tight_boxes(), labels, None, masks)
        meta = {"cell_type": rec["cell_type"], "path": path, "class_names": self.class_names}
        return Sample(image, inst, image_id, meta)


class SartoriusUnlabeled:
    """Unlabeled images of a folder (default ``<root>/train_semi_supervised``), as samples without objects.

    The cell type is the file name's prefix before ``[`` (e.g. ``shsy5y[diff]_01_...png``);
    ``None`` when the name has no ``[`` (e.g. the test folder).
    """

    def __init__(self, root: str, folder: str = "train_semi_supervised", class_agnostic: bool = False,
                 classes: Sequence[str] = ()):
        self.image_dir = os.path.join(root, folder) if folder else root
        if not os.path.isdir(self.image_dir):
            raise FileNotFoundError(f"unlabeled image folder not found: {self.image_dir}")
        self.class_names = class_list(class_agnostic, classes, SARTORIUS_CLASSES)
        files = sorted(f for f in os.listdir(self.image_dir) if f.lower().endswith((".png", ".tif", ".tiff")))
        if not files:
            raise FileNotFoundError(f"{self.image_dir}: no .png/.tif images")
        self._files = files
        self.image_ids = [os.path.splitext(f)[0] for f in files]

    def __len__(self) -> int:
        return len(self._files)

    @staticmethod
    def cell_type_of(name: str) -> Optional[str]:
        return name.split("[", 1)[0] if "[" in name else None

    def strata(self) -> list:
        return [str(self.cell_type_of(f)) for f in self._files]

    def load(self, index: int) -> Sample:
        path = os.path.join(self.image_dir, self._files[index])
        image = read_image(path, channels=1)
        H, W = int(image.shape[1]), int(image.shape[2])
        meta = {"cell_type": self.cell_type_of(self._files[index]), "path": path, "class_names": self.class_names,
                "unlabeled": True}
        return Sample(image, Instances.empty((H, W), with_masks=True), self.image_ids[index], meta)


__all__ = ["SartoriusDataset", "SartoriusUnlabeled", "SartoriusFormatError", "read_label_csv", "SARTORIUS_CLASSES"]
