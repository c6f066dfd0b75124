"""Images next to label images (maskrcnn/data/label_folders.py): both layouts, the file kinds, the errors."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.config import DataConfig
from maskrcnn.data.label_folders import LabelFolderDataset, LabelFolderError
from maskrcnn.data.loader import build_dataset, build_reader
from maskrcnn.formats.label_images import masks_from_label_array


def _labels(h, w, seed):
    """A label image with a few rectangles of ids 3, 7, 300 (gaps in the numbering on purpose)."""
    rng = np.random.default_rng(seed)
    a = np.zeros((h, w), np.uint16)
    for v in (3, 7, 300):
        y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
        a[y:y + 5, x:x + 4] = v
    return a


def _objects(sample):
    """{frozenset of (y, x)} of a Sample's masks."""
    d = sample.instances.masks.to_dense()
    return {frozenset(map(tuple, torch.nonzero(m).tolist())) for m in d}


def _expected(a):
    return {frozenset(map(tuple, np.argwhere(a == v).tolist())) for v in np.unique(a) if v}


def test_stardist_layout_with_16_bit_tiff_and_8_bit_png_labels(tmp_path):
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "masks")
    a, b = _labels(20, 24, 0), _labels(18, 16, 1)
    Image.fromarray((np.arange(20 * 24).reshape(20, 24) % 256).astype(np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.full((18, 16), 1000, np.uint16)).save(tmp_path / "images" / "b.tif")
    Image.fromarray(a).save(tmp_path / "masks" / "a.tif")                      # 16-bit TIFF, ids up to 300
    Image.fromarray((b % 256).astype(np.uint8)).save(tmp_path / "masks" / "b.png")  # 8-bit PNG
    ds = build_reader(DataConfig(format="label_folders", root=str(tmp_path)))
    assert isinstance(ds, LabelFolderDataset) and ds.image_ids == ["a", "b"] and ds.class_names == ("cell",)
    s = ds.load(0)
    assert s.image.shape == (3, 20, 24) and torch.equal(s.image[0], s.image[2])
    assert _objects(s) == _expected(a) and len(s.instances) == 3
    assert s.instances.labels.tolist() == [0, 0, 0]
    assert torch.equal(s.instances.boxes, s.instances.masks.tight_boxes())
    assert _objects(ds.load(1)) == _expected(b % 256)
    assert ds.strata() == ["24x20/L", "16x18/I;16"]
    # the split and augmentation machinery takes it as any reader
    item = build_dataset(DataConfig(format="label_folders", root=str(tmp_path), fold=-1), "train")[1]
    assert item.image_id == "b"


def test_cellpose_layout_pairs_masks_and_cp_masks_and_ignores_flows(tmp_path):
    a, b = _labels(16, 16, 2), _labels(16, 16, 3)
    for name in ("x", "y"):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / f"{name}.png")
    Image.fromarray(a).save(tmp_path / "x_masks.png")
    Image.fromarray(b).save(tmp_path / "y_cp_masks.tif")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "x_flows.tif")
    ds = LabelFolderDataset(str(tmp_path))
    assert ds.image_ids == ["x", "y"]
    assert _objects(ds.load(0)) == _expected(a) and _objects(ds.load(1)) == _expected(b)


def test_whole_number_float_labels_are_read_and_an_empty_label_image_is_no_object(tmp_path):
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "labels")
    a = _labels(12, 12, 4).astype(np.float32)
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "images" / "f.png")
    Image.fromarray(a, mode="F").save(tmp_path / "labels" / "f.tif")
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "images" / "z.png")
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "labels" / "z.png")
    ds = LabelFolderDataset(str(tmp_path))
    assert _objects(ds.load(0)) == _expected(a)
    assert len(ds.load(1).instances) == 0


def _pair(tmp_path, image, label, name="p"):
    os.makedirs(tmp_path / "images", exist_ok=True)
    os.makedirs(tmp_path / "masks", exist_ok=True)
    if image is not None:
        Image.fromarray(image).save(tmp_path / "images" / f"{name}.png")
    if label is not None:
        label.save(tmp_path / "masks" / f"{name}.tif") if isinstance(label, Image.Image) else \
            Image.fromarray(label).save(tmp_path / "masks" / f"{name}.png")


