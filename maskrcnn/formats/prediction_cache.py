"""The prediction cache: raw (soft) validation predictions on disk, one file per image.

Layout of a cache directory::

    <dir>/meta.json          settings that produced the predictions, image ids, class names,
                             "complete": true once every image is written
    <dir>/preds/<name>.pt    one image: boxes, labels, scores, mask origins and crops

Soft mask crops are stored as uint8 (``round(p * 255)``), a quarter of float32; thresholds are
then applied to ``q / 255`` (values within 1/510 of a threshold may fall on the other side).
Each mask is stored at the size of its nonzero part, in one flat buffer per image, so a single
large box does not pad all ~1000 masks of an image on disk.
Files are written atomically, so an interrupted run resumes where it stopped.

The directory name is a hash of the prediction-relevant settings (``settings_key``), so a
change of weights, TTA, model overrides or data split never reuses stale predictions, while
variants that differ only in filtering (thresholds, overlaps) share one cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Iterator, List, Optional, Tuple

import torch

from maskrcnn.fileio import atomic_json, atomic_open
from maskrcnn.structures import Instances, MaskList

_SAFE = re.compile(r"^[A-Za-z0-9_.\-]{1,120}$")


def settings_key(settings: dict) -> str:
    """A short stable hash of a JSON-serialisable dict of settings."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_fingerprint(path: str) -> dict:
    """Identity of a weights file for the cache key: absolute path, size and modification time."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def atomic_torch_save(obj, path: str) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def _file_name(image_id: str) -> str:
    if _SAFE.match(image_id):
        return image_id + ".pt"
    return "id-" + hashlib.sha1(image_id.encode()).hexdigest()[:20] + ".pt"


def _rect_select(n: int, h: int, w: int, y0: torch.Tensor, x0: torch.Tensor, hh: torch.Tensor, ww: torch.Tensor) -> torch.Tensor:
    """bool[n, h, w]: for each mask, its rectangle ``[y0, y0 + hh) x [x0, x0 + ww)``."""
    ys = torch.arange(h)[None, :] - y0[:, None]
    xs = torch.arange(w)[None, :] - x0[:, None]
    return ((ys >= 0) & (ys < hh[:, None]))[:, :, None] & ((xs >= 0) & (xs < ww[:, None]))[:, None, :]


def pack_instances(inst: Instances) -> dict:
    """Plain CPU tensors; each mask stored at its own size (its nonzero part), all in one flat
    buffer, so one large box does not pad every mask on disk. Soft values are quantised to uint8."""
    inst = inst.to("cpu")
    m = inst.masks
    if m is None:
        raise ValueError("cached predictions need masks")
    soft = m.is_soft
    crops = (m.crops.float().clamp(0, 1) * 255).round().to(torch.uint8) if soft else m.crops
    n, h, w = crops.shape
    q = MaskList(crops, m.origins, m.image_size)
    local = q.tight_boxes().long() - m.origins.repeat(1, 2)  # tight boxes inside each crop
    empty = (local[:, 2] <= local[:, 0]) | (local[:, 3] <= local[:, 1])
    local[empty] = 0
    hh, ww = local[:, 3] - local[:, 1], local[:, 2] - local[:, 0]
    flat = crops[_rect_select(n, h, w, local[:, 1], local[:, 0], hh, ww)] if n else crops.reshape(-1)
    return {
        "image_size": list(inst.image_size),
        "boxes": inst.boxes.float().clone(),
        "labels": inst.labels.clone(),
        "scores": (inst.scores if inst.scores is not None else torch.ones(len(inst))).float().clone(),
        "origins": (m.origins + local[:, :2]).clone(),
        "sizes": torch.stack([hh, ww], dim=1),
        "flat": flat.clone(),
        "soft": soft,
    }


def unpack_instances(d: dict) -> Instances:
    sizes, flat = d["sizes"], d["flat"]
    n = int(sizes.shape[0])
    h = max(1, int(sizes[:, 0].max())) if n else 1
    w = max(1, int(sizes[:, 1].max())) if n else 1
    crops = torch.zeros((n, h, w), dtype=flat.dtype)
    if n:
        zero = torch.zeros(n, dtype=torch.long)
        crops[_rect_select(n, h, w, zero, zero, sizes[:, 0], sizes[:, 1])] = flat
    crops = crops.float() / 255.0 if d["soft"] else crops
    size = tuple(d["image_size"])
    return Instances(size, d["boxes"], d["labels"], d["scores"], MaskList(crops, d["origins"], size))


class PredictionCache:
    """Raw predictions of one set of settings (see module doc).

    Args:
        root: parent directory; the cache lives in ``root/<settings_key(settings)>``.
        settings: prediction-relevant settings (stored in meta.json for humans).
    """

    def __init__(self, root: str, settings: dict):
        self.key = settings_key(settings)
        self.dir = os.path.join(root, self.key)
        self.settings = settings

    @staticmethod
    def open(directory: str) -> "PredictionCache":
        """An existing cache directory (e.g. for ``evaluate.py tune``)."""
        meta_path = os.path.join(directory, "meta.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{directory}: not a prediction cache (no meta.json)")
        with open(meta_path) as f:
            meta = json.load(f)
        c = PredictionCache.__new__(PredictionCache)
        c.dir = directory
        c.key = os.path.basename(os.path.normpath(directory))
        c.settings = meta.get("settings", {})
        return c

    def _meta_path(self) -> str:
        return os.path.join(self.dir, "meta.json")

    def meta(self) -> dict:
        if not os.path.isfile(self._meta_path()):
            return {}
        with open(self._meta_path()) as f:
            return json.load(f)

    def is_complete(self, image_ids: Optional[List[str]] = None) -> bool:
        m = self.meta()
        if not m.get("complete"):
            return False
        return image_ids is None or list(m.get("image_ids", [])) == list(image_ids)

    def path(self, image_id: str) -> str:
        return os.path.join(self.dir, "preds", _file_name(image_id))

    def has(self, image_id: str) -> bool:
        return os.path.isfile(self.path(image_id))

    def put(self, image_id: str, inst: Instances, extra: Optional[dict] = None) -> None:
        d = pack_instances(inst)
        d["image_id"] = image_id
        if extra:
            d["extra"] = extra
        atomic_torch_save(d, self.path(image_id))

    def get(self, image_id: str) -> Instances:
        return unpack_instances(self.get_record(image_id))

    def get_record(self, image_id: str) -> dict:
        p = self.path(image_id)
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{self.dir}: no cached prediction for image {image_id!r}")
        return torch.load(p, map_location="cpu", weights_only=True)

    def mark_complete(self, image_ids: List[str], class_names: Optional[List[str]] = None,
                      extra: Optional[dict] = None) -> None:
        meta = {"settings": self.settings, "image_ids": list(image_ids), "complete": True,
                "class_names": list(class_names or [])}
        if extra:
            meta.update(extra)
        atomic_json(meta, self._meta_path())

    def image_ids(self) -> List[str]:
        return list(self.meta().get("image_ids", []))

    def class_names(self) -> List[str]:
        return list(self.meta().get("class_names", []))

    def items(self) -> Iterator[Tuple[str, Instances]]:
        for image_id in self.image_ids():
            yield image_id, self.get(image_id)
