"""2018 Data Science Bowl folders: ``<id>/images/<id>.png`` + ``<id>/masks/*.png`` (one per nucleus).

Images are RGBA PNGs (the first three channels are used; many are grayscale stored as RGB): the
reader yields 3-channel images for all of them, so batches mix freely. One class, ``nucleus``.

The folder layout and the mask PNGs are read by ``maskrcnn.formats.dsb_layout``.

Each sample's ``meta["cell_type"]`` is its imaging domain (``imaging_domain``): ``fluorescence``,
``brightfield`` or ``histology``. The data has one class (``nucleus``); the domain is what the
scores differ by (a model trained on the mostly-fluorescence set scores several times lower on
the stained images), and the trainer's validation, ``evaluate.py ablate`` and ``evaluate.py
score`` report one column per ``cell_type``.
"""
from __future__ import annotations

import os
import warnings
from typing import List, Sequence

import torch

from maskrcnn.formats import dsb_layout
from maskrcnn.formats.dsb_layout import read_mask_crops
from maskrcnn.formats.image_files import convert_channels, is_gray, read_image
from maskrcnn.structures import Instances, MaskList, Sample

DSB_CLASSES = ("nucleus",)
DSB_DOMAINS = ("fluorescence", "brightfield", "histology")


def imaging_domain(image: torch.Tensor) -> str:
    """The imaging domain of a DSB2018 image ``Tensor[C, H, W]`` in [0, 1].

    ``histology`` when the channels differ (stained tissue, H&E-like; 107 of the 664 stage1_train
    images, all 256x320), else ``fluorescence`` for a dark background (mean < 0.5; 541 images) and
    ``brightfield`` for a bright one (16 images, 1024x1024, dark nuclei on a light background).
    """
    if not is_gray(image):
        return "histology"
    return "fluorescence" if float(image.mean()) < 0.5 else "brightfield"


class DSB2018Dataset:
    """DSB2018 ``stage1_train``-style folders.

    Args:
        root: the folder holding ``<id>/`` folders (or its parent holding ``stage1_train/``).
        labeled: read ``masks/`` (a missing ``masks/`` is then an error); False for test folders.
        class_agnostic, classes: one class either way (``nucleus``, or ``cell`` when agnostic).
        channels: 3 (default: RGB for all images) or 1 (grayscale; colour images are converted).
    """

    def __init__(self, root: str, labeled: bool = True, class_agnostic: bool = False, classes: Sequence[str] = (),
                 channels: int = 3):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"DSB2018 folder not found: {root}")
        if os.path.isdir(os.path.join(root, "stage1_train")) and not os.path.isdir(os.path.join(root, "images")):
            root = os.path.join(root, "stage1_train")
        self.root = root
        self.labeled = bool(labeled)
        self.channels = int(channels)
        if class_agnostic:
            self.class_names = ("cell",)
        else:
            self.class_names = tuple(classes) if classes else DSB_CLASSES
            if len(self.class_names) != 1:
                raise ValueError(f"DSB2018 has one class; got classes {self.class_names}")
        ids = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if not ids:
            raise FileNotFoundError(f"{root}: no <id>/ folders (expected <id>/images/<id>.png)")
        for i in ids:
            p = self.image_path(i)
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{os.path.join(root, i)}: image file {p} not found")
            if self.labeled and not os.path.isdir(dsb_layout.mask_folder(root, i)):
                raise FileNotFoundError(f"{os.path.join(root, i)}: no masks/ folder (pass labeled=False for test images)")
        self.image_ids: List[str] = ids
        self._strata = None
        if self.labeled:
            bare = [i for i in ids if not self.mask_paths(i)]
            if bare:  # an empty masks/ reads as "no nuclei": say so, it is more often a copy gone wrong
                warnings.warn(f"{root}: {len(bare)} image(s) have no mask PNG in masks/ and count as images without "
                              f"nuclei (e.g. {', '.join(bare[:3])})", stacklevel=2)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, image_id: str) -> str:
        return dsb_layout.image_path(self.root, image_id)

    def mask_paths(self, image_id: str) -> List[str]:
        return dsb_layout.mask_paths(self.root, image_id)

    def strata(self) -> list:
        """Split strata: ``HxW/gray|rgb/dark|mid|bright`` (size, modality, mean intensity bucket).

        Reads every image once (a few seconds for the 664 of stage1_train); cached on the reader.
        """
        if self._strata is None:
            out = []
            for i in self.image_ids:  # one read per image
                img = read_image(self.image_path(i))
                mean = float(img.mean())
                bucket = "dark" if mean < 0.2 else ("mid" if mean < 0.5 else "bright")
                out.append(f"{img.shape[1]}x{img.shape[2]}/{'gray' if is_gray(img) else 'rgb'}/{bucket}")
            self._strata = out
        return list(self._strata)

    def load(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        path = self.image_path(image_id)
        raw = read_image(path)
        domain = imaging_domain(raw)  # before any conversion to gray
        image = convert_channels(raw, self.channels, path)
        H, W = int(image.shape[1]), int(image.shape[2])
        if self.labeled:
            masks = read_mask_crops(self.mask_paths(image_id), (H, W))
        else:
            masks = MaskList.empty((H, W))
        labels = torch.zeros(len(masks), dtype=torch.long)
        inst = Instances((H, W), masks.tight_boxes(), labels, None, masks)
        meta = {"path": path, "class_names": self.class_names, "cell_type": domain}
        return Sample(image, inst, image_id, meta)


__all__ = ["DSB2018Dataset", "imaging_domain", "DSB_CLASSES", "DSB_DOMAINS"]
