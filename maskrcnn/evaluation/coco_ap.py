"""COCO box and mask AP through pycocotools, built in memory from ``Instances``.

- ``params.maxDets = [100, 300, 1000]``: an image holds up to ~800 cells, so COCO's default
  ``[1, 10, 100]`` would cut most predictions. ``AP``, ``AP50``, ``AP75`` and the area ranges are
  reported at 1000 detections; ``AR100``, ``AR300`` and ``AR1000`` at each cap. The numbers are
  read from ``COCOeval.eval`` here, because ``COCOeval.summarize`` computes its headline AP at a
  hard-coded 100 detections.
- Masks go to pycocotools as RLE without full-image buffers: each crop is run-length encoded
  column-major (pycocotools' order) by ``maskrcnn.formats.rle.encode_crops``, turned into
  pycocotools' alternating background/foreground counts and compressed by ``frPyObjects``.
- Category ids are ``label + 1``; the box result set and the mask result set are kept apart
  so box AP is measured on the predicted boxes, not on boxes derived from the masks.
- Files (``python evaluate.py coco``): ``evaluate_coco_files`` scores a COCO results json (e.g.
  ``predict.py --format coco``, detectron2's ``coco_instances_results.json``) against a COCO
  ground-truth json with the same caps and numbers.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn.errors import UserError
from maskrcnn.formats.coco_json import check_image_ids, load_coco_json, masks_to_coco_rles
from maskrcnn.structures import Instances

MAX_DETS = (100, 300, 1000)
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "AR300", "AR1000", "ARs", "ARm", "ARl")


def _xywh(boxes) -> List[List[float]]:
    b = boxes.detach().double().cpu().numpy()
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1).tolist() if len(b) else []


def encode_image(image_id: str, pred: Instances, gt: Instances, iou_types: Sequence[str] = ("bbox", "segm")) -> dict:
    """One image as COCO annotations and results (compressed RLEs, small and picklable):
    ``{"image_id", "size", "gt": [ann], "dt": {iou_type: [result]}}`` with category ids ``label + 1``;
    ``COCOEvaluator.add_record`` numbers the images and annotations."""
    if pred.scores is None:
        raise ValueError(f"{image_id}: predictions need scores for COCO AP")
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
    gt_anns = []
    for k in range(len(gt)):  # pycocotools wants one dict per object
        ann = {"category_id": int(labels[k]) + 1, "bbox": gt_xywh[k], "area": float(areas[k]), "iscrowd": 0}
        if gt_rles[k] is not None:
            ann["segmentation"] = gt_rles[k]
        gt_anns.append(ann)
    scores, plabels = pred.scores.tolist(), pred.labels.tolist()
    dt: Dict[str, List[dict]] = {}
    if "bbox" in iou_types:
        dt["bbox"] = [{"category_id": int(plabels[k]) + 1, "bbox": box, "score": float(scores[k])}
                      for k, box in enumerate(_xywh(pred.boxes))]
    if "segm" in iou_types:
        if pred.masks is None:
            raise ValueError(f"{image_id}: predictions need masks for segm AP")
        dt["segm"] = [{"category_id": int(plabels[k]) + 1, "segmentation": rle, "score": float(scores[k])}
                      for k, rle in enumerate(masks_to_coco_rles(pred.masks))]
    return {"image_id": str(image_id), "size": tuple(int(v) for v in gt.image_size), "gt": gt_anns, "dt": dt}


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
        self.add_record(encode_image(image_id, pred, gt, self.iou_types))

    def add_record(self, record: dict) -> None:
        """Add one image encoded by ``encode_image`` (validation encodes on each rank and gathers)."""
        image_id = record["image_id"]
        if image_id in self._ids:
            raise ValueError(f"image {image_id!r} was already added")
        iid = len(self._ids) + 1
        self._ids[image_id] = iid
        H, W = record["size"]
        self.images.append({"id": iid, "height": H, "width": W, "file_name": str(image_id)})
        for ann in record["gt"]:
            self.gt_anns.append({**ann, "id": len(self.gt_anns) + 1, "image_id": iid})
        for t in self.iou_types:
            if t not in record["dt"]:
                raise ValueError(f"{image_id}: the record holds no {t} results (encoded for {sorted(record['dt'])})")
            self.dt[t].extend({**d, "image_id": iid} for d in record["dt"][t])

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


def _per_category_ap(ev: COCOeval) -> Dict[int, float]:
    """AP (IoU 0.50:0.95, all areas, the largest cap) of each category id of ``ev``."""
    prec = ev.eval["precision"]  # [T, R, K, A, M]
    out = {}
    for k, cat in enumerate(ev.params.catIds):
        x = prec[:, :, k, 0, -1]
        x = x[x > -1]
        out[int(cat)] = float(x.mean()) if x.size else -1.0
    return out


# ----------------------------------------------------------------------------- files
class CocoResultsError(UserError, ValueError):
    """A COCO results json that cannot be scored against its ground truth (the message names it)."""


def _read_results(path: str) -> List[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO results file not found: {path}")
    try:
        with open(path) as f:
            res = json.load(f)
    except json.JSONDecodeError as e:
        raise CocoResultsError(f"{path}: not valid json ({e})") from None
    if not isinstance(res, list):
        raise CocoResultsError(f"{path}: a COCO results file is a list of objects "
                               "(image_id, category_id, score, segmentation and/or bbox), got a "
                               f"{type(res).__name__}")
    for k, r in enumerate(res):
        missing = [key for key in ("image_id", "category_id", "score") if not isinstance(r, dict) or key not in r]
        if missing:
            raise CocoResultsError(f"{path}: result {k} has no {', '.join(missing)}")
    return res


def _gt_from_file(path: str) -> COCO:
    """The ground truth of a COCO json (LIVECell's dict-of-annotations copies too), with the
    ``iscrowd`` and ``area`` fields COCOeval needs filled in when a file leaves them out."""
    doc = load_coco_json(path)
    check_image_ids(doc, path)
    gt = COCO()
    gt.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    for ann in doc["annotations"]:  # one dict per object: the format
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(mask_utils.area(gt.annToRLE(ann))) if "segmentation" in ann else \
                float(ann["bbox"][2] * ann["bbox"][3])
    return gt


def evaluate_coco_files(results_path: str, gt_path: str, iou_types: Sequence[str] = ("segm", "bbox"),
                        max_dets: Sequence[int] = MAX_DETS) -> Dict[str, dict]:
    """Box and mask AP of a COCO results json against a COCO ground-truth json.

    Mask AP uses the results' masks and their areas (a result's ``bbox`` is left out for it, as
    detectron2 does, so that small/medium/large are judged by the mask area); box AP uses the
    results' ``bbox`` (or, without one, the box of the mask).

    Returns:
        ``{iou_type: {"AP", "AP50", ... (STAT_NAMES), "per_category": {name: AP}, "num_results": n}}``.
    Raises:
        CocoResultsError: results for images or categories the ground truth does not hold, or an
            IoU type the results cannot give (segm without segmentations), naming the file.
    """
    results = _read_results(results_path)
    gt = _gt_from_file(gt_path)
    img_ids, cat_ids = set(gt.getImgIds()), set(gt.getCatIds())
    bad_img = sorted({r["image_id"] for r in results} - img_ids, key=str)
    if bad_img:
        raise CocoResultsError(f"{results_path}: {len(bad_img)} image id(s) not in {gt_path}, e.g. {bad_img[:3]} "
                               "(predict.py --format coco --coco-gt GT.json takes the ids from it)")
    bad_cat = sorted({r["category_id"] for r in results} - cat_ids, key=str)
    if bad_cat:
        raise CocoResultsError(f"{results_path}: category id(s) {bad_cat[:5]} not in {gt_path} "
                               f"(its categories: {sorted(cat_ids)})")
    sizes = {i: [int(im["height"]), int(im["width"])] for i, im in gt.imgs.items() if "height" in im and "width" in im}
    for k, r in enumerate(results):
        seg = r.get("segmentation")
        if isinstance(seg, dict) and r["image_id"] in sizes and list(seg.get("size", [])) != sizes[r["image_id"]]:
            raise CocoResultsError(f"{results_path}: result {k}: its mask is {seg.get('size')} (height, width) but image "
                                   f"{r['image_id']} of {gt_path} is {sizes[r['image_id']]}")
    names = {c["id"]: str(c.get("name", c["id"])) for c in gt.loadCats(gt.getCatIds())}
    out = {}
    for t in iou_types:
        if t == "segm":
            if any("segmentation" not in r for r in results):
                raise CocoResultsError(f"{results_path}: segm AP needs a 'segmentation' in every result")
            dts = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        elif t == "bbox":
            if any("bbox" not in r and "segmentation" not in r for r in results):
                raise CocoResultsError(f"{results_path}: bbox AP needs a 'bbox' (or a 'segmentation') in every result")
            dts = [r if "bbox" in r else {**r, "bbox": mask_utils.toBbox(r["segmentation"]).tolist()} for r in results]
        else:
            raise ValueError(f"unknown iou type {t!r}; expected segm or bbox")
        if not dts:
            out[t] = {**{n: 0.0 for n in STAT_NAMES}, "per_category": {n: 0.0 for n in names.values()}, "num_results": 0}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes([dict(d) for d in dts])
            ev = COCOeval(gt, dt, iouType=t)
            ev.params.maxDets = [int(m) for m in max_dets]
            ev.evaluate()
            ev.accumulate()
        out[t] = {**_stats(ev), "per_category": {names[c]: v for c, v in _per_category_ap(ev).items()},
                  "num_results": len(dts)}
    return out


def format_coco_report(summary: Dict[str, dict], max_dets: Sequence[int] = MAX_DETS) -> List[str]:
    """Lines of a COCO AP table (values in percent, as detectron2 prints them; ``-`` = nothing to
    measure, e.g. no large objects), then AP per category when there are several."""
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", STAT_NAMES[8])  # STAT_NAMES[8]: recall at the largest cap
    heads = keys[:-1] + (f"AR{max_dets[-1]}",)
    lines = [f"{'':<6}" + "".join(f"{h:>8}" for h in heads)]
    for t, s in summary.items():
        lines.append(f"{t:<6}" + "".join(f"{100 * s[k]:8.2f}" if s[k] >= 0 else f"{'-':>8}" for k in keys))
    for t, s in summary.items():
        per = s.get("per_category") or {}
        if len(per) > 1:
            lines.append(f"{t} AP per category: " + "  ".join(f"{n} {100 * v:.2f}" if v >= 0 else f"{n} -"
                                                               for n, v in per.items()))
    return lines
