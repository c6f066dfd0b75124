"""COCO-style instance annotations (polygons or RLE) via ``pycocotools.mask``; LIVECell included.

LIVECell's quirks handled here:
- the per-cell-type Kaggle copies keep ``annotations`` as a dict keyed by id, not a list;
- images live in ``<root>/<CELLTYPE>/<file_name>`` (``CELLTYPE`` = file name prefix before ``_``)
  while ``file_name`` has no folder; the reader tries ``<root>/<file_name>``, then that, then
  searches ``root`` once for the base name;
- images are 8-bit ``.tif`` (16-bit also read).

Polygons are rasterised straight into crops: each annotation's polygons are shifted to its own
crop origin and all annotations of an image are rasterised in one ``frPyObjects``/``decode`` call
on a common crop size (pycocotools' rasteriser is shift-invariant for integer shifts, and crops
never start left of / above the image, so this equals cropping the full-image rasterisation; a test
checks it). RLE segmentations are decoded full-size in chunks of 32 and cropped.

``iscrowd`` annotations are not used as objects (the count is in ``meta["num_crowd"]``); images
without annotations are samples without objects. Annotations that rasterise to no pixel are
dropped with a warning naming them.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

from maskrcnn.data.images import read_image
from maskrcnn.data.transforms import clip_to_image
from maskrcnn.errors import UserError
from maskrcnn.structures import Instances, MaskList, Sample


def _decode(rles) -> np.ndarray:
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword notice is not ours to act on
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rles)


class CocoFormatError(UserError, ValueError):
    """A problem in a COCO json or its images; the message names the file, image and annotation."""


def load_coco_json(path: str) -> dict:
    """Load a COCO json; ``annotations`` given as a dict keyed by id (LIVECell copies) become a list."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        with open(path) as f:
            doc = json.load(f)
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


