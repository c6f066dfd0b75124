"""COCO boxes and masks scored by an independent consumer (pycocotools) on *imperfect* predictions,
against AP worked out by hand. On exact matches a box written as xyxy instead of xywh can still
score 1; on shifted boxes it cannot.

The case: one 100 x 100 image, two 20 x 20 GT squares A = (0, 0)-(20, 20) and B = (50, 50)-(70, 70),
two predicted squares A' shifted 2 px right (IoU 360 / 440 = 0.818, score 0.9) and B' shifted 4 px
right (IoU 320 / 480 = 0.667, score 0.8). Over the ten IoU thresholds 0.50:0.05:0.95 (a match at
IoU >= t): both match at 0.50-0.65 (AP 1), only A' (the first ranked) at 0.70-0.80 (precision 1 up
to recall 0.5: 51 of the 101 recall points, AP 51/101), none at 0.85-0.95. AP = (4 + 3 * 51/101) / 10,
AP50 = 1, AP75 = 51/101. The masks are the same squares, so mask AP equals box AP.
"""
import contextlib
import io
import json

import numpy as np
import pytest
import torch

from maskrcnn.evaluation.coco_ap import COCOEvaluator
from maskrcnn.inference.outputs import build_writer
from maskrcnn.structures import Instances, MaskList

torch.set_num_threads(1)

AP = (4 + 3 * 51 / 101) / 10
AP50, AP75 = 1.0, 51 / 101


def _squares(boxes, scores=None):
    dense = torch.zeros(len(boxes), 100, 100, dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        dense[k, y0:y1, x0:x1] = True
    masks = MaskList.from_dense(dense)
    sc = None if scores is None else torch.tensor(scores)
    return Instances((100, 100), torch.tensor(boxes, dtype=torch.float32), torch.zeros(len(boxes), dtype=torch.long), sc, masks)


GT = [(0, 0, 20, 20), (50, 50, 70, 70)]
PRED = [(2, 0, 22, 20), (54, 50, 74, 70)]


def test_validation_coco_ap_on_shifted_boxes_by_hand():
    ev = COCOEvaluator(num_classes=1)
    ev.add("im", _squares(PRED, [0.9, 0.8]), _squares(GT))
    s = ev.summary()
    for t in ("bbox", "segm"):
        assert s[t]["AP"] == pytest.approx(AP, abs=1e-4), t
        assert s[t]["AP50"] == pytest.approx(AP50, abs=1e-4) and s[t]["AP75"] == pytest.approx(AP75, abs=1e-4), t


def test_written_coco_results_scored_by_pycocotools_by_hand(tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    writer = build_writer("coco", str(tmp_path / "res.json"), None, ["/x/im.png"], ["im"], num_classes=1)
    writer.add("im", _squares(PRED, [0.9, 0.8]))
    writer.finish()
    res = json.loads((tmp_path / "res.json").read_text())
    assert sorted(r["bbox"] for r in res) == [[2, 0, 20, 20], [54, 50, 20, 20]]  # x, y, width, height
    anns = []
    for k, (x0, y0, x1, y1) in enumerate(GT):
        rle = mask_utils.encode(np.asfortranarray(_squares([GT[k]]).masks.to_dense()[0].numpy().astype(np.uint8)))
        anns.append({"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": 400,
                     "iscrowd": 0, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    (tmp_path / "gt.json").write_text(json.dumps({"images": [{"id": 1, "height": 100, "width": 100}], "annotations": anns,
                                                  "categories": [{"id": 1, "name": "cell"}]}))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "gt.json"))
        dt = gt.loadRes(str(tmp_path / "res.json"))
        for t in ("bbox", "segm"):
            ev = COCOeval(gt, dt, iouType=t)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            assert ev.stats[0] == pytest.approx(AP, abs=1e-4), t
            assert ev.stats[1] == pytest.approx(AP50, abs=1e-4) and ev.stats[2] == pytest.approx(AP75, abs=1e-4), t
