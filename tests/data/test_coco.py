import contextlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.data.coco_dataset import CocoDataset
from maskrcnn.formats.coco_json import CocoFormatError

# pycocotools' own numpy-2 notice (decode of a single RLE in the reference masks below).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _doc(coco_dir):
    return json.loads((coco_dir / "annotations.json").read_text())


def test_rle_layout_reads_back_what_synthetic_wrote(coco_dir, synth):
    ds = CocoDataset(str(coco_dir / "annotations.json"), str(coco_dir / "images"))
    assert ds.class_names == synth.class_names
    for i in range(len(ds)):
        a, b = ds.load(i), synth.load(i)
        assert torch.equal(a.image, b.image)
        assert torch.equal(a.instances.masks.to_dense(), b.instances.masks.to_dense())
        assert torch.equal(a.instances.labels, b.instances.labels)
        assert torch.equal(a.instances.boxes, b.instances.boxes)


def _random_polygons(rng, n, H, W):
    out = []
    for k in range(n):
        cx, cy = rng.uniform(-4, W + 4), rng.uniform(-4, H + 4)
        m = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, m))
        r = rng.uniform(0.7, 9, m)
        poly = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1).reshape(-1).tolist()
        segs = [poly] if k % 4 else [poly, (np.asarray(poly) + 5).tolist()]  # some with two parts
        out.append(segs)
    return out


def test_livecell_quirks_polygons_dict_annotations_tif_and_type_folder(tmp_path):
    """Annotations as a dict keyed by id, file_name without folder, image in <type>/, 8-bit tif."""
    H, W = 30, 40
    rng = np.random.default_rng(3)
    (tmp_path / "imgs" / "A172").mkdir(parents=True)
    arr = rng.integers(0, 256, (H, W), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "imgs" / "A172" / "A172_Phase_C7_1_00d00h00m_1.tif")
    polys = _random_polygons(rng, 25, H, W)
    anns = {str(k + 1): {"id": k + 1, "image_id": 7, "category_id": 1, "segmentation": p, "iscrowd": 0,
                         "area": 1.0, "bbox": [0, 0, 1, 1]} for k, p in enumerate(polys)}
    anns["99"] = {"id": 99, "image_id": 7, "category_id": 1, "segmentation": polys[0], "iscrowd": 1}
    doc = {"images": [{"id": 7, "file_name": "A172_Phase_C7_1_00d00h00m_1.tif", "height": H, "width": W}],
           "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    ds = CocoDataset(str(tmp_path / "ann.json"), str(tmp_path / "imgs"))
    assert ds.image_ids == ["A172_Phase_C7_1_00d00h00m_1"] and ds.strata() == ["A172"]
    with pytest.warns(UserWarning) if _any_empty(polys, H, W) else contextlib.nullcontext():
        s = ds.load(0)
    assert torch.equal(s.image[0], torch.from_numpy(arr).float() / 255)
    ref = [mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(p, H, W))).astype(bool) for p in polys]
    ref = torch.from_numpy(np.stack([r for r in ref if r.any()]))
    assert torch.equal(s.instances.masks.to_dense(), ref)  # crop rasterisation == full-image rasterisation
    assert torch.equal(s.instances.boxes, s.instances.masks.tight_boxes())
    assert s.meta["num_crowd"] == 1 and s.meta["cell_type"] == "A172"


def _any_empty(polys, H, W):
    return any(not mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(p, H, W))).any() for p in polys)


def test_uncompressed_rle_and_image_without_annotations(tmp_path, coco_dir):
    d = tmp_path / "c"
    shutil.copytree(coco_dir, d)
    doc = _doc(d)
    m = np.zeros((64, 80), dtype=bool)
    m[10:14, 20:30] = True
    counts = []  # uncompressed column-major counts, starting with background
    flat = m.T.reshape(-1)
    edges = np.flatnonzero(np.diff(np.r_[False, flat, False].astype(int)))
    prev = 0
    for a, b in zip(edges[0::2], edges[1::2]):
        counts += [int(a - prev), int(b - a)]
        prev = b
    counts.append(int(flat.size - prev))
    first = doc["images"][0]["id"]
    doc["annotations"] = [{"id": 1, "image_id": first, "category_id": 2, "iscrowd": 0,
                           "segmentation": {"size": [64, 80], "counts": counts}}]
    (d / "annotations.json").write_text(json.dumps(doc))
    ds = CocoDataset(str(d / "annotations.json"), str(d / "images"))
    s = ds.load(0)
    assert torch.equal(s.instances.masks.to_dense()[0], torch.from_numpy(m))
    assert s.instances.labels.tolist() == [1]
    empty = ds.load(1)
    assert len(empty.instances) == 0 and empty.instances.masks is not None


