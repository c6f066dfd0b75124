"""COCO json files (instance annotations as polygons or RLE, and results): read and written.

Reading: ``load_coco_json`` (LIVECell's per-cell-type copies keep ``annotations`` as a dict keyed by
id, not a list: they become a list), ``check_image_ids``, and ``AnnotationStore``, which keeps the
annotations in flat arrays as the json parses: a LIVECell-sized json (1.6 million polygons) costs
its coordinates in float64 plus a few bytes per annotation, shared copy-on-write by loader workers
(``bench/livecell_scale.py``). The dataset that trains on such a file is
``maskrcnn.data.coco_dataset.CocoDataset``.

Writing: ``masks_to_coco_rles`` (crops -> compressed COCO RLEs; COCO AP and ``predict.py --format
coco`` use it).
"""
from __future__ import annotations

import json
import os
from array import array
import warnings
from typing import Dict, List

import numpy as np
from pycocotools import mask as mask_utils

from maskrcnn.errors import UserError
from maskrcnn.formats.rle import encode_crops
from maskrcnn.structures import MaskList


def decode_rles(rles) -> np.ndarray:
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword notice is not ours to act on
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rles)


class CocoFormatError(UserError, ValueError):
    """A problem in a COCO json or its images; the message names the file, image and annotation."""


def load_coco_json(path: str, object_hook=None) -> dict:
    """Load a COCO json; ``annotations`` given as a dict keyed by id (LIVECell copies) become a list.
    ``object_hook`` is passed to ``json.load`` (``CocoDataset`` stores annotations as they parse)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        with open(path) as f:
            doc = json.load(f, object_hook=object_hook)
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{path}: not valid json ({e})") from None
    if not isinstance(doc, dict) or "images" not in doc:
        raise CocoFormatError(f"{path}: expected a COCO dict with 'images', 'annotations' and 'categories'")
    anns = doc.get("annotations", [])
    if isinstance(anns, dict):
        anns = list(anns.values())
    doc["annotations"] = anns
    imgs = doc["images"]
    if isinstance(imgs, dict):
        doc["images"] = list(imgs.values())
    return doc


def check_image_ids(doc: dict, path: str) -> None:
    """CocoFormatError naming the entry unless every image of ``doc`` has an integer ``id`` (what
    pycocotools and results files match on: a string id or none cannot be matched)."""
    for k, im in enumerate(doc.get("images") or []):
        image_id = im.get("id") if isinstance(im, dict) else None
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise CocoFormatError(f"{path}: images[{k}] has {'no id' if image_id is None else f'the id {image_id!r}'}; "
                                  "COCO image ids are integers")


def image_positions(doc: dict, path: str) -> Dict[object, int]:
    """``{image id: position in doc["images"]}``; CocoFormatError naming the entry for an image
    without ``id``, ``file_name``, ``height`` or ``width``, or an id that appears twice."""
    pos: Dict[object, int] = {}
    for k, im in enumerate(doc["images"]):
        for key in ("id", "file_name", "height", "width"):
            if key not in im:
                raise CocoFormatError(f"{path}: image entry {im.get('id', '?')} lacks {key!r}")
        if im["id"] in pos:
            raise CocoFormatError(f"{path}: image id {im['id']} appears twice")
        pos[im["id"]] = k
    return pos


class AnnotationStore:
    """Every annotation of a COCO json in flat arrays, filled by ``json.load``'s ``object_hook``
    while the file parses: each annotation's Python objects (its polygon lists of floats) live only
    until its hook returns, so memory holds the file's text and these arrays, never millions of
    dicts (1.6 million LIVECell cells as dicts take several GB, copied again into every loader
    worker that touches them).

    Per annotation ``k``: ``ids[k]``, ``image_ids[k]``, ``category_ids[k]``, ``iscrowd[k]``,
    ``npoly[k]`` polygons (0 for RLE, kept in ``rle[k]``); per polygon ``j``: ``poly_len[j]``
    coordinates in ``coords`` (float64, the json's values exactly).
    """

    def __init__(self, ann_file: str):
        self.ann_file = ann_file
        self.ids = array("q")
        self.image_ids: list = []
        self.category_ids: list = []
        self.iscrowd = bytearray()
        self.npoly = array("q")
        self.poly_len = array("q")
        self.coords = array("d")
        self.rle: Dict[int, dict] = {}

    def hook(self, d: dict):
        seg = d.get("segmentation")
        if seg is None or "image_id" not in d:
            return d  # not an annotation (image, category, RLE counts, info...): kept as parsed
        k = len(self.ids)
        aid = d.get("id")
        if isinstance(seg, list):
            if not seg:
                raise CocoFormatError(f"{self.ann_file}: annotation {aid} has an empty polygon list")
            for poly in seg:
                if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                    raise CocoFormatError(f"{self.ann_file}: annotation {aid}: a polygon needs an even number "
                                          f">= 6 of coordinates, got {len(poly) if isinstance(poly, list) else poly!r}")
                try:
                    self.coords.extend(poly)
                except TypeError:
                    raise CocoFormatError(f"{self.ann_file}: annotation {aid}: polygon coordinates must be "
                                          f"numbers") from None
                self.poly_len.append(len(poly))
            self.npoly.append(len(seg))
        else:
            self.rle[k] = seg
            self.npoly.append(0)
        self.ids.append(aid if isinstance(aid, int) else -1)
        self.image_ids.append(d["image_id"])
        self.category_ids.append(d.get("category_id"))
        self.iscrowd.append(1 if d.get("iscrowd", 0) else 0)
        return None

    def __len__(self) -> int:
        return len(self.ids)


# ------------------------------------------------------------------------- writing
def masks_to_coco_rles(masks: MaskList) -> List[dict]:
    """Compressed pycocotools RLEs (``{"size": [H, W], "counts": bytes}``) of N binary crop masks."""
    H, W = masks.image_size
    masks = masks.threshold()
    strings = encode_crops(masks.crops, masks.origins, masks.image_size, order="col")
    objs = []
    for s in strings:  # pycocotools takes one Python object per mask
        v = np.array(s.split(), dtype=np.int64).reshape(-1, 2) if s else np.zeros((0, 2), np.int64)
        starts, lengths = v[:, 0] - 1, v[:, 1]
        ends = starts + lengths
        gaps = starts - np.concatenate([[0], ends[:-1]])
        counts = np.stack([gaps, lengths], axis=1).reshape(-1).tolist()
        tail = int(H * W - (ends[-1] if ends.size else 0))
        if tail or not counts:  # pycocotools ends on the last run when it reaches the last pixel
            counts.append(tail)
        objs.append({"size": [H, W], "counts": counts})
    return mask_utils.frPyObjects(objs, H, W) if objs else []


__all__ = ["AnnotationStore", "CocoFormatError", "check_image_ids", "decode_rles", "image_positions", "load_coco_json",
           "masks_to_coco_rles"]
