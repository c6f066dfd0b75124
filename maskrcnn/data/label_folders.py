"""Your own data: images next to label images (``data.format: label_folders``).

A label image has the image's size and one channel of integers: 0 is background and each positive
value one object (8- or 16-bit PNG or TIFF; 32-bit integer TIFF; a float TIFF whose values are
whole numbers). Two layouts, told apart by the folder itself (``data.root``):

- StarDist's: ``root/images/<name>.<ext>`` and ``root/masks/<name>.<ext>`` (or ``labels/``), paired
  by the name without its suffix (``a.tif`` with ``a.png`` is fine);
- Cellpose's: one folder of ``<name>.<ext>`` images and ``<name>_masks.<ext>`` label images
  (Cellpose's own ``*_cp_masks.png`` outputs pair the same way; ``*_flows.tif`` and ``*_seg.npy``
  are ignored).

Every image needs its label image and every label image its image; all are listed and their
sizes read from the file headers when the reader is built (before training starts), and a missing pair, two files with one name, a size mismatch (naming both files) or a
label image that is not one channel of non-negative integers is an error. One class (``cell``,
or ``data.classes``). Images are yielded with 3 channels (a gray image repeated), as DSB2018's.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import torch

from maskrcnn.data.image_folders import IMAGE_SUFFIXES
from maskrcnn.errors import UserError
from maskrcnn.formats.image_files import convert_channels, read_image
from maskrcnn.formats.label_images import masks_from_label_array, read_label_array
from maskrcnn.structures import Instances, Sample

MASK_FOLDERS = ("masks", "labels")
MASK_SUFFIXES = ("_cp_masks", "_masks")  # Cellpose: <name>_masks.png; its own outputs <name>_cp_masks.png
IGNORED_SUFFIXES = ("_flows", "_seg")  # Cellpose's other outputs beside the images


class LabelFolderError(UserError, ValueError):
    """A problem with an images + label images folder; the message names the file(s)."""


def _stem(name: str) -> str:
    return os.path.splitext(name)[0]


def _by_stem(folder: str, files: Sequence[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for f in sorted(files):
        s = _stem(f)
        if s in out:
            raise LabelFolderError(f"{folder}: two files named {s!r}: {os.path.basename(out[s])} and {f}; keep one")
        out[s] = os.path.join(folder, f)
    return out


def _images_in(folder: str) -> List[str]:
    return [f for f in os.listdir(folder)
            if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(folder, f))]


def find_pairs(root: str) -> List[Tuple[str, str, str]]:
    """``(name, image path, label image path)`` of every pair under ``root``, sorted by name (see the
    module doc for the layouts). Raises LabelFolderError naming the first unpaired files."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data.root: folder not found: {root}")
    mask_dir = next((os.path.join(root, d) for d in MASK_FOLDERS if os.path.isdir(os.path.join(root, d))), None)
    if os.path.isdir(os.path.join(root, "images")):
        if mask_dir is None:
            raise LabelFolderError(f"{root}: has images/ but no masks/ (or labels/) folder of label images")
        image_dir = os.path.join(root, "images")
        images = _by_stem(image_dir, _images_in(image_dir))
        labels = _by_stem(mask_dir, _images_in(mask_dir))
        where = f"{os.path.basename(mask_dir)}/<name>.png or .tif"
    else:
        files = [f for f in _images_in(root) if not _stem(f).endswith(IGNORED_SUFFIXES)]
        mask_files = {f: next(s for s in MASK_SUFFIXES if _stem(f).endswith(s)) for f in files
                      if _stem(f).endswith(MASK_SUFFIXES)}
        images = _by_stem(root, [f for f in files if f not in mask_files])
        labels = {}
        for f in sorted(mask_files):
            name = _stem(f)[: -len(mask_files[f])]
            if name in labels:
                raise LabelFolderError(f"{root}: two label images for {name!r}: {os.path.basename(labels[name])} and "
                                       f"{f}; keep one")
            labels[name] = os.path.join(root, f)
        where = "<name>_masks.png or .tif beside it"
    if not images and not labels:
        raise LabelFolderError(f"{root}: no images: expected images/ + masks/ folders (StarDist) or <name>.png with "
                               f"<name>_masks.png beside it (Cellpose)")
    lone_images = sorted(set(images) - set(labels))
    lone_labels = sorted(set(labels) - set(images))
    if lone_images:
        raise LabelFolderError(f"{len(lone_images)} image(s) without a label image, e.g. {images[lone_images[0]]} "
                               f"(expected {where})")
    if lone_labels:
        raise LabelFolderError(f"{len(lone_labels)} label image(s) without an image, e.g. {labels[lone_labels[0]]}")
    return [(s, images[s], labels[s]) for s in sorted(images)]


class LabelFolderDataset:
    """Images and label images (see the module doc).

    Args:
        root: the folder (``images/`` + ``masks/``, or Cellpose's ``*_masks`` beside the images).
        class_agnostic, classes: one class either way (``cell``, or the one name in ``classes``).
        channels: 3 (default: gray images repeated) or 1 (colour images converted to gray).
    """

    def __init__(self, root: str, class_agnostic: bool = False, classes: Sequence[str] = (), channels: int = 3):
        self.root = root
        self.channels = int(channels)
        self.class_names = tuple(classes) if classes and not class_agnostic else ("cell",)
        if len(self.class_names) != 1:
            raise LabelFolderError(f"label images hold one class of objects; got data.classes {list(classes)}")
        self.pairs = find_pairs(root)
        self.image_ids: List[str] = [name for name, _, _ in self.pairs]
        self._strata = self._check_sizes()

    def _check_sizes(self) -> List[str]:
        """Every pair's sizes from the file headers (no pixel decoding), before any training starts;
        returns the split strata ``WxH/mode`` of the images."""
        from PIL import Image

        strata = []
        for _, path, label_path in self.pairs:  # two header reads per pair
            try:
                with Image.open(path) as im, Image.open(label_path) as lab:
                    size, lsize, mode = im.size, lab.size, im.mode
            except OSError as e:
                raise LabelFolderError(f"cannot read the header of {path} or {label_path} ({e})") from None
            if size != lsize:
                raise LabelFolderError(f"{label_path} is {lsize[0]}x{lsize[1]} (WxH) but its image {path} is "
                                       f"{size[0]}x{size[1]}")
            strata.append(f"{size[0]}x{size[1]}/{mode}")
        return strata

    def __len__(self) -> int:
        return len(self.pairs)

    def strata(self) -> list:
        """Split strata: ``WxH/mode`` of each image (from the file headers)."""
        return list(self._strata)

    def load(self, index: int) -> Sample:
        name, path, label_path = self.pairs[index]
        image = convert_channels(read_image(path), self.channels, path)
        H, W = int(image.shape[1]), int(image.shape[2])
        a = read_label_array(label_path, LabelFolderError)
        if a.shape != (H, W):
            raise LabelFolderError(f"{label_path} is {a.shape[1]}x{a.shape[0]} (WxH) but its image {path} is {W}x{H}")
        masks = masks_from_label_array(a, label_path, LabelFolderError)
        inst = Instances((H, W), masks.tight_boxes(), torch.zeros(len(masks), dtype=torch.long), None, masks)
        return Sample(image, inst, name, {"path": path, "label_path": label_path, "class_names": self.class_names})


__all__ = ["LabelFolderDataset", "LabelFolderError", "find_pairs"]
