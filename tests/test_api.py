"""The Python API (``maskrcnn.load_model``): predict.py's label images byte for byte from a numpy
array, images of every dtype converted as predict.py reads the file, raw vs post-processed output."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.formats.image_files import ImageReadError, read_image
from maskrcnn.inference.zoo import ZOO_ENV, zoo_names
from tests.data.conftest import DSB_ROOT as DSB
from tests.inference.stub_model import TINY_RGB_MODEL, save_tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth"
    save_tiny_checkpoint(path, TINY_RGB_MODEL)
    return str(path)


def _dsb_images(folder, count=3):
    """Links to the first ``count`` DSB2018 training images (two gray stored as RGBA, one colour)."""
    if not os.path.isdir(DSB):
        pytest.skip("DSB2018 stage1_train not found (../shared)")
    folder.mkdir()
    for i in sorted(os.listdir(DSB))[:count]:
        os.symlink(os.path.join(DSB, i, "images", i + ".png"), folder / f"{i}.png")
    return sorted(folder.iterdir())


def _same_as_predict_py(weights, tmp_path, tta, **load):
    """predict.py --format labels on real images vs ``segment(np.array(Image.open(f)))``: same bytes
    (``tta``: both with ``--tta tta``; None: the model's own)."""
    from maskrcnn import load_model
    from maskrcnn.formats.image_files import write_image
    from maskrcnn.cli.predict import main

    paths = _dsb_images(tmp_path / "images")
    assert main(["--weights", weights, "--images", str(tmp_path / "images"), "--format", "labels", "--out",
                 str(tmp_path / "labels"), "--device", "cpu", "--no-progress"] + (["--tta", tta] if tta else [])) == 0
    model = load_model(weights, device="cpu", tta=tta, **load)
    counts = []
    for p in paths:
        labels = model.segment(np.array(Image.open(p)))
        written = tmp_path / "labels" / p.name
        assert labels.dtype == np.uint16 and np.array_equal(labels, np.array(Image.open(written))), p.name
        write_image(tmp_path / "mine.png", labels)  # predict.py's writer: the file's bytes too
        assert (tmp_path / "mine.png").read_bytes() == written.read_bytes(), p.name
        counts.append(int(labels.max()))
    return counts


def test_segment_gives_predict_pys_label_images_byte_for_byte_on_real_images(tiny, tmp_path):
    counts = _same_as_predict_py(tiny, tmp_path, "hflip")
    assert min(counts) >= 5  # the comparison is about objects, not empty images


def test_segment_with_the_shipped_nuclei_model(tmp_path, monkeypatch):
    monkeypatch.delenv(ZOO_ENV, raising=False)
    if "nuclei" not in zoo_names():
        pytest.skip("maskrcnn/zoo/nuclei.pth is not there yet")
    counts = _same_as_predict_py("nuclei", tmp_path, None)  # its own TTA and thresholds, as a user runs it
    assert min(counts) >= 1  # a nuclei model finds nuclei on DSB2018 images


def _roundtrip(tmp_path, array, name, **save):
    """``(image_tensor of the array, read_image of the array saved as a file)``."""
    from maskrcnn.api import CellModel

    path = tmp_path / name
    Image.fromarray(array).save(path, **save)
    return CellModel.image_tensor(np.array(Image.open(path))), read_image(path)


def test_arrays_of_every_dtype_are_read_as_the_same_file_would_be(tmp_path):
    from maskrcnn.api import CellModel

    g = np.random.default_rng(0)
    u8 = g.integers(0, 256, (9, 11), dtype=np.uint8)
    u16 = g.integers(0, 65536, (9, 11), dtype=np.uint16)
    cases = {
        "gray8.png": u8, "rgb8.png": np.stack([u8, 255 - u8, u8 // 2], -1),
        "rgba8.png": np.stack([u8, u8, u8, np.full_like(u8, 7)], -1), "gray16.png": u16, "gray16.tif": u16,
        "float.tif": (u8 / 255.0).astype(np.float32),
    }
    for name, a in cases.items():
        mine, file = _roundtrip(tmp_path, a, name)
        assert mine.dtype == torch.float32 and torch.equal(mine, file), name
    # values worked out by hand: 8 bit / 255, 16 bit / 65535, alpha dropped, [H, W, 1] = [H, W]
    t = CellModel.image_tensor
    assert t(np.array([[0, 255]], np.uint8)).tolist() == [[[0.0, 1.0]]]
    assert t(np.array([[257, 65535]], np.uint16)).tolist() == [[[np.float32(257) / np.float32(65535), 1.0]]]
    assert torch.equal(t(u8[:, :, None]), t(u8)) and t(u8).shape == (1, 9, 11)
    rgba = np.stack([u8, u8, u8, np.full_like(u8, 7)], -1)
    assert torch.equal(t(rgba), t(rgba[:, :, :3])) and t(rgba).shape == (3, 9, 11)
    assert torch.equal(t(u16.astype(np.int32)), t(u16))  # 16-bit data in wider integers
    assert torch.equal(t(np.array([[True, False]])), torch.tensor([[[1.0, 0.0]]]))
    assert torch.equal(t(Image.fromarray(u8)), read_image(tmp_path / "gray8.png"))  # a PIL image too
    # what would be silently wrong is refused, naming the fix
    with pytest.raises(ImageReadError, match=r"float image with values outside \[0, 1\] .*scale it to \[0, 1\]"):
        t(np.array([[0.0, 300.0]]))
    with pytest.raises(ImageReadError, match="values in \\[-1, 3\\]; only 16-bit"):
        t(np.array([[-1, 3]], np.int64))
    with pytest.raises(ImageReadError, match="shape \\(4, 5, 6\\)"):
        t(np.zeros((4, 5, 6), np.uint8))
    with pytest.raises(TypeError, match="numpy array"):
        t(torch.zeros(3, 4, 4))
    frames = [Image.fromarray(u8), Image.fromarray(255 - u8)]  # a stack: page 0 alone would drop the rest
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match="holds 2 pages"):
        t(Image.open(tmp_path / "stack.tif"))


def test_predict_is_the_raw_output_post_processed_as_documented(tiny, tmp_path):
    from maskrcnn import load_model
    from maskrcnn.inference.filtering import filter_predictions

    (tmp_path / "tuned.yaml").write_text("test:\n  score_thresh: [0.5]\n  min_area: [30]\n")
    model = load_model(tiny, device="cpu", thresholds=str(tmp_path / "tuned.yaml"))
    assert model.thresholds == str(tmp_path / "tuned.yaml") and model.test_cfg.score_thresh == (0.5,)
    image = np.array(Image.open(_dsb_images(tmp_path / "images", 1)[0]))
    raw = model.predict_raw(image)
    det = model.predict(image)
    # raw: every detection the model returns (detections_per_image 50, roi_heads.score_thresh 0), soft
    # masks that overlap; predict: scores >= 0.5, >= 30 pixels each, no pixel in two objects
    assert len(raw) == 50 and raw.masks.is_soft and float(raw.scores.min()) < 0.5
    binary = raw.masks.to_dense() >= 0.5
    assert int(binary.sum(0).max()) > 1
    assert 0 < len(det) < len(raw)
    assert det.masks.dtype == bool and det.masks.shape == (len(det), *image.shape[:2])
    assert (det.scores >= 0.5).all() and (det.masks.sum((1, 2)) >= 30).all() and det.masks.sum(0).max() == 1
    assert np.all(np.diff(det.scores) <= 0) and det.classes.tolist() == [0] * len(det)
    ys, xs = np.nonzero(det.masks[0])
    assert det.boxes[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # tight boxes
    again = filter_predictions(raw, model.test_cfg)
    assert torch.equal(again.masks.to_dense(), torch.from_numpy(det.masks))
    # segment: the same objects painted 1..N in score order
    labels = model.segment(image)
    assert [int((labels == k + 1).sum()) for k in range(len(det))] == det.masks.sum((1, 2)).tolist()
    # thresholds=None: the checkpoint's own test settings (score 0), more objects
    assert len(load_model(tiny, device="cpu", thresholds=None).predict(image)) > len(det)


def test_thresholds_beside_the_weights_load_with_them(tiny, tmp_path):
    from maskrcnn import load_model

    w = tmp_path / "m.pth"
    w.write_bytes(open(tiny, "rb").read())
    assert load_model(str(w), device="cpu").thresholds is None
    (tmp_path / "m.thresholds.yaml").write_text("test:\n  score_thresh: [0.25]\n")
    model = load_model(str(w), device="cpu")
    assert model.thresholds == str(tmp_path / "m.thresholds.yaml") and model.test_cfg.score_thresh == (0.25,)
    assert load_model(str(w), device="cpu", thresholds=None).test_cfg.score_thresh == (0.0,)
    (tmp_path / "other.yaml").write_text("test:\n  score_thresh: [0.75]\n")
    assert load_model(str(w), device="cpu", thresholds=str(tmp_path / "other.yaml")).test_cfg.score_thresh == (0.75,)
    assert [v.name for v in load_model(str(w), device="cpu", tta=["hflip", "vflip"]).predictor.views][1:] == \
        ["hflip", "vflip"]


def test_more_than_65535_objects_make_a_32_bit_label_image():
    from maskrcnn.formats.label_images import LabelImageError, to_label_image
    from maskrcnn.structures import Instances, MaskList

    n, side = 65536 + 3, 257  # one pixel per object, row-major
    k = torch.arange(n)
    origins = torch.stack([k % side, k // side], 1)
    masks = MaskList(torch.ones((n, 1, 1), dtype=torch.bool), origins, (side, side))
    inst = Instances((side, side), torch.zeros((n, 4)), torch.zeros(n, dtype=torch.long),
                     torch.linspace(1, 0, n), masks)
    labels = to_label_image(inst, max_label=2**32 - 1)
    assert labels.dtype == np.uint32 and labels.ravel()[:n].tolist() == list(range(1, n + 1))
    with pytest.raises(LabelImageError, match="do not fit a 16-bit label image"):
        to_label_image(inst)


def test_import_maskrcnn_stays_cheap_and_exports_the_api():
    code = ("import sys, maskrcnn; assert 'torch' not in sys.modules, 'torch imported'; "
            "from maskrcnn import load_model, CellModel; import maskrcnn.api as a; assert load_model is a.load_model")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    import maskrcnn

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        maskrcnn.nope


def test_the_public_api_is_exported_from_the_package_and_works(tiny):
    """``maskrcnn.<name>`` for every name of ``__all__``: the object of its home module, listed by
    ``dir``; the config loader and the model loader work through the package's names."""
    import maskrcnn
    from maskrcnn import api, config, errors, structures

    homes = {"load_model": api, "CellModel": api, "Detections": api, "load_config": config, "Config": config,
             "Instances": structures, "MaskList": structures, "ImageList": structures, "Sample": structures,
             "UserError": errors}
    assert set(maskrcnn.__all__) == set(homes) | {"__version__"}
    for name, home in homes.items():
        assert getattr(maskrcnn, name) is getattr(home, name), name
        assert name in dir(maskrcnn)
    cfg = maskrcnn.load_config(os.path.join(REPO, "configs", "small.yaml"), ["solver.lr=0.5"])
    assert isinstance(cfg, maskrcnn.Config) and cfg.solver.lr == 0.5
    with pytest.raises(maskrcnn.UserError, match="lrr"):
        maskrcnn.load_config(os.path.join(REPO, "configs", "small.yaml"), ["solver.lrr=1"])
    model = maskrcnn.load_model(tiny, device="cpu")
    assert isinstance(model, maskrcnn.CellModel)
    found = model.predict(np.zeros((64, 80), np.uint8))
    assert isinstance(found, maskrcnn.Detections) and isinstance(found.instances, maskrcnn.Instances)
    assert isinstance(found.instances.masks, maskrcnn.MaskList)


def test_unknown_weights_name_the_zoo(monkeypatch, tmp_path):
    from maskrcnn import load_model
    from maskrcnn.errors import UserError

    monkeypatch.setenv(ZOO_ENV, str(tmp_path))
    with pytest.raises(UserError, match=r"nucleii is neither a file nor a model name"):
        load_model("nucleii")
