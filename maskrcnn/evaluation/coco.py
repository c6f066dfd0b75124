"""COCO box and mask AP through pycocotools, built in memory from ``Instances``.

- ``params.maxDets = [100, 300, 1000]``: an image holds up to ~800 cells, so COCO's default
  ``[1, 10, 100]`` would cut most predictions. ``AP``, ``AP50``, ``AP75`` and the area ranges are
  reported at 1000 detections; ``AR100``, ``AR300`` and ``AR1000`` at each cap. The numbers are
  read from ``COCOeval.eval`` here, because ``COCOeval.summarize`` computes its headline AP at a
  hard-coded 100 detections.
- Masks go to pycocotools as RLE without full-image buffers: each crop is run-length encoded
  column-major (pycocotools' order) by ``maskrcnn.data.rle.encode_crops``, turned into
  pycocotools' alternating background/foreground counts and compressed by ``frPyObjects``.
- Category ids are ``label + 1``; the box result set and the mask result set are kept apart
  so box AP is measured on the predicted boxes, not on boxes derived from the masks.
"""
from __future__ import annotations

import contextlib
import io
from typing import Dict, List, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn.data.rle import encode_crops
from maskrcnn.structures import Instances, MaskList

MAX_DETS = (100, 300, 1000)
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "AR300", "AR1000", "ARs", "ARm", "ARl")


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


def _xywh(boxes) -> List[List[float]]:
    b = boxes.detach().double().cpu().numpy()
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1).tolist() if len(b) else []


class COCOEvaluator:
    """Accumulates images; ``summary()`` runs COCOeval for boxes and masks.

    Args:
        num_classes: labels are in ``[0, num_classes)``.
        class_names: optional names of the categories.
        iou_types: any of ``"bbox"``, ``"segm"``.
        max_dets: detection caps (the last one is the one AP uses).
    """

    def __init__(self, num_classes: int = 1, class_names: Optional[Sequence[str]] = None,
                 iou_types: Sequence[str] = ("bbox", "segm"), max_dets: Sequence[int] = MAX_DETS):
        if len(max_dets) != 3:
            raise ValueError(f"max_dets must have 3 values (COCOeval's summary reads three), got {max_dets}")
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names else [str(c) for c in range(self.num_classes)]
        self.iou_types = tuple(iou_types)
        self.max_dets = [int(m) for m in max_dets]
        self.images: List[dict] = []
        self.gt_anns: List[dict] = []
        self.dt: Dict[str, List[dict]] = {t: [] for t in self.iou_types}
        self._ids: Dict[str, int] = {}

    def add(self, image_id: str, pred: Instances, gt: Instances) -> None:
        """Add one image: ``pred`` with scores (and masks for segm), ``gt`` with labels and masks."""
        if image_id in self._ids:
            raise ValueError(f"image {image_id!r} was already added")
        if pred.scores is None:
            raise ValueError(f"{image_id}: predictions need scores for COCO AP")
        iid = len(self._ids) + 1
        self._ids[image_id] = iid
        H, W = gt.image_size
        self.images.append({"id": iid, "height": H, "width": W, "file_name": str(image_id)})
        if gt.masks is not None:
            gt_rles = masks_to_coco_rles(gt.masks)
            areas = gt.masks.areas().tolist()
            gt_boxes = gt.masks.tight_boxes()
        else:
            gt_rles, areas, gt_boxes = [None] * len(gt), None, gt.boxes
        gt_xywh = _xywh(gt_boxes)
        if areas is None:
            areas = [w * h for _, _, w, h in gt_xywh]
        labels = gt.labels.tolist()
        for k in range(len(gt)):  # pycocotools wants one dict per object
            ann = {"id": len(self.gt_anns) + 1, "image_id": iid, "category_id": int(labels[k]) + 1,
                   "bbox": gt_xywh[k], "area": float(areas[k]), "iscrowd": 0}
            if gt_rles[k] is not None:
                ann["segmentation"] = gt_rles[k]
            self.gt_anns.append(ann)
        scores, plabels = pred.scores.tolist(), pred.labels.tolist()
        if "bbox" in self.dt:
            for k, box in enumerate(_xywh(pred.boxes)):
                self.dt["bbox"].append({"image_id": iid, "category_id": int(plabels[k]) + 1, "bbox": box,
                                        "score": float(scores[k])})
        if "segm" in self.dt:
            if pred.masks is None:
                raise ValueError(f"{image_id}: predictions need masks for segm AP")
            for k, rle in enumerate(masks_to_coco_rles(pred.masks)):
                self.dt["segm"].append({"image_id": iid, "category_id": int(plabels[k]) + 1, "segmentation": rle,
                                        "score": float(scores[k])})

    def _gt_coco(self) -> COCO:
        coco = COCO()
        coco.dataset = {"images": self.images, "annotations": self.gt_anns,
                        "categories": [{"id": c + 1, "name": n} for c, n in enumerate(self.class_names)]}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def summary(self) -> Dict[str, Dict[str, float]]:
        """``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "AR300", "AR1000", ...}}``
        in [0, 1] (-1 where COCO has nothing to measure, e.g. no large objects)."""
        if not self.images:
            raise ValueError("COCOEvaluator.summary: no image was added")
        gt = self._gt_coco()
        out = {}
        for t in self.iou_types:
            if t == "segm" and any("segmentation" not in a for a in self.gt_anns):
                raise ValueError("segm AP needs ground-truth masks")
            if not self.dt[t]:
                out[t] = {n: 0.0 for n in STAT_NAMES}
                continue
            with contextlib.redirect_stdout(io.StringIO()):
                dt = gt.loadRes(list(self.dt[t]))
                ev = COCOeval(gt, dt, iouType=t)
                ev.params.maxDets = list(self.max_dets)
                ev.evaluate()
                ev.accumulate()
            out[t] = _stats(ev)
        return out


def _stats(ev: COCOeval) -> Dict[str, float]:
    """COCO's twelve summary numbers, read from ``ev.eval`` ourselves: pycocotools' ``summarize``
    computes its first AP at a hard-coded 100 detections whatever ``params.maxDets`` says."""
    p = ev.params
    prec, rec = ev.eval["precision"], ev.eval["recall"]  # [T, R, K, A, M], [T, K, A, M]
    area = {a: k for k, a in enumerate(p.areaRngLbl)}

    def mean(x):
        x = x[x > -1]
        return float(x.mean()) if x.size else -1.0

    def ap(iou=None, a="all", m=2):
        x = prec[..., area[a], m]
        if iou is not None:
            x = x[np.flatnonzero(np.isclose(p.iouThrs, iou))]
        return mean(x)

    def ar(a="all", m=2):
        return mean(rec[..., area[a], m])

    vals = [ap(), ap(0.5), ap(0.75), ap(a="small"), ap(a="medium"), ap(a="large"),
            ar(m=0), ar(m=1), ar(m=2), ar("small"), ar("medium"), ar("large")]
    return dict(zip(STAT_NAMES, vals))