def test_errors_name_the_files(tmp_path):
    img = np.zeros((10, 12), np.uint8)
    _pair(tmp_path / "a", img, None)
    with pytest.raises(LabelFolderError, match=r"1 image\(s\) without a label image, e.g. .*images/p.png"):
        LabelFolderDataset(str(tmp_path / "a"))
    _pair(tmp_path / "b", None, np.zeros((10, 12), np.uint8))
    with pytest.raises(LabelFolderError, match=r"without an image, e.g. .*masks/p.png"):
        LabelFolderDataset(str(tmp_path / "b"))
    _pair(tmp_path / "c", img, np.zeros((10, 11), np.uint8))
    with pytest.raises(LabelFolderError, match=r"masks/p.png is 11x10 \(WxH\) but its image .*images/p.png is 12x10"):
        LabelFolderDataset(str(tmp_path / "c"))  # before any image is decoded
    _pair(tmp_path / "d", img, Image.fromarray(np.full((10, 12), 0.5, np.float32), mode="F"))
    with pytest.raises(LabelFolderError, match=r"masks/p.tif: label image holds the non-integer value 0.5"):
        LabelFolderDataset(str(tmp_path / "d")).load(0)
    _pair(tmp_path / "e", img, np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(LabelFolderError, match=r"masks/p.png: a label image has one channel .* shape \(10, 12, 3\)"):
        LabelFolderDataset(str(tmp_path / "e")).load(0)
    _pair(tmp_path / "f", img, np.zeros((10, 12), np.uint8))
    Image.fromarray(img).save(tmp_path / "f" / "images" / "p.tif")
    with pytest.raises(LabelFolderError, match="two files named 'p'"):
        LabelFolderDataset(str(tmp_path / "f"))
    os.makedirs(tmp_path / "g" / "images")
    with pytest.raises(LabelFolderError, match="no masks/"):
        LabelFolderDataset(str(tmp_path / "g"))
    os.makedirs(tmp_path / "h")
    with pytest.raises(LabelFolderError, match="no images"):
        LabelFolderDataset(str(tmp_path / "h"))


def test_label_array_to_masks_by_hand():
    a = np.array([[0, 2, 2, 0],
                  [0, 0, 5, 0],
                  [5, 0, 0, 0]])
    m = masks_from_label_array(a)
    assert m.image_size == (3, 4) and len(m) == 2
    d = m.to_dense()
    assert torch.equal(d[0], torch.from_numpy(a == 2)) and torch.equal(d[1], torch.from_numpy(a == 5))


def test_real_dsb2018_images_as_label_pngs_give_the_dsb_reader_objects(tmp_path):
    root = "/work/shared/data/dsb2018/stage1_train"
    if not os.path.isdir(root):
        pytest.skip("DSB2018 data not present")
    from maskrcnn.data.dsb2018 import DSB2018Dataset
    from maskrcnn.formats.label_images import to_label_image

    dsb = DSB2018Dataset(root)
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "masks")
    picks = [0, 5]
    for i in picks:  # convert as docs/own_data.md does: image copied, masks painted into one label PNG
        s = dsb.load(i)
        Image.open(dsb.image_path(s.image_id)).save(tmp_path / "images" / f"{s.image_id}.png")
        inst = s.instances.replace(scores=torch.ones(len(s.instances)))
        Image.fromarray(to_label_image(inst)).save(tmp_path / "masks" / f"{s.image_id}.png")
    ours = LabelFolderDataset(str(tmp_path))
    for k, i in enumerate(picks):
        a, b = ours.load(k), dsb.load(i)
        assert a.image_id == b.image_id and torch.equal(a.image, b.image)
        assert _objects(a) == _objects(b)


def _tiny_folder(root, n=6):
    rng = np.random.default_rng(0)
    os.makedirs(root / "images")
    os.makedirs(root / "masks")
    for k in range(n):  # test set-up: a few bright rectangles per image, their ids in the label image
        img, lab = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint16)
        for v in range(1, 5):
            y, x = rng.integers(0, 52, 2)
            lab[y:y + 10, x:x + 9] = v
        img[lab > 0] = 200
        Image.fromarray(img).save(root / "images" / f"im{k}.png")
        Image.fromarray(lab).save(root / "masks" / f"im{k}.tif")


def test_train_py_trains_on_a_label_folder_and_names_a_missing_pair(tmp_path, capsys):
    import train as train_cli
    from tests.engine.test_train_cli import TINY

    _tiny_folder(tmp_path / "cells")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.replace("format: synthetic", f"format: label_folders\n  root: {tmp_path / 'cells'}\n"
                                                     f"  split_file: {tmp_path / 'folds.json'}")
                   .replace("in_channels: 1, pixel_mean: [0.5], pixel_std: [0.25]",
                            "in_channels: 3, pixel_mean: [0.5, 0.5, 0.5], pixel_std: [0.25, 0.25, 0.25]"))
    torch.set_num_threads(1)
    assert train_cli.main([str(cfg), "--no-progress", "--set", f"train.output_dir={tmp_path / 'run'}"]) == 0
    assert os.path.isfile(tmp_path / "run" / "model_final.pth")
    os.remove(tmp_path / "cells" / "masks" / "im3.tif")
    assert train_cli.main([str(cfg), "--no-progress", "--set", f"train.output_dir={tmp_path / 'run2'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: 1 image(s) without a label image, e.g. ") and "images/im3.png" in err[-1]