class CocoDataset:
    """COCO instance segmentation json + image folder.

    Args:
        ann_file: the json.
        root: image folder.
        class_agnostic: one class ``cell``.
        classes: class order by category name (default: categories sorted by id).
        channels: None (as stored), 1 or 3.
    """

    def __init__(self, ann_file: str, root: str, class_agnostic: bool = False, classes: Sequence[str] = (),
                 channels: Optional[int] = None):
        self.ann_file = ann_file
        self.root = root
        self.channels = channels
        doc = load_coco_json(ann_file)
        cats = sorted(doc.get("categories", []), key=lambda c: c["id"])
        if not cats:
            raise CocoFormatError(f"{ann_file}: no categories")
        names = [str(c["name"]) for c in cats]
        if class_agnostic:
            self.class_names = ("cell",)
            self._cat_to_label = {c["id"]: 0 for c in cats}
        else:
            self.class_names = tuple(classes) if classes else tuple(names)
            missing = [n for n in names if n not in self.class_names]
            if missing:
                raise CocoFormatError(f"{ann_file}: categories {missing} are not in data.classes {self.class_names}")
            self._cat_to_label = {c["id"]: self.class_names.index(str(c["name"])) for c in cats}
        self._images = []
        seen = set()
        for im in doc["images"]:
            for key in ("id", "file_name", "height", "width"):
                if key not in im:
                    raise CocoFormatError(f"{ann_file}: image entry {im.get('id', '?')} lacks {key!r}")
            if im["id"] in seen:
                raise CocoFormatError(f"{ann_file}: image id {im['id']} appears twice")
            seen.add(im["id"])
            self._images.append(im)
        self._anns: Dict[int, list] = {im["id"]: [] for im in self._images}
        for a in doc["annotations"]:
            if a.get("image_id") not in self._anns:
                raise CocoFormatError(f"{ann_file}: annotation {a.get('id')} refers to unknown image {a.get('image_id')}")
            if a.get("category_id") not in self._cat_to_label:
                raise CocoFormatError(f"{ann_file}: annotation {a.get('id')} has unknown category {a.get('category_id')}")
            if "segmentation" not in a:
                raise CocoFormatError(f"{ann_file}: annotation {a.get('id')} has no segmentation")
            self._anns[a["image_id"]].append(a)
        self.image_ids: List[str] = [os.path.splitext(os.path.basename(im["file_name"]))[0] for im in self._images]
        self._file_index: Optional[Dict[str, str]] = None

    def __len__(self) -> int:
        return len(self._images)

    @staticmethod
    def cell_type_of(file_name: str) -> str:
        """LIVECell-style cell type: the base name's prefix before the first ``_``."""
        return os.path.basename(file_name).split("_", 1)[0]

    def strata(self) -> list:
        return [self.cell_type_of(im["file_name"]) for im in self._images]

    def image_path(self, index: int) -> str:
        name = self._images[index]["file_name"]
        for p in (os.path.join(self.root, name), os.path.join(self.root, self.cell_type_of(name), name)):
            if os.path.isfile(p):
                return p
        if self._file_index is None:  # walk the tree once, only when the usual places fail
            self._file_index = {}
            for d, _, files in os.walk(self.root):
                for f in files:
                    self._file_index.setdefault(f, os.path.join(d, f))
        p = self._file_index.get(os.path.basename(name))
        if p is None:
            raise FileNotFoundError(f"{self.ann_file}: image {self._images[index]['id']} file {name!r} not found "
                                    f"under {self.root}")
        return p

    def load(self, index: int) -> Sample:
        info = self._images[index]
        path = self.image_path(index)
        image = read_image(path, channels=self.channels)
        H, W = int(image.shape[1]), int(image.shape[2])
        if (H, W) != (int(info["height"]), int(info["width"])):
            raise CocoFormatError(f"{path} is {W}x{H} (WxH) but {self.ann_file} image {info['id']} says "
                                  f"{info['width']}x{info['height']}")
        anns = self._anns[info["id"]]
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        masks = self._decode(anns, H, W, path)
        labels = torch.as_tensor([self._cat_to_label[a["category_id"]] for a in anns], dtype=torch.long)
        areas = masks.crops.flatten(1).sum(1) if len(masks) else torch.zeros(0, dtype=torch.long)
        if len(masks) and bool((areas == 0).any()):
            empty = [anns[k]["id"] for k in (areas == 0).nonzero()[:, 0].tolist()]
            warnings.warn(f"{self.ann_file}: image {info['id']} ({path}): {len(empty)} annotations cover no pixel "
                          f"and are dropped (ids {empty[:5]})", stacklevel=2)
            keep = areas > 0
            masks, labels = masks[keep], labels[keep]
        inst = Instances((H, W), masks.tight_boxes(), labels, None, masks)
        meta = {"path": path, "class_names": self.class_names, "cell_type": self.cell_type_of(info["file_name"]),
                "coco_id": info["id"], "num_crowd": len(crowd)}
        return Sample(image, inst, self.image_ids[index], meta)

    def _decode(self, anns: list, H: int, W: int, path: str) -> MaskList:
        n = len(anns)
        if n == 0:
            return MaskList.empty((H, W))
        is_poly = [isinstance(a["segmentation"], list) for a in anns]
        poly_idx = [k for k in range(n) if is_poly[k]]
        rle_idx = [k for k in range(n) if not is_poly[k]]
        parts = []
        if poly_idx:
            poly_masks = self._decode_polygons([anns[k] for k in poly_idx], H, W)
            parts.append((poly_idx, poly_masks))
        if rle_idx:
            parts.append((rle_idx, self._decode_rles([anns[k] for k in rle_idx], H, W)))
        if len(parts) == 1 and parts[0][0] == list(range(n)):
            return parts[0][1]
        merged = MaskList.cat([p[1] for p in parts])
        order = torch.as_tensor([k for idx, _ in parts for k in idx])
        inv = torch.empty_like(order)
        inv[order] = torch.arange(n)
        return merged[inv]

    def _decode_polygons(self, anns: list, H: int, W: int) -> MaskList:
        polys, owner = [], []
        for k, a in enumerate(anns):  # flatten the polygon lists (pycocotools takes Python lists)
            for p in a["segmentation"]:
                if len(p) < 6 or len(p) % 2:
                    raise CocoFormatError(f"{self.ann_file}: annotation {a.get('id')}: a polygon needs an even number "
                                          f">= 6 of coordinates, got {len(p)}")
                polys.append(np.asarray(p, dtype=np.float64).reshape(-1, 2))
                owner.append(k)
            if not a["segmentation"]:
                raise CocoFormatError(f"{self.ann_file}: annotation {a.get('id')} has an empty polygon list")
        owner_a = np.asarray(owner)
        lens = np.asarray([p.shape[0] for p in polys])
        pts = np.concatenate(polys)
        seg_of_pt = np.repeat(np.arange(len(polys)), lens)
        big = np.inf
        mins = np.full((len(anns), 2), big)
        maxs = np.full((len(anns), 2), -big)
        np.minimum.at(mins, owner_a[seg_of_pt], pts)
        np.maximum.at(maxs, owner_a[seg_of_pt], pts)
        # Crop origin: one pixel left of / above the polygon, never left of / above the image.
        origin = np.maximum(np.floor(mins).astype(np.int64) - 1, 0)
        ext = np.ceil(maxs).astype(np.int64) + 2 - origin
        hc, wc = int(max(ext[:, 1].max(), 1)), int(max(ext[:, 0].max(), 1))
        shifted = pts - origin[owner_a[seg_of_pt]]
        split = np.split(shifted.reshape(-1), np.cumsum(lens * 2)[:-1])
        rles = mask_utils.frPyObjects([s.tolist() for s in split], hc, wc)
        dec = _decode(rles)  # [hc, wc, P] uint8
        # Union of each annotation's polygons (reduceat over consecutive parts of one owner).
        starts = np.flatnonzero(np.r_[True, owner_a[1:] != owner_a[:-1]])
        crops = np.logical_or.reduceat(dec.astype(bool), starts, axis=2).transpose(2, 0, 1)
        ml = MaskList(torch.from_numpy(np.ascontiguousarray(crops)), torch.from_numpy(origin), (H, W))
        return clip_to_image(ml).compact(pad=1)

    def _decode_rles(self, anns: list, H: int, W: int, chunk: int = 32) -> MaskList:
        objs = []
        for a in anns:
            seg = a["segmentation"]
            size = seg.get("size") if isinstance(seg, dict) else None
            if size is None or "counts" not in seg:
                raise CocoFormatError(f"{self.ann_file}: annotation {a.get('id')}: segmentation is neither a polygon "
                                      f"list nor an RLE dict with size and counts")
            if [int(size[0]), int(size[1])] != [H, W]:
                raise CocoFormatError(f"{self.ann_file}: annotation {a.get('id')}: RLE size {size} differs from the "
                                      f"image's {[H, W]}")
            if isinstance(seg["counts"], list):
                if sum(seg["counts"]) != H * W:
                    raise CocoFormatError(f"{self.ann_file}: annotation {a.get('id')}: RLE counts sum to "
                                          f"{sum(seg['counts'])}, not H*W = {H * W}")
                seg = mask_utils.frPyObjects(seg, H, W)
            elif isinstance(seg["counts"], str):
                seg = {"size": seg["size"], "counts": seg["counts"].encode()}
            objs.append(seg)
        pieces = []
        for c in range(0, len(objs), chunk):  # bounded memory: chunk * H * W bytes
            dense = _decode(objs[c:c + chunk]).transpose(2, 0, 1)
            pieces.append(MaskList.from_dense(torch.from_numpy(np.ascontiguousarray(dense)).bool()))
        return MaskList.cat(pieces)


__all__ = ["CocoDataset", "CocoFormatError", "load_coco_json"]
