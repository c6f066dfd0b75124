import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from maskrcnn.evaluation.coco import COCOEvaluator, masks_to_coco_rles
from maskrcnn.structures import Instances, MaskList
from tests.evaluation.shapes import dense, random_blobs


def as_instances(masks: MaskList, scores=None, boxes=None):
    n = len(masks)
    return Instances(masks.image_size, masks.tight_boxes() if boxes is None else boxes,
                     torch.zeros(n, dtype=torch.long), scores, masks)


def test_rles_equal_pycocotools_encode_of_dense_masks():
    rng = np.random.default_rng(0)
    m = rng.random((5, 11, 19)) < 0.4
    m[1] = False
    m[2, -1, -1] = True  # a run that reaches the last pixel
    m[3, 0, 0] = True  # a run that starts at the first pixel
    ours = masks_to_coco_rles(dense(m))
    ref = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))
    assert [r["counts"] for r in ours] == [r["counts"] for r in ref]
    assert all(r["size"] == [11, 19] for r in ours)


def test_perfect_predictions_and_a_thousand_detection_cap():
    # 150 separate cells in one image: COCO's default cap of 100 detections would lose a third.
    H, W = 60, 100
    cells = np.zeros((150, H, W), dtype=bool)
    for k in range(150):
        y, x = divmod(k, 25)
        cells[k, 10 * y:10 * y + 6, 4 * x:4 * x + 3] = True
    gt = as_instances(dense(cells))
    pred = as_instances(dense(cells), scores=torch.linspace(1, 0.5, 150))
    ev = COCOEvaluator(num_classes=1)
    ev.add("img", pred, gt)
    s = ev.summary()
    assert s["segm"]["AP"] == pytest.approx(1.0)
    assert s["bbox"]["AP"] == pytest.approx(1.0)
    assert s["segm"]["AR100"] == pytest.approx(100 / 150)  # the cap is really applied per level


def test_box_ap_uses_predicted_boxes_not_mask_boxes():
    rng = np.random.default_rng(1)
    cells = random_blobs(rng, 8, 64, 64, rmin=4, rmax=8, overlap=False)
    cells = cells[cells.reshape(8, -1).any(1)]
    masks = dense(cells)
    far = masks.tight_boxes() + 200.0  # boxes nowhere near the objects
    ev = COCOEvaluator()
    ev.add("img", as_instances(masks, scores=torch.ones(len(masks)), boxes=far), as_instances(masks))
    s = ev.summary()
    assert s["segm"]["AP"] == pytest.approx(1.0)
    assert s["bbox"]["AP"] == pytest.approx(0.0)


def test_missing_predictions_and_errors():
    masks = dense(np.pad(np.ones((1, 4, 4), bool), ((0, 0), (2, 2), (2, 2))))
    ev = COCOEvaluator()
    ev.add("a", as_instances(MaskList.empty((8, 8)), scores=torch.zeros(0)), as_instances(masks))
    assert ev.summary()["segm"]["AP"] == 0.0
    with pytest.raises(ValueError, match="already"):
        ev.add("a", as_instances(masks, scores=torch.ones(1)), as_instances(masks))
    with pytest.raises(ValueError, match="scores"):
        ev.add("b", as_instances(masks), as_instances(masks))
