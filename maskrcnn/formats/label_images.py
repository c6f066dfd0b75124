"""Label images: one channel of integers of an image's size, 0 = background and each positive value
one object (8- or 16-bit PNG, TIFF up to 32-bit integers, a float TIFF of whole numbers); what
StarDist and Cellpose train on and ``predict.py --format labels`` / ``labels-tif`` writes.

Reading: ``read_label_array`` (the file as ``int64[H, W]``, checked), ``masks_from_label_array``
(its objects as crops), ``read_label_image`` (both). Writing: ``to_label_image`` (instances ->
``uint16``/``uint32`` array, better score wins a shared pixel), ``encode_label_tiff``; PNGs through
``maskrcnn.formats.image_files.encode_png``.
"""
from __future__ import annotations

import io

import numpy as np
import torch

from maskrcnn.errors import UserError
from maskrcnn.formats.image_files import open_image
from maskrcnn.structures import Instances, MaskList

MAX_LABEL = 65535  # 16-bit label images
MAX_LABEL_32 = 2 ** 31 - 1  # TIFF: 32-bit signed integers (Pillow's mode I)


class LabelImageError(UserError, ValueError):
    """A file that is not a label image, or objects that do not fit one; the message names the file."""


def masks_from_label_array(a: np.ndarray, where: str = "", error=LabelImageError) -> MaskList:
    """The objects of a label image ``int[H, W]`` (0 background, each positive value one object) as a
    bool MaskList, in increasing label order; each crop is the object's tight box (the crops share
    the largest box's size).

    With ``where`` (the file), ``error`` naming it when the values look like an ordinary image's
    grey levels rather than objects: over 20 values whose pixels fill, in the median, under 10% of
    their boxes (an image given where label images belong).
    """
    H, W = a.shape
    values = np.unique(a)
    values = values[values != 0]
    if values.size == 0:
        return MaskList.empty((H, W))
    ys, xs = np.nonzero(a)
    k = np.searchsorted(values, a[ys, xs])
    y0 = np.full(values.size, H, np.int64)
    x0 = np.full(values.size, W, np.int64)
    y1 = np.zeros(values.size, np.int64)
    x1 = np.zeros(values.size, np.int64)
    np.minimum.at(y0, k, ys)
    np.minimum.at(x0, k, xs)
    np.maximum.at(y1, k, ys + 1)
    np.maximum.at(x1, k, xs + 1)
    if where and values.size > 20:
        fill = np.bincount(k, minlength=values.size) / ((y1 - y0) * (x1 - x0))
        if np.median(fill) < 0.1:  # a photo's grey levels are scattered pixels, not objects
            raise error(f"{where}: not a label image: its {values.size} values are scattered pixels (each fills "
                        f"{np.median(fill):.0%} of its box, median), not objects; give label images "
                        "(0 = background, one id per object; predict.py --format labels writes them)")
    h, w = int((y1 - y0).max()), int((x1 - x0).max())
    crops = np.zeros((values.size, h, w), dtype=bool)
    crops[k, ys - y0[k], xs - x0[k]] = True
    origins = torch.from_numpy(np.stack([x0, y0], axis=1))
    return MaskList(torch.from_numpy(crops), origins, (H, W))


def read_label_array(path: str, error=LabelImageError) -> np.ndarray:
    """A label image file as ``int64[H, W]``; ``error`` (naming the file) when it is not one channel
    of non-negative whole numbers."""
    with open_image(path, path, signed_ok=True) as im:  # 32-bit label TIFFs are signed (Pillow's mode I)
        mode = im.mode
        a = np.asarray(im)
    if a.ndim != 2:
        raise error(f"{path}: a label image has one channel of object ids, this one has shape {a.shape} "
                    f"(mode {mode}); save the labels as a 1-channel 8/16-bit PNG or TIFF")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or (a != np.round(a)).any():
            bad = a[~np.isfinite(a) | (a != np.round(a))][0]
            raise error(f"{path}: label image holds the non-integer value {bad}: label images hold object ids "
                        "(0 = background, 1, 2, ... one per object), not probabilities or intensities")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise error(f"{path}: label image holds the negative value {a.min()}; object ids are 0 (background) or positive")
    return a


def to_label_image(inst: Instances, max_label: int = MAX_LABEL) -> np.ndarray:
    """``uint16[H, W]``: 0 background, ``k`` = the k-th object of ``inst`` (binary masks in decreasing
    score order); where masks overlap the earlier (better) one wins and emptied objects are dropped,
    so the labels are ``1..N`` without gaps. ``max_label``: more objects are an LabelImageError; above
    65535 (the Python API's ``segment``, TIFF label images) an image of more than 65535 objects is
    ``uint32``.
    """
    H, W = inst.image_size
    masks = inst.masks
    if masks is None:
        raise ValueError("to_label_image needs instances with masks")
    if masks.is_soft:
        raise ValueError("to_label_image needs binary masks (run filter_predictions first)")
    n = len(masks)
    canvas = torch.zeros(H * W, dtype=torch.int64)
    count = 0
    if n:
        masks = masks.to("cpu")
        n_idx, _, flat = masks.foreground_pixels()
        owner = torch.full((H * W,), n + 1, dtype=torch.int64)
        owner.scatter_reduce_(0, flat, n_idx + 1, reduce="amin")  # the best-scoring mask wins a shared pixel
        canvas = torch.where(owner <= n, owner, canvas)
        present = torch.zeros(n + 2, dtype=torch.bool)
        present[canvas] = True
        present[0] = False
        count = int(present.sum())
        if count > max_label:
            raise LabelImageError(f"{count} objects do not fit a 16-bit label image (at most {max_label}); "
                              "--format labels-tif writes 32-bit TIFFs then")
        renumber = torch.cumsum(present.long(), 0) * present.long()  # 1..N in score order, 0 elsewhere
        canvas = renumber[canvas]
    return canvas.view(H, W).numpy().astype(np.uint16 if count <= MAX_LABEL else np.uint32)


def encode_label_tiff(labels: np.ndarray) -> bytes:
    """TIFF bytes of a label image ``uint16[H, W]`` or ``uint32[H, W]``, deflate-compressed (32-bit
    ids are stored as Pillow's signed mode ``I``: ids stay below 2**31)."""
    from PIL import Image

    a = np.ascontiguousarray(labels)
    if a.dtype == np.uint32:
        a = a.astype(np.int32)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="TIFF", compression="tiff_adobe_deflate")
    return buf.getvalue()

def read_label_image(path: str, error=LabelImageError) -> MaskList:
    """The objects of a label image file as a bool MaskList, in increasing label order (``error``
    naming the file when it is not a label image)."""
    return masks_from_label_array(read_label_array(path, error), path, error)


__all__ = ["LabelImageError", "MAX_LABEL", "MAX_LABEL_32", "encode_label_tiff", "masks_from_label_array",
           "read_label_array", "read_label_image", "to_label_image"]
