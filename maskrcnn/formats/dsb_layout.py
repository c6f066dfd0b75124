"""The 2018 Data Science Bowl's folder layout: ``<id>/images/<id>.png`` + ``<id>/masks/*.png``, one
binary PNG per nucleus (``stage1_train``; test folders have no ``masks/``).

Paths (``image_path``, ``mask_folder``, ``mask_paths``, ``image_files``) and the masks
(``read_mask_crops``): each mask PNG is decoded and immediately cropped to its nonzero box
(``Image.getbbox`` runs in C), so an image with 375 nuclei never holds 375 full-size masks. The
dataset is ``maskrcnn.data.dsb2018.DSB2018Dataset``; the competition's CSV files are
``maskrcnn.formats.kaggle_csv``'s.
"""
from __future__ import annotations

import os
import warnings
from typing import List, Sequence

import numpy as np
import torch

from maskrcnn.errors import UserError
from maskrcnn.formats.image_files import open_image
from maskrcnn.structures import MaskList


def image_path(root: str, image_id: str) -> str:
    return os.path.join(root, image_id, "images", f"{image_id}.png")


def mask_folder(root: str, image_id: str) -> str:
    return os.path.join(root, image_id, "masks")


def mask_paths(root: str, image_id: str) -> List[str]:
    """The mask PNGs of one image, sorted by name."""
    d = mask_folder(root, image_id)
    return [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.lower().endswith(".png")]


def image_files(folder: str) -> List[str]:
    """``<id>/images/<id>.png`` of every ``<id>/`` folder in ``folder`` that has one, sorted by id."""
    out = []
    for d in sorted(os.listdir(folder)):
        p = image_path(folder, d)
        if os.path.isfile(p) or os.path.islink(p):  # a dangling link too: named when read
            out.append(p)
    return out


class DSB2018FormatError(UserError, ValueError):
    """A problem with a DSB2018 folder; the message names the file."""


def _any_channel(im):
    """A one-channel image that is nonzero where any colour channel of ``im`` is (alpha ignored).

    Converting an RGB mask to luminance would lose a dim pure-blue object ((0, 0, 1) -> 0).
    """
    from PIL import Image

    rgb = im if im.mode in ("RGB", "RGBA", "LA") else im.convert("RGBA" if "A" in im.mode else "RGB")
    a = np.asarray(rgb)
    colour = a[..., :1] if rgb.mode == "LA" else a[..., :3]
    return Image.fromarray((colour.max(axis=2) > 0).astype(np.uint8) * 255, "L")


def read_mask_crops(paths: Sequence[str], image_size, pad: int = 1) -> MaskList:
    """Read binary mask PNGs (nonzero = object; in a colour PNG, any nonzero colour channel) of one
    image into a bool ``MaskList``.

    Raises:
        DSB2018FormatError: a mask whose size differs from ``image_size = (H, W)``.
        maskrcnn.formats.image_files.ImageReadError / FileNotFoundError: an unreadable or missing mask file.

    Empty mask files are skipped with a warning naming them.
    """
    H, W = int(image_size[0]), int(image_size[1])
    crops: List[np.ndarray] = []
    boxes: List[tuple] = []
    empty: List[str] = []
    for p in paths:  # one decode per file: the files are the format
        if not os.path.isfile(p):
            raise FileNotFoundError(f"mask file not found: {p}")
        with open_image(p, p) as im:
            if im.size != (W, H):
                raise DSB2018FormatError(f"{p}: mask is {im.size[0]}x{im.size[1]} (WxH) but its image is {W}x{H}")
            if im.mode not in ("L", "1", "P", "I;16", "I"):
                im = _any_channel(im)
            bbox = im.getbbox()
            if bbox is None:
                empty.append(p)
                continue
            crops.append(np.asarray(im.crop(bbox)) != 0)
            boxes.append(bbox)
    if empty:
        warnings.warn(f"{len(empty)} empty mask files skipped (e.g. {empty[:3]})", stacklevel=2)
    if not crops:
        return MaskList.empty((H, W))
    b = np.asarray(boxes, dtype=np.int64)  # x0, y0, x1, y1
    h = int((b[:, 3] - b[:, 1]).max()) + 2 * pad
    w = int((b[:, 2] - b[:, 0]).max()) + 2 * pad
    out = np.zeros((len(crops), h, w), dtype=bool)
    for k, c in enumerate(crops):  # one slice copy per file, alongside the decode above
        out[k, pad:pad + c.shape[0], pad:pad + c.shape[1]] = c
    origins = torch.from_numpy(b[:, :2] - pad)
    return MaskList(torch.from_numpy(out), origins, (H, W))
