"""COCO-style instance annotations (polygons or RLE) via ``pycocotools.mask``; LIVECell included.

The file itself is read by ``maskrcnn.formats.coco_json`` (``load_coco_json``, ``AnnotationStore``).

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

Memory: annotations are stored in flat arrays as the json parses (``maskrcnn.formats.coco_json.AnnotationStore``), not as
one dict per annotation: a LIVECell-sized json (1.6 million polygons) costs its coordinates in
float64 plus a few bytes per annotation, shared copy-on-write by loader workers
(``bench/livecell_scale.py``).

``iscrowd`` annotations are not used as objects (the count is in ``meta["num_crowd"]``); images
without annotations are samples without objects. Annotations that rasterise to no pixel are
dropped with a warning naming them.
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

from maskrcnn.data.transforms.geometric import clip_to_image
from maskrcnn.formats.coco_json import AnnotationStore, CocoFormatError, decode_rles, image_positions, load_coco_json
from maskrcnn.formats.image_files import read_image
from maskrcnn.structures import Instances, MaskList, Sample


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
        store = AnnotationStore(ann_file)
        doc = load_coco_json(ann_file, object_hook=store.hook)
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
        self._images = doc["images"]
        image_pos = image_positions(doc, ann_file)
        for a in doc["annotations"]:  # the hook replaced every annotation with a segmentation by None
            if a is not None:
                raise CocoFormatError(f"{ann_file}: annotation {a.get('id') if isinstance(a, dict) else a!r} has no "
                                      f"segmentation")
        if len(store) == 0 and not doc["annotations"]:
            raise CocoFormatError(f"{ann_file}: no annotations ('annotations' is missing or empty): nothing to learn "
                                  "from or score against; an image-list json without annotations only serves "
                                  "predict.py --coco-gt")
        del doc
        n = len(store)
        self._ann_ids = np.frombuffer(store.ids, dtype=np.int64) if n else np.zeros(0, np.int64)
        img = np.fromiter((image_pos.get(i, -1) for i in store.image_ids), dtype=np.int64, count=n)
        if n and img.min() < 0:
            k = int(np.flatnonzero(img < 0)[0])
            raise CocoFormatError(f"{ann_file}: annotation {self._ann_ids[k]} refers "
                                  f"to unknown image {store.image_ids[k]}")
        label = np.fromiter((self._cat_to_label.get(c, -1) for c in store.category_ids), dtype=np.int64, count=n)
        if n and label.min() < 0:
            k = int(np.flatnonzero(label < 0)[0])
            raise CocoFormatError(f"{ann_file}: annotation {self._ann_ids[k]} has unknown category "
                                  f"{store.category_ids[k]}")
        self._ann_label = label
        self._ann_crowd = np.frombuffer(bytes(store.iscrowd), dtype=np.uint8).astype(bool)
        self._ann_npoly = np.frombuffer(store.npoly, dtype=np.int64) if n else np.zeros(0, np.int64)
        self._ann_poly_start = np.concatenate([[0], np.cumsum(self._ann_npoly)])
        poly_len = np.frombuffer(store.poly_len, dtype=np.int64) if len(store.poly_len) else np.zeros(0, np.int64)
        self._poly_len = poly_len
        self._poly_start = np.concatenate([[0], np.cumsum(poly_len)])
        self._coords = np.frombuffer(store.coords, dtype=np.float64) if len(store.coords) else np.zeros(0)
        self._rle = store.rle
        # Annotations grouped by image, in file order within an image.
        self._ann_order = np.argsort(img, kind="stable")
        self._img_start = np.concatenate([[0], np.cumsum(np.bincount(img, minlength=len(self._images)))])
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
        anns = self._ann_order[self._img_start[index]:self._img_start[index + 1]]
        crowd = self._ann_crowd[anns]
        anns = anns[~crowd]
        masks = self._decode(anns, H, W, path)
        labels = torch.as_tensor(self._ann_label[anns], dtype=torch.long)
        areas = masks.crops.flatten(1).sum(1) if len(masks) else torch.zeros(0, dtype=torch.long)
        if len(masks) and bool((areas == 0).any()):
            empty = self._ann_ids[anns[(areas == 0).numpy()]].tolist()
            warnings.warn(f"{self.ann_file}: image {info['id']} ({path}): {len(empty)} annotations cover no pixel "
                          f"and are dropped (ids {empty[:5]})", stacklevel=2)
            keep = areas > 0
            masks, labels = masks[keep], labels[keep]
        inst = Instances((H, W), masks.tight_boxes(), labels, None, masks)
        meta = {"path": path, "class_names": self.class_names, "cell_type": self.cell_type_of(info["file_name"]),
                "coco_id": info["id"], "num_crowd": int(crowd.sum())}
        return Sample(image, inst, self.image_ids[index], meta)

    def _decode(self, anns: np.ndarray, H: int, W: int, path: str) -> MaskList:
        """Masks of annotations ``anns`` (indices into the store), in their order."""
        n = len(anns)
        if n == 0:
            return MaskList.empty((H, W))
        is_poly = self._ann_npoly[anns] > 0
        poly_idx = np.flatnonzero(is_poly).tolist()
        rle_idx = np.flatnonzero(~is_poly).tolist()
        parts = []
        if poly_idx:
            parts.append((poly_idx, self._decode_polygons(anns[is_poly], H, W)))
        if rle_idx:
            parts.append((rle_idx, self._decode_rles([self._rle[int(k)] for k in anns[~is_poly]],
                                                     self._ann_ids[anns[~is_poly]].tolist(), H, W)))
        if len(parts) == 1:
            return parts[0][1]
        merged = MaskList.cat([p[1] for p in parts])
        order = torch.as_tensor([k for idx, _ in parts for k in idx])
        inv = torch.empty_like(order)
        inv[order] = torch.arange(n)
        return merged[inv]

    def _decode_polygons(self, anns: np.ndarray, H: int, W: int) -> MaskList:
        """Rasterise the polygons of annotations ``anns`` (indices into the store) into crops."""
        npoly = self._ann_npoly[anns]
        owner_a = np.repeat(np.arange(len(anns)), npoly)
        first = self._ann_poly_start[anns]
        pidx = np.repeat(first - np.cumsum(npoly) + npoly, npoly) + np.arange(int(npoly.sum()))  # their polygons
        clen = self._poly_len[pidx]
        cidx = np.repeat(self._poly_start[pidx] - np.cumsum(clen) + clen, clen) + np.arange(int(clen.sum()))
        pts = self._coords[cidx].reshape(-1, 2)
        lens = clen // 2
        seg_of_pt = np.repeat(np.arange(len(pidx)), lens)
        big = np.inf
        mins = np.full((len(anns), 2), big)
        maxs = np.full((len(anns), 2), -big)
        np.minimum.at(mins, owner_a[seg_of_pt], pts)
        np.maximum.at(maxs, owner_a[seg_of_pt], pts)
        # NaN/inf or coordinates far off the image (a typo, 1e9) would rasterise into garbage or
        # a crop of billions of pixels: refuse them, naming the annotation.
        bad = ~(np.isfinite(mins).all(1) & np.isfinite(maxs).all(1) & (mins >= (-W, -H)).all(1) & (maxs <= (2 * W, 2 * H)).all(1))
        if bad.any():
            k = int(np.argmax(bad))
            raise CocoFormatError(f"{self.ann_file}: annotation {int(self._ann_ids[anns[k]])}: polygon coordinates must be finite "
                                  f"and near the {W}x{H} image, got x in [{mins[k, 0]}, {maxs[k, 0]}], "
                                  f"y in [{mins[k, 1]}, {maxs[k, 1]}]")
        # Crop origin: one pixel left of / above the polygon, never left of / above the image.
        origin = np.maximum(np.floor(mins).astype(np.int64) - 1, 0)
        ext = np.ceil(maxs).astype(np.int64) + 2 - origin
        hc, wc = int(max(ext[:, 1].max(), 1)), int(max(ext[:, 0].max(), 1))
        shifted = pts - origin[owner_a[seg_of_pt]]
        split = np.split(shifted.reshape(-1), np.cumsum(lens * 2)[:-1])
        rles = mask_utils.frPyObjects([s.tolist() for s in split], hc, wc)
        dec = decode_rles(rles)  # [hc, wc, P] uint8
        # Union of each annotation's polygons (reduceat over consecutive parts of one owner).
        starts = np.flatnonzero(np.r_[True, owner_a[1:] != owner_a[:-1]])
        crops = np.logical_or.reduceat(dec.astype(bool), starts, axis=2).transpose(2, 0, 1)
        ml = MaskList(torch.from_numpy(np.ascontiguousarray(crops)), torch.from_numpy(origin), (H, W))
        return clip_to_image(ml).compact(pad=1)

    def _decode_rles(self, segs: list, ids: list, H: int, W: int, chunk: int = 32) -> MaskList:
        objs = []
        for seg, aid in zip(segs, ids):
            size = seg.get("size") if isinstance(seg, dict) else None
            if size is None or "counts" not in seg:
                raise CocoFormatError(f"{self.ann_file}: annotation {aid}: segmentation is neither a polygon "
                                      f"list nor an RLE dict with size and counts")
            if [int(size[0]), int(size[1])] != [H, W]:
                raise CocoFormatError(f"{self.ann_file}: annotation {aid}: RLE size {size} differs from the "
                                      f"image's {[H, W]}")
            if isinstance(seg["counts"], list):
                if sum(seg["counts"]) != H * W:
                    raise CocoFormatError(f"{self.ann_file}: annotation {aid}: RLE counts sum to "
                                          f"{sum(seg['counts'])}, not H*W = {H * W}")
                seg = mask_utils.frPyObjects(seg, H, W)
            elif isinstance(seg["counts"], str):
                seg = {"size": seg["size"], "counts": seg["counts"].encode()}
            objs.append(seg)
        pieces = []
        for c in range(0, len(objs), chunk):  # bounded memory: chunk * H * W bytes
            dense = decode_rles(objs[c:c + chunk]).transpose(2, 0, 1)
            pieces.append(MaskList.from_dense(torch.from_numpy(np.ascontiguousarray(dense)).bool()))
        return MaskList.cat(pieces)


__all__ = ["CocoDataset"]