def test_bad_coco_inputs_are_named(tmp_path, coco_dir):
    d = tmp_path / "c"
    shutil.copytree(coco_dir, d)
    doc = _doc(d)
    bad = json.loads(json.dumps(doc))
    bad["annotations"][0]["category_id"] = 42
    (d / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CocoFormatError, match=r"annotation 1 has unknown category 42"):
        CocoDataset(str(d / "bad.json"), str(d / "images"))
    bad = json.loads(json.dumps(doc))
    bad["images"][0]["width"] = 81
    (d / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CocoFormatError, match=r"is 80x64 \(WxH\) but .* image 1 says 81x64"):
        CocoDataset(str(d / "bad.json"), str(d / "images")).load(0)
    bad = json.loads(json.dumps(doc))
    bad["annotations"][0]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]
    (d / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CocoFormatError, match="annotation 1: a polygon needs"):
        CocoDataset(str(d / "bad.json"), str(d / "images")).load(0)
    (d / "images" / doc["images"][2]["file_name"]).unlink()
    with pytest.raises(FileNotFoundError, match=doc["images"][2]["file_name"]):
        CocoDataset(str(d / "annotations.json"), str(d / "images")).load(2)
    (d / "broken.json").write_text("{not json")
    with pytest.raises(CocoFormatError, match="broken.json: not valid json"):
        CocoDataset(str(d / "broken.json"), str(d / "images"))


def test_mixed_polygon_rle_and_crowd_annotations_keep_file_order(tmp_path):
    """Annotations parse into flat arrays as the json loads; masks and labels still come in file order."""
    H, W = 24, 32
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "imgs" / "b.png")
    dense_rle = np.zeros((H, W), np.uint8, order="F")
    dense_rle[3:9, 20:27] = 1
    rle = mask_utils.encode(dense_rle)
    rle["counts"] = rle["counts"].decode()
    p1 = [[2.0, 2.0, 10.0, 2.0, 10.0, 8.0, 2.0, 8.0]]
    p2 = [[12.5, 12.5, 18.0, 12.5, 15.0, 20.0], [1.0, 15.0, 5.0, 15.0, 5.0, 22.0]]  # two parts
    anns = [
        {"id": 5, "image_id": 2, "category_id": 1, "segmentation": p1, "iscrowd": 0},
        {"id": 6, "image_id": 1, "category_id": 2, "segmentation": p1, "iscrowd": 0},  # the other image
        {"id": 7, "image_id": 2, "category_id": 2, "segmentation": rle, "iscrowd": 0},
        {"id": 8, "image_id": 2, "category_id": 1, "segmentation": p2, "iscrowd": 1},  # crowd: not an object
        {"id": 9, "image_id": 2, "category_id": 2, "segmentation": p2, "iscrowd": 0},
    ]
    doc = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                      {"id": 2, "file_name": "b.png", "height": H, "width": W}],
           "annotations": anns, "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    ds = CocoDataset(str(tmp_path / "ann.json"), str(tmp_path / "imgs"))
    s = ds.load(1)
    assert s.instances.labels.tolist() == [0, 1, 1] and s.meta["num_crowd"] == 1
    want = [mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(p1, H, W))),
            dense_rle,
            mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(p2, H, W)))]
    got = s.instances.masks.to_dense()
    for k in range(3):
        assert torch.equal(got[k], torch.from_numpy(want[k].astype(bool))), k
    assert ds.load(0).instances.labels.tolist() == [1]
    doc["annotations"].append({"id": 10, "image_id": 3, "category_id": 1, "segmentation": p1})
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(CocoFormatError, match="annotation 10 refers to unknown image 3"):
        CocoDataset(str(tmp_path / "bad.json"), str(tmp_path / "imgs"))
