"""Sartorius Cell Instance Segmentation: ``train.csv`` + ``train/<id>.png``, and unlabeled images.

``train.csv`` has one row per object (``id, annotation, width, height, cell_type, ...``); the
annotation is a row-major RLE (docs/conventions.md). Each image holds one cell type; classes
are ``shsy5y, astro, cort`` (or one class ``cell`` with ``class_agnostic``). ``train_semi_supervised/``
holds unlabeled images whose cell type is the file name's prefix before ``[``.

The csv is read and checked once by ``maskrcnn.formats.kaggle_csv.read_labels`` (columns, integers,
one size and cell type per image), then here: classes, image files present; RLEs are decoded lazily
per image, straight into crops (``rle.decode_crops``). Errors name the file and the csv line (the
header being line 1).
"""
from __future__ import annotations

import os
import warnings
from typing import List, Optional, Sequence

import torch

from maskrcnn.formats.image_files import read_image
from maskrcnn.formats.kaggle_csv import KaggleCsvError, read_labels
from maskrcnn.formats.rle import decode_crops
from maskrcnn.structures import Instances, Sample

SARTORIUS_CLASSES = ("shsy5y", "astro", "cort")


def class_list(class_agnostic: bool, classes: Sequence[str], default: Sequence[str]) -> tuple:
    if class_agnostic:
        return ("cell",)
    return tuple(classes) if classes else tuple(default)


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
        self._images = read_labels(self.ann_file)
        self.image_ids: List[str] = list(self._images)
        for image_id, rec in self._images.items():
            if not self.class_agnostic and rec.cell_type not in self.class_names:
                raise KaggleCsvError(
                    f"{self.ann_file}: line {rec.first_line}: cell_type {rec.cell_type!r} is not one of "
                    f"the classes {self.class_names}")
            if rec.empty_lines:
                raise KaggleCsvError(f"{self.ann_file}: line {rec.empty_lines[0]}: empty annotation for image {image_id}")
            path = self.image_path(image_id)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{self.ann_file}: line {rec.first_line}: image {image_id!r} has no file {path}")
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
        return [self._images[i].cell_type for i in self.image_ids]

    def load(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        rec = self._images[image_id]
        path = self.image_path(image_id)
        image = read_image(path, channels=1)
        H, W = int(image.shape[1]), int(image.shape[2])
        if (H, W) != (rec.height, rec.width):
            raise KaggleCsvError(
                f"{path} is {W} wide and {H} high but {self.ann_file} line {rec.first_line} says "
                f"width {rec.width}, height {rec.height}")
        masks = decode_crops(rec.rles, H, W, self.order, source=self.ann_file, rows=rec.lines)
        areas = masks.crops.flatten(1).sum(1)
        if bool((areas == 0).any()):
            k = int((areas == 0).nonzero()[0, 0])
            raise KaggleCsvError(f"{self.ann_file}: line {rec.lines[k]}: empty annotation for image {image_id}")
        label = 0 if self.class_agnostic else self.class_names.index(rec.cell_type)
        labels = torch.full((len(masks),), label, dtype=torch.long)
        inst = Instances((H, W), masks.tight_boxes(), labels, None, masks)
        meta = {"cell_type": rec.cell_type, "path": path, "class_names": self.class_names}
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


__all__ = ["SartoriusDataset", "SartoriusUnlabeled", "SARTORIUS_CLASSES"]
