import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from maskrcnn.config import ConfigError, TestConfig as Cfg
from maskrcnn.data.rle import decode
from maskrcnn.inference.predictor import Predictor, apply_thresholds, load_model
from maskrcnn.inference.run import _read_image_pillow, predict_images, timing_summary
from tests.inference.stub_model import IdStubModel, draw_objects, object_score, random_blobs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_predict_raw_with_tta_and_an_ensemble_finds_every_object_once():
    blobs = random_blobs(10, 33, 45, seed=7)
    image = draw_objects(blobs)
    pred = Predictor([IdStubModel(), IdStubModel()], tta="d4", min_views=16, device="cpu")
    assert pred.num_views == 16
    raw = pred.predict_raw(image)
    assert len(raw) == blobs.shape[0]
    order = torch.sort(object_score(torch.arange(1, blobs.shape[0] + 1)), descending=True, stable=True).indices
    assert torch.allclose(raw.scores, object_score(order + 1))  # every view agrees: fused = the score
    assert torch.equal(raw.masks.to_dense() > 0.5, blobs[order])
    assert set(pred.last_timing) == {"model", "merge"}
    # a view that cannot see an object: min_views above the number of views is refused
    with pytest.raises(ValueError, match="number of views"):
        Predictor(IdStubModel(), tta="hflip", min_views=3)


def test_one_view_is_the_model_output():
    blobs = random_blobs(5, 20, 24, seed=2)
    image = draw_objects(blobs)
    raw = Predictor(IdStubModel(), device="cpu").predict_raw(image)
    direct = IdStubModel()([image])[0]
    assert torch.equal(raw.masks.crops, direct.masks.crops) and torch.equal(raw.scores, direct.scores)


def _write_images(folder, specs):
    """specs: name -> (bool masks, writer kind)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (masks, kind) in specs.items():
        ids = (draw_objects(masks)[0] * 255).round().numpy().astype(np.uint8)
        if kind == "png8":
            Image.fromarray(ids).save(folder / f"{name}.png")
        elif kind == "tif16":
            Image.fromarray(ids.astype(np.uint16) * 257).save(folder / f"{name}.tif")
        elif kind == "rgb":
            Image.fromarray(np.stack([ids] * 3, -1)).save(folder / f"{name}.png")


def test_full_run_on_synthetic_images_writes_an_exact_valid_submission(tmp_path):
    specs = {
        "img_a": (random_blobs(12, 40, 52, seed=1), "png8"),
        "img_b": (random_blobs(6, 36, 30, seed=2), "tif16"),
        "img_c": (random_blobs(4, 28, 28, seed=3), "rgb"),
        "img_empty": (torch.zeros((0, 24, 20), dtype=torch.bool), "png8"),
    }
    _write_images(tmp_path / "images", specs)
    paths = sorted(str(p) for p in (tmp_path / "images").iterdir())
    pred = Predictor(IdStubModel(), tta="hflip,rot90,transpose", min_views=2, device="cpu")
    out = tmp_path / "submission.csv"
    timings = predict_images(pred, paths, Cfg(score_thresh=(0.0,), image_class="none"), str(out), progress=False)
    assert len(timings) == 4 and "merge" in timing_summary(timings)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert {r["id"] for r in rows} == set(specs)
    for name, (masks, _) in specs.items():
        rles = [r["predicted"] for r in rows if r["id"] == name]
        if masks.shape[0] == 0:
            assert rles == [""]
            continue
        got = torch.from_numpy(np.stack([decode(r, *masks.shape[1:]) for r in rles]))
        # each drawn object comes back exactly once, pixel for pixel
        match = (got[:, None] == masks[None]).flatten(2).all(2)
        assert match.sum(0).tolist() == [1] * masks.shape[0] and len(rles) == masks.shape[0]


def test_pillow_reader_handles_8_and_16_bit_gray_and_rgb(tmp_path):
    a = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    Image.fromarray(a).save(tmp_path / "g16.tif")
    Image.fromarray(a.astype(np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray((a // 257).astype(np.uint8)).save(tmp_path / "g8.png")
    rgb = np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    for name in ("g16.tif", "g16.png"):
        t = _read_image_pillow(str(tmp_path / name))
        assert t.shape == (1, 3, 4) and torch.allclose(t[0], torch.from_numpy(a / 65535.0).float())
    t = _read_image_pillow(str(tmp_path / "g8.png"))
    assert t.dtype == torch.float32 and t.max() <= 1 and t.shape == (1, 3, 4)
    t = _read_image_pillow(str(tmp_path / "rgb.png"))
    assert t.shape == (3, 3, 4) and torch.allclose(t.permute(1, 2, 0) * 255, torch.from_numpy(rgb).float())
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png: cannot read"):
        _read_image_pillow(str(tmp_path / "bad.png"))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        _read_image_pillow(str(tmp_path / "missing.png"))


def test_thresholds_file_overrides_test_fields(tmp_path):
    base = Cfg()
    p = tmp_path / "tuned.yaml"
    p.write_text(yaml.safe_dump({"test": {"score_thresh": [0.15, 0.35, 0.55], "min_area": [75, 150, 75]},
                                 "tuning": {"mAP": 0.31}}))
    cfg = apply_thresholds(base, str(p))
    assert cfg.score_thresh == (0.15, 0.35, 0.55) and cfg.min_area == (75, 150, 75)
    assert cfg.mask_thresh == base.mask_thresh
    p.write_text(yaml.safe_dump({"mask_thresh": 0.45}))
    assert apply_thresholds(base, str(p)).mask_thresh == (0.45,)
    p.write_text(yaml.safe_dump({"score_treshold": 0.45}))
    with pytest.raises(ConfigError, match="score_treshold"):
        apply_thresholds(base, str(p))
    p.write_text(yaml.safe_dump({"min_area": "big"}))
    with pytest.raises(ConfigError, match="min_area"):
        apply_thresholds(base, str(p))


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model(str(tmp_path / "nope.pth"))
    torch.save({"w": torch.zeros(2)}, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="bare state dict without a config: pass --config"):
        load_model(str(tmp_path / "bare.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pth: cannot read"):
        load_model(str(tmp_path / "junk.pth"))


def _has_model():
    try:
        from maskrcnn.model import build_model  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_model(), reason="maskrcnn.model.build_model has not landed yet")
def test_predict_py_end_to_end_with_a_tiny_random_model(tmp_path):
    from maskrcnn.config import load_config, to_dict
    from maskrcnn.model import build_model

    cfg = load_config(None, ["model.backbone.name=resnet18", "model.fpn.out_channels=32",
                             "model.roi_heads.box_fc_dim=64", "model.mask_head.conv_dim=16",
                             "model.mask_head.num_convs=1", "model.rpn.post_nms_topk_test=200",
                             "model.rpn.pre_nms_topk_test=200", "model.roi_heads.detections_per_image=100",
                             "model.roi_heads.num_classes=3", "test.score_thresh=[0.0]"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "iteration": 0}, tmp_path / "tiny.pth")
    _write_images(tmp_path / "images", {"x": (random_blobs(5, 64, 64, seed=1), "png8"),
                                        "y": (random_blobs(3, 48, 64, seed=2), "tif16")})
    out = tmp_path / "submission.csv"
    res = subprocess.run(
        [sys.executable, os.path.join(REPO, "predict.py"), "--weights", str(tmp_path / "tiny.pth"),
         "--images", str(tmp_path / "images"), "--out", str(out), "--tta", "hflip", "--device", "cpu",
         "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "postprocess" in res.stdout and out.exists()
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert {r["id"] for r in rows} == {"x", "y"}
