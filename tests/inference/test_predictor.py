import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.config import TestConfig as Cfg
from maskrcnn.formats.rle import decode
from maskrcnn.inference.predictor import Predictor, build_predictor
from maskrcnn.cli.predict import main
from maskrcnn.inference.predict_run import predict_images, timing_summary, write_predictions
from tests.inference.stub_model import TINY_MODEL, IdStubModel, draw_objects, object_score, random_blobs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # subprocesses on busy shared CPUs


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


def test_build_predictor_takes_every_setting_from_the_test_config():
    cfg = Cfg(tta=("hflip", "vflip"), merge_iou=0.6, tta_min_views=2, mask_thresh=(0.4, 0.5, 0.6))
    pred = build_predictor([IdStubModel(), IdStubModel()], cfg, device="cpu", batch_size=3)
    assert pred.num_views == 6 and [v.name for v in pred.views][1:] == ["hflip", "vflip"]
    assert (pred.merge_iou, pred.min_views, pred.mask_threshold, pred.batch_size) == (0.6, 2, (0.4, 0.5, 0.6), 3)


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
    cfg = Cfg(score_thresh=(0.0,), image_class="none")
    timings = write_predictions(predict_images(pred, paths, cfg, progress=False), str(out))
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




def test_predict_py_end_to_end_with_a_tiny_random_model_and_evaluate_score(tmp_path, capsys):
    from maskrcnn.config import load_config, to_dict
    from maskrcnn.formats.kaggle_csv import write_labels
    from maskrcnn.model import build_model
    from maskrcnn.structures import MaskList

    (tmp_path / "tiny.yaml").write_text(TINY_MODEL)
    cfg = load_config(str(tmp_path / "tiny.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg.model, load_weights=False, verbose=False)
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "iteration": 0}, tmp_path / "tiny.pth")
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    specs = {"x": (random_blobs(5, 64, 64, seed=1), "png8"), "y": (random_blobs(3, 48, 64, seed=2), "tif16")}
    _write_images(tmp_path / "images", specs)
    write_labels(str(tmp_path / "labels.csv"), [(k, MaskList.from_dense(m), None) for k, (m, _) in specs.items()])
    (tmp_path / "tuned.yaml").write_text("test:\n  score_thresh: [0.0]\n  min_area: [2]\n")

    def predict(weights, *extra):
        out = tmp_path / f"sub_{len(extra)}.csv"
        res = subprocess.run(
            [sys.executable, os.path.join(REPO, "predict.py"), "--weights", *weights, "--images",
             str(tmp_path / "images"), "--out", str(out), "--device", "cpu", "--no-progress", *extra],
            cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        assert "postprocess" in res.stdout and "median" in res.stdout
        return out

    # an ensemble of a checkpoint and a bare state dict (with --config), with TTA and tuned thresholds
    out = predict([str(tmp_path / "tiny.pth"), str(tmp_path / "bare.pth")], "--config", str(tmp_path / "tiny.yaml"),
                  "--tta", "hflip,rot90", "--thresholds", str(tmp_path / "tuned.yaml"))
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert {r["id"] for r in rows} == {"x", "y"}
    res = subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), "score", "--submission", str(out),
                          "--labels", str(tmp_path / "labels.csv")], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1].startswith("mAP ")
    # bad input: a folder without images is one clear error line (both layouts named) and exit 2
    (tmp_path / "none").mkdir()
    assert main(["--weights", str(tmp_path / "tiny.pth"), "--images", str(tmp_path / "none"), "--out",
                 str(tmp_path / "z.csv"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "none: no images" in err and "<id>/images/<id>.png" in err and "Traceback" not in err


def test_autocast_option_is_checked_and_outputs_stay_float32():
    blobs = random_blobs(4, 20, 24, seed=4)
    with pytest.raises(ValueError, match="amp must be one of"):
        Predictor(IdStubModel(), amp="fp8")
    raw = Predictor(IdStubModel(), tta="hflip", device="cpu", amp="bf16").predict_raw(draw_objects(blobs))
    assert raw.masks.crops.dtype == torch.float32 and raw.scores.dtype == torch.float32
    order = torch.sort(object_score(torch.arange(1, blobs.shape[0] + 1)), descending=True, stable=True).indices
    assert torch.equal(raw.masks.to_dense() > 0.5, blobs[order])
