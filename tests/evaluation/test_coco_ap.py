import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from maskrcnn.evaluation.coco_ap import COCOEvaluator, masks_to_coco_rles
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


# ------------------------------------------------------------------------------ files
def _gt_json(path, cells, dict_annotations=False, drop_fields=False):
    """One image "img.png" (id 3) with ``cells`` [N, H, W] as category 5 ("cell")."""
    import json

    H, W = cells.shape[1:]
    anns = []
    for k, rle in enumerate(mask_utils.encode(np.asfortranarray(cells.transpose(1, 2, 0).astype(np.uint8)))):
        a = {"id": k + 1, "image_id": 3, "category_id": 5,
             "segmentation": {"size": [H, W], "counts": rle["counts"].decode()},
             "bbox": mask_utils.toBbox(rle).tolist(), "area": float(cells[k].sum()), "iscrowd": 0}
        if drop_fields:
            del a["area"], a["iscrowd"]
        anns.append(a)
    doc = {"images": [{"id": 3, "file_name": "img.png", "height": H, "width": W}],
           "annotations": {str(a["id"]): a for a in anns} if dict_annotations else anns,
           "categories": [{"id": 5, "name": "cell"}]}
    path.write_text(json.dumps(doc))
    return str(path)


def _results_json(path, cells, image_id=3, category_id=5, boxes=None):
    import json

    res = []
    for k, rle in enumerate(mask_utils.encode(np.asfortranarray(cells.transpose(1, 2, 0).astype(np.uint8)))):
        r = {"image_id": image_id, "category_id": category_id, "score": 1.0 - 0.01 * k,
             "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()}}
        if boxes is not None:
            r["bbox"] = boxes[k]
        res.append(r)
    path.write_text(json.dumps(res))
    return str(path)


@pytest.mark.parametrize("dict_annotations, drop_fields", [(False, False), (True, True)])
def test_evaluate_coco_files_half_found(tmp_path, dict_annotations, drop_fields):
    from maskrcnn.evaluation.coco_ap import evaluate_coco_files

    rng = np.random.default_rng(3)
    cells = random_blobs(rng, 6, 48, 48, rmin=3, rmax=6, overlap=False)
    cells = cells[cells.reshape(6, -1).any(1)][:4]
    gt = _gt_json(tmp_path / "gt.json", cells, dict_annotations, drop_fields)  # LIVECell keeps a dict; fields filled
    res = _results_json(tmp_path / "res.json", cells[:2])  # half of the cells, exactly
    s = evaluate_coco_files(res, gt)
    # precision 1 up to recall 0.5, none beyond: 51 of COCO's 101 recall points
    assert s["segm"]["AP"] == pytest.approx(51 / 101) and s["bbox"]["AP"] == pytest.approx(51 / 101)
    assert s["segm"]["AR1000"] == pytest.approx(0.5) and s["segm"]["num_results"] == 2


def test_mask_ap_uses_the_mask_area_not_the_box(tmp_path):
    import json

    from maskrcnn.evaluation.coco_ap import evaluate_coco_files

    cells = np.zeros((1, 200, 200), bool)
    cells[0, 10:20, 10:20] = True  # a small object (area 100 < 32^2)
    gt = _gt_json(tmp_path / "gt.json", cells)
    fp = np.zeros((1, 200, 200), bool)
    fp[0, 100:110, 100:110] = True  # a small false positive, ranked first, with the box of a large object
    both = np.concatenate([fp, cells])
    res = json.loads(open(_results_json(tmp_path / "res.json", both)).read())
    res[0]["bbox"] = [0, 0, 150, 150]
    (tmp_path / "res.json").write_text(json.dumps(res))
    s = evaluate_coco_files(str(tmp_path / "res.json"), gt)
    # By its mask the false positive is small: it counts among the small objects, before the true
    # one: precision 1/2 at recall 1 (AP 0.5). By its box it would be large and ignored there (AP 1).
    assert s["segm"]["APs"] == pytest.approx(0.5) and s["segm"]["AP"] == pytest.approx(0.5)


def test_evaluate_coco_files_errors_name_the_file(tmp_path):
    from maskrcnn.evaluation.coco_ap import CocoResultsError, evaluate_coco_files

    cells = np.zeros((1, 20, 20), bool)
    cells[0, 2:8, 2:8] = True
    gt = _gt_json(tmp_path / "gt.json", cells)
    with pytest.raises(CocoResultsError, match="1 image id.* not in .*gt.json"):
        evaluate_coco_files(_results_json(tmp_path / "a.json", cells, image_id=4), gt)
    with pytest.raises(CocoResultsError, match=r"category id\(s\) \[1\]"):
        evaluate_coco_files(_results_json(tmp_path / "b.json", cells, category_id=1), gt)
    (tmp_path / "c.json").write_text('{"annotations": []}')
    with pytest.raises(CocoResultsError, match="c.json: a COCO results file is a list"):
        evaluate_coco_files(str(tmp_path / "c.json"), gt)
    (tmp_path / "d.json").write_text("[]")
    assert evaluate_coco_files(str(tmp_path / "d.json"), gt)["segm"]["AP"] == 0.0


def test_evaluate_py_coco_prints_the_table(tmp_path, capsys):
    import evaluate

    cells = np.zeros((2, 30, 30), bool)
    cells[0, 2:8, 2:8] = True
    cells[1, 12:20, 12:25] = True
    gt = _gt_json(tmp_path / "gt.json", cells)
    assert evaluate.main(["coco", "--predictions", _results_json(tmp_path / "r.json", cells), "--labels", gt]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1000"]
    assert out[1].split()[:4] == ["segm", "100.00", "100.00", "100.00"] and out[2].startswith("bbox")
    assert evaluate.main(["coco", "--predictions", str(tmp_path / "none.json"), "--labels", gt]) == 2
    assert "none.json" in capsys.readouterr().err


def test_evaluate_coco_files_refuses_masks_of_another_size(tmp_path):
    from maskrcnn.evaluation.coco_ap import CocoResultsError, evaluate_coco_files

    cells = np.zeros((1, 20, 20), bool)
    cells[0, 2:8, 2:8] = True
    gt = _gt_json(tmp_path / "gt.json", cells)
    other = np.zeros((1, 20, 24), bool)
    other[0, 2:8, 2:8] = True
    with pytest.raises(CocoResultsError, match=r"result 0: its mask is \[20, 24\].*is \[20, 20\]"):
        evaluate_coco_files(_results_json(tmp_path / "r.json", other), gt)
