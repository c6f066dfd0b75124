"""predict.py's output formats (maskrcnn/inference/outputs.py) and the DSB2018 folder layout."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.config import TestConfig as Cfg
from maskrcnn.evaluation.coco_ap import evaluate_coco_files
from maskrcnn.evaluation.score import score_files
from maskrcnn.formats.kaggle_csv import csv_kind, order_for, read_submission
from maskrcnn.formats.label_images import LabelImageError, read_label_image, to_label_image
from maskrcnn.formats.rle import decode
from maskrcnn.inference.outputs import OutputError, build_writer, coco_category_ids, coco_image_ids
from maskrcnn.inference.predict_run import image_ids, list_images, predict_images, write_predictions
from maskrcnn.inference.predictor import Predictor
from maskrcnn.structures import Instances, MaskList
from tests.inference.stub_model import IdStubModel, draw_objects, random_blobs

SPECS = {"a1": random_blobs(9, 40, 52, seed=1), "b2": random_blobs(5, 36, 30, seed=2),
         "c3": torch.zeros((0, 24, 20), dtype=torch.bool)}


def _dsb_folder(root, specs=None):
    """SPECS as a DSB2018 folder: <id>/images/<id>.png (objects drawn as k/255) and <id>/masks/."""
    for name, masks in (specs or SPECS).items():
        os.makedirs(root / name / "images")
        os.makedirs(root / name / "masks")
        ids = (draw_objects(masks)[0] * 255).round().numpy().astype(np.uint8)
        Image.fromarray(ids).save(root / name / "images" / f"{name}.png")
        for k in range(masks.shape[0]):
            Image.fromarray(masks[k].numpy().astype(np.uint8) * 255).save(root / name / "masks" / f"m{k}.png")
    return str(root)


def _predict(folder, writer):
    paths = list_images(folder)
    pred = Predictor(IdStubModel(num_classes=1), device="cpu")
    return write_predictions(predict_images(pred, paths, Cfg(score_thresh=(0.0,)), progress=False), "", writer=writer)


def _same_objects(found: torch.Tensor, expected: torch.Tensor) -> bool:
    """Both bool [N, H, W] hold the same set of masks."""
    if found.shape != expected.shape:
        return False
    match = (found[:, None] == expected[None]).flatten(2).all(2)
    return match.sum(0).tolist() == [1] * expected.shape[0] and match.sum(1).tolist() == [1] * expected.shape[0]


# ---------------------------------------------------------------------------- layouts
def test_list_images_takes_flat_and_dsb_folders(tmp_path):
    folder = _dsb_folder(tmp_path / "dsb")
    paths = list_images(folder)
    assert image_ids(paths) == ["a1", "b2", "c3"]
    assert paths[0] == os.path.join(folder, "a1", "images", "a1.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "x.png")  # a flat file wins over subfolders
    assert image_ids(list_images(str(tmp_path))) == ["x"]


def test_list_images_of_the_real_dsb2018_training_folder():
    root = "/work/shared/data/dsb2018/stage1_train"
    if not os.path.isdir(root):
        pytest.skip("DSB2018 data not present")
    paths = list_images(root)
    assert len(paths) == 664 and image_ids(paths) == sorted(os.listdir(root))


# ----------------------------------------------------------------------- label images
def test_label_image_by_hand():
    dense = torch.zeros((3, 6, 7), dtype=torch.bool)
    dense[0, 1:3, 1:4] = True  # best score: label 1
    dense[1, 2:5, 3:6] = True  # overlaps mask 0 at (2, 3): mask 0 keeps that pixel
    dense[2, 1:3, 1:3] = True  # entirely under mask 0: dropped, no label 3
    m = MaskList.from_dense(dense)
    inst = Instances((6, 7), m.tight_boxes(), torch.zeros(3, dtype=torch.long), torch.tensor([0.9, 0.8, 0.7]), m)
    expect = np.zeros((6, 7), np.uint16)
    expect[2:5, 3:6] = 2
    expect[1:3, 1:4] = 1
    got = to_label_image(inst)
    assert got.dtype == np.uint16 and np.array_equal(got, expect)
    empty = Instances.empty((4, 5), with_scores=True, with_masks=True)
    assert np.array_equal(to_label_image(empty), np.zeros((4, 5), np.uint16))


def test_labels_format_writes_16_bit_pngs_that_read_back(tmp_path):
    folder = _dsb_folder(tmp_path / "dsb")
    writer = build_writer("labels", str(tmp_path / "labels"), None, list_images(folder), ["a1", "b2", "c3"])
    _predict(folder, writer)
    assert writer.written == f"3 label images in {tmp_path / 'labels'}/"
    for name, masks in SPECS.items():
        im = Image.open(tmp_path / "labels" / f"{name}.png")
        assert im.mode == "I;16" and im.size == (masks.shape[2], masks.shape[1])
        a = np.asarray(im)
        assert a.dtype == np.uint16 and sorted(np.unique(a)) == list(range(masks.shape[0] + 1))
        assert _same_objects(torch.from_numpy(np.stack([a == k for k in range(1, masks.shape[0] + 1)]))
                             if masks.shape[0] else torch.zeros_like(masks), masks)
        back = read_label_image(str(tmp_path / "labels" / f"{name}.png"))
        assert _same_objects(back.to_dense() if len(back) else torch.zeros_like(masks), masks)


def test_labels_never_overwrite_the_input_images(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(OutputError, match="overwrite the input"):
        build_writer("labels", str(tmp_path), None, [str(tmp_path / "x.png")], ["x"])
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputError, match="is a file"):
        build_writer("labels", str(tmp_path / "f"))


def test_too_many_objects_for_16_bits():
    n = 65536
    crops = torch.ones((n, 1, 1), dtype=torch.bool)
    origins = torch.stack([torch.arange(n) % 300, torch.arange(n) // 300], 1)
    m = MaskList(crops, origins, (300, 300))
    inst = Instances((300, 300), m.tight_boxes(), torch.zeros(n, dtype=torch.long), torch.ones(n), m)
    with pytest.raises(LabelImageError, match="16-bit"):
        to_label_image(inst)


# ------------------------------------------------------------------------------ DSB CSV
def test_dsb_format_is_column_major_with_the_dsb_header_and_scores_one(tmp_path):
    folder = _dsb_folder(tmp_path / "dsb")
    out = tmp_path / "sub.csv"
    _predict(folder, build_writer("dsb", str(out)))
    assert out.read_text().splitlines()[0] == "ImageId,EncodedPixels"
    assert csv_kind(str(out)) == "dsb" and order_for([str(out)]) == "col"
    rows = read_submission(str(out))
    for name, masks in SPECS.items():
        rles = [r.rle for r in rows if r.image_id == name]
        if masks.shape[0] == 0:
            assert rles == [""]
            continue
        got = torch.from_numpy(np.stack([decode(r, *masks.shape[1:], order="col") for r in rles]))
        assert _same_objects(got, masks)
    # DSB2018's own solution header; `evaluate.py score --order auto` reads both as column-major
    labels = tmp_path / "solution.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "EncodedPixels", "Height", "Width", "Usage"])
        for name, masks in SPECS.items():
            for k in range(masks.shape[0]):
                w.writerow([name, _col_rle(masks[k].numpy()), masks.shape[1], masks.shape[2], "Public"])
            if masks.shape[0] == 0:
                w.writerow([name, "", masks.shape[1], masks.shape[2], "Public"])
    result = score_files(str(out), str(labels), order=order_for([str(out), str(labels)]))
    assert not result.errors and result.per_image == {"a1": 1.0, "b2": 1.0, "c3": 1.0}  # c3: nothing, rightly
    sartorius = tmp_path / "train.csv"
    sartorius.write_text("id,annotation,width,height\na1,1 2,52,40\n")
    with pytest.raises(Exception, match="mix DSB2018 and Sartorius headers"):
        order_for([str(out), str(sartorius)])
    assert order_for([str(out), str(sartorius)], "row") == "row"


def _col_rle(m):
    from maskrcnn.formats.rle import encode

    return encode(m, order="col")


def test_writer_option_errors():
    with pytest.raises(OutputError, match="column-major"):
        build_writer("dsb", "x.csv", "row")
    with pytest.raises(OutputError, match="--coco-gt"):
        build_writer("csv", "x.csv", None, coco_gt="gt.json")
    assert build_writer("dsb", "x.csv", "col").order == "col"


# ------------------------------------------------------------------------------- COCO
def _coco_gt(path, id_of, extra_image=True, specs=None):
    """A COCO json of SPECS: image ids from ``id_of``, file names <id>.png, one category."""
    from pycocotools import mask as mask_utils

    images, anns = [], []
    for name, masks in (specs or SPECS).items():
        H, W = masks.shape[1:]
        images.append({"id": id_of[name], "file_name": f"sub/{name}.png", "height": H, "width": W})
        for k in range(masks.shape[0]):
            rle = mask_utils.encode(np.asfortranarray(masks[k].numpy().astype(np.uint8)))
            x0, y0, w, h = mask_utils.toBbox(rle).tolist()
            anns.append({"id": len(anns) + 1, "image_id": id_of[name], "category_id": 7, "iscrowd": 0,
                         "segmentation": {"size": [H, W], "counts": rle["counts"].decode()},
                         "area": float(masks[k].sum()), "bbox": [x0, y0, w, h]})
    if extra_image:
        images.append({"id": 999, "file_name": "not_predicted.png", "height": 8, "width": 8})
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 7, "name": "nucleus"}]}))
    return str(path)


def test_coco_results_with_ids_from_a_coco_json_score_one(tmp_path):
    folder = _dsb_folder(tmp_path / "dsb")
    paths = list_images(folder)
    gt = _coco_gt(tmp_path / "gt.json", {"a1": 42, "b2": 5, "c3": 17})
    writer = build_writer("coco", str(tmp_path / "res.json"), None, paths, image_ids(paths), coco_gt=gt,
                          class_names=["nucleus"], num_classes=1)
    _predict(folder, writer)
    res = json.loads((tmp_path / "res.json").read_text())
    assert {r["image_id"] for r in res} == {42, 5} and {r["category_id"] for r in res} == {7}
    assert len(res) == 9 + 5 and set(res[0]) == {"image_id", "category_id", "segmentation", "bbox", "score"}
    s = evaluate_coco_files(str(tmp_path / "res.json"), gt)
    assert s["segm"]["AP"] == pytest.approx(1.0) and s["bbox"]["AP"] == pytest.approx(1.0)
    # COCO.loadRes itself accepts the file (what detectron2 and pycocotools users call)
    from pycocotools.coco import COCO

    coco = COCO(gt)
    assert len(coco.loadRes(str(tmp_path / "res.json")).getAnnIds()) == 14


def test_coco_results_with_sequential_ids(tmp_path):
    folder = _dsb_folder(tmp_path / "dsb")
    paths = list_images(folder)
    writer = build_writer("coco", str(tmp_path / "res.json"), None, paths, image_ids(paths), num_classes=1)
    _predict(folder, writer)
    res = json.loads((tmp_path / "res.json").read_text())
    assert {r["image_id"] for r in res} == {1, 2} and {r["category_id"] for r in res} == {1}
    gt = _coco_gt(tmp_path / "gt.json", {"a1": 1, "b2": 2, "c3": 3}, extra_image=False)
    with pytest.raises(Exception, match="category id"):  # category 1 is not the json's 7
        evaluate_coco_files(str(tmp_path / "res.json"), gt)


def test_coco_id_mapping_errors(tmp_path):
    gt = _coco_gt(tmp_path / "gt.json", {"a1": 1, "b2": 2, "c3": 3})
    with pytest.raises(OutputError, match="no image with the file name of 1 input"):
        coco_image_ids(gt, ["/x/a1.png", "/x/zz.tif"], ["a1", "zz"])
    assert coco_image_ids(gt, ["/x/a1.tif"], ["a1"]) == {"a1": 1}  # the id matches the name without suffix
    assert coco_category_ids(gt, ["nucleus"], 1) == [7]
    assert coco_category_ids(gt, ["cell"], 1) == [7]  # by position: one category, one class
    with pytest.raises(OutputError, match="cannot map the model's 3 class"):
        coco_category_ids(gt, ["a", "b", "c"], 3)


def test_predict_py_formats_on_a_dsb_folder_with_a_tiny_real_model(tmp_path, capsys):
    from maskrcnn.config import load_config, to_dict
    from maskrcnn.cli.predict import main
    from maskrcnn.model import build_model
    from tests.inference.stub_model import TINY_MODEL

    (tmp_path / "tiny.yaml").write_text(TINY_MODEL.replace("num_classes: 3", "num_classes: 1"))
    cfg = load_config(str(tmp_path / "tiny.yaml"))
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg.model, load_weights=False, verbose=False).state_dict(), "config": to_dict(cfg)},
               tmp_path / "tiny.pth")
    # (images over 32 px: the GroupNorm backbone needs more than one pixel at stride 32)
    specs = {"a1": random_blobs(9, 48, 52, seed=1), "b2": random_blobs(5, 40, 36, seed=2),
             "c3": torch.zeros((0, 40, 40), dtype=torch.bool)}
    folder = _dsb_folder(tmp_path / "dsb", specs)
    common = ["--weights", str(tmp_path / "tiny.pth"), "--images", folder, "--device", "cpu", "--no-progress",
              "--amp", "none"]
    assert main(common + ["--format", "labels", "--out", str(tmp_path / "labels")]) == 0
    captured = capsys.readouterr()
    assert "wrote 3 label images" in captured.out and "predict: 3/3 img (100%)" in captured.err
    for name, masks in specs.items():
        im = Image.open(tmp_path / "labels" / f"{name}.png")
        assert im.mode == "I;16" and im.size == (masks.shape[2], masks.shape[1])
    gt = _coco_gt(tmp_path / "gt.json", {"a1": 11, "b2": 12, "c3": 13}, specs=specs)
    assert main(common + ["--format", "coco", "--coco-gt", gt, "--out", str(tmp_path / "res.json")]) == 0
    res = json.loads((tmp_path / "res.json").read_text())
    assert {r["image_id"] for r in res} <= {11, 12, 13} and {r["category_id"] for r in res} <= {7}
    capsys.readouterr()
    import evaluate

    assert evaluate.main(["coco", "--predictions", str(tmp_path / "res.json"), "--labels", gt]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("segm")
    # an input the COCO json does not hold is an error before any prediction
    bad = _coco_gt(tmp_path / "bad.json", {"a1": 1, "b2": 2, "c3": 3}, extra_image=False, specs=specs)
    doc = json.loads(open(bad).read())
    doc["images"] = doc["images"][:2]
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    assert main(common + ["--format", "coco", "--coco-gt", bad, "--out", str(tmp_path / "r2.json")]) == 2
    err = capsys.readouterr().err
    assert "c3.png" in err and "predict:" not in err and not (tmp_path / "r2.json").exists()
