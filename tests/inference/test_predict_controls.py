"""Nothing silently under-counted: detection-cap warnings, automatic tiling, 16-bit input, --diameter."""
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.config import Config, ConfigError, from_dict, load_config, to_dict
from maskrcnn.config import TestConfig as Cfg
from maskrcnn.inference.caps import CapHit, CapMonitor, cap_warning
from maskrcnn.inference.input_control import input_overrides
from maskrcnn.cli.predict import main
from maskrcnn.inference.predict_run import predict_images
from maskrcnn.inference.predictor import Predictor
from maskrcnn.inference.tile_grid import auto_tile_size
from maskrcnn.model.mask_rcnn import CAP_KEYS
from maskrcnn.model.roi_heads import box_inference
from maskrcnn.model.rpn import find_top_proposals
from tests.inference.stub_model import TINY_MODEL, IdStubModel, draw_objects, random_blobs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------- the model's demand
def test_rpn_demand_counts_confident_anchors_and_finds_the_boxes_the_caps_lost():
    # level 0: 6 anchors, 4 with logit >= 0 (objectness >= 0.5); level 1: 2 anchors, 1 confident.
    lg0 = torch.tensor([[2.0, 1.0, 0.0, 0.5, -1.0, -3.0]])
    lg1 = torch.tensor([[0.3, -0.2]])
    # disjoint boxes, so NMS keeps every one; zero deltas decode to the anchors themselves
    a0 = torch.tensor([[i * 10.0, 0.0, i * 10.0 + 5, 5.0] for i in range(6)])
    a1 = torch.tensor([[0.0, 20.0, 5.0, 25.0], [10.0, 20.0, 15.0, 25.0]])
    demand = {}
    props = find_top_proposals([lg0, lg1], [torch.zeros(1, 6, 4), torch.zeros(1, 2, 4)], [a0, a1], [(100, 100)],
                               pre_nms_topk=3, post_nms_topk=2, nms_thresh=0.7, min_size=0.0, demand=demand)
    assert props[0].tolist() == [[0.0, 0.0, 5.0, 5.0], [10.0, 0.0, 15.0, 5.0]]
    assert demand["pre_confident"].tolist() == [4]  # the most confident anchors of one level: 4 > 3 kept
    # the pre-NMS top-3 of level 0 keeps logits 2, 1, 0.5 and drops the confident 0.0 (anchor 2),
    # which no proposal covers: lost
    assert demand["pre_lost"][0].tolist() == [[20.0, 0.0, 25.0, 5.0]]
    # after NMS: 2.0, 1.0, 0.5 (level 0), 0.3 and -0.2 (level 1); confident: 4; the post-NMS top-2
    # drops 0.5 and 0.3 (confident, uncovered: lost, by score) and -0.2 (not confident)
    assert demand["post_confident"].tolist() == [4]
    assert demand["post_lost"][0].tolist() == [[30.0, 0.0, 35.0, 5.0], [0.0, 20.0, 5.0, 25.0]]


def test_lost_objects_skips_covered_boxes_and_counts_duplicates_once():
    from maskrcnn.model.rpn import lost_objects

    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    cand = torch.tensor([[0.0, 0.0, 10.0, 9.0],      # IoU 0.9 with the kept box: covered
                         [50.0, 50.0, 60.0, 60.0],   # uncovered
                         [50.0, 50.0, 60.0, 59.0],   # a duplicate of the previous (IoU 0.9)
                         [0.0, 5.0, 10.0, 20.0]])    # IoU 50 / 200 = 0.25 with the kept box: uncovered
    got = lost_objects(cand, torch.tensor([3.0, 2.0, 1.0, 0.5]), kept)
    assert got.tolist() == [[50.0, 50.0, 60.0, 60.0], [0.0, 5.0, 10.0, 20.0]]
    assert lost_objects(cand, torch.ones(4), torch.zeros((0, 4))).shape == (3, 4)  # nothing kept: all but duplicates


def test_detection_demand_is_the_count_after_nms_and_the_best_score_the_cap_dropped():
    # 4 proposals far apart (no NMS suppression), 1 class; softmax scores from [cls, bg] logits
    props = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [40.0, 0.0, 50.0, 10.0],
                           [60.0, 0.0, 70.0, 10.0]])]
    p = torch.tensor([0.9, 0.8, 0.7, 0.1])
    logits = torch.stack([torch.log(p), torch.log(1 - p)], 1)
    demand = {}
    (boxes, scores, _), = box_inference(logits, torch.zeros(4, 4), props, [(100, 100)], (10, 10, 5, 5), 0.05, 0.5, 2,
                                       demand=demand)
    assert scores.tolist() == pytest.approx([0.9, 0.8])
    assert demand["detections"].tolist() == [4]
    assert demand["dropped_score"].tolist() == pytest.approx([0.7])  # the best of the two dropped (0.7, 0.1)


class _CappedModel(torch.nn.Module):
    """Reports a demand as MaskRCNN does: rows of ``DEMAND_COLUMNS`` (best box-head score of what the
    pre-/post-NMS top-k lost, confident anchors / proposals, detections, best score the cap dropped)."""

    def __init__(self, rows, caps=(1000, 1000, 100)):
        super().__init__()
        self.last_demand = torch.tensor(rows, dtype=torch.float32)
        self._caps = caps

    def caps(self):
        return dict(zip(CAP_KEYS, self._caps))


def test_cap_monitor_reports_which_cap_was_reached_and_by_how_much():
    mon = CapMonitor(score_thresh=0.5)
    # 1,200 confident anchors (> 1,000) but what the cap lost scores 0.2 (not a cell); the detection
    # cap dropped only a 0.4 (post-processing drops it): nothing reached
    mon.add(_CappedModel([[0.2, 0.3, 1200, 1000, 120, 0.4]]))
    assert mon.hits() == []
    mon.add(_CappedModel([[0.8, 0.0, 1500, 999, 300, 0.75]]))  # pre-NMS lost a 0.8 cell; detections dropped a 0.75
    hits = mon.hits()
    assert [h.key for h in hits] == [CAP_KEYS[0], CAP_KEYS[2]]
    pre, det = hits
    assert (pre.cap, pre.demand, pre.calls, pre.total_calls, pre.dropped_score) == (1000, 1500, 1, 2, pytest.approx(0.8))
    assert (det.cap, det.demand, det.calls, det.dropped_score) == (100, 300, 1, pytest.approx(0.75))
    assert pre.suggestion() == 2500 and det.suggestion() == 500  # 1.5x, up to a multiple of 500
    text = cap_warning("mosaic", hits, tiled=False)
    assert text.startswith("warning: mosaic: cells may be missing")
    assert "model.rpn.pre_nms_topk_test=1000 was reached in 1 of 2 model calls" in text and "scores 0.80" in text
    assert "--set model.rpn.pre_nms_topk_test=2500" in text and "--set model.roi_heads.detections_per_image=500" in text
    assert "--tile 512" in text
    mon.reset()
    mon.add(_CappedModel([[0.0, 0.0, 1000, 1000, 100, 0.0]]))  # exactly at the caps, nothing dropped
    assert mon.hits() == []


# ----------------------------------------------------------------------- automatic tiling
class _CappedStub(IdStubModel):
    """IdStubModel keeping only its ``cap`` best objects per call, reporting the demand as MaskRCNN."""

    def __init__(self, cap):
        super().__init__(num_classes=1)
        self.cap = cap

    def caps(self):
        return {CAP_KEYS[0]: 10 ** 6, CAP_KEYS[1]: 10 ** 6, CAP_KEYS[2]: self.cap}

    def forward(self, images, targets=None, input_ranges=None):
        out, rows = [], []
        for inst in super().forward(images):
            order = torch.sort(inst.scores, descending=True).indices
            dropped = float(inst.scores[order[self.cap]]) if len(inst) > self.cap else 0.0
            rows.append([0.0, 0.0, 0.0, 0.0, float(len(inst)), dropped])
            out.append(inst[order[: self.cap]])
        self.last_demand = torch.tensor(rows)
        return out


def _mosaic(n=60, size=300, seed=3):
    masks = random_blobs(n, size, size, seed=seed, rmin=3, rmax=6)
    return masks, draw_objects(masks)


def test_auto_tiling_recovers_what_the_cap_drops_on_the_whole_image(capsys):
    masks, image = _mosaic()
    n = masks.shape[0]
    assert n > 40
    whole = Predictor(_CappedStub(cap=20), device="cpu", tile_overlap=32)
    assert len(whole.predict_raw(image)) == 20 and [h.key for h in whole.last_caps] == [CAP_KEYS[2]]
    # 300 px: below the limit (3 x 128), so first whole; the cap was reached, so again in 128-px tiles
    auto = Predictor(_CappedStub(cap=20), device="cpu", tile_overlap=32, auto_tile=(128, 384))
    out = auto.predict_raw(image)
    assert len(out) == n and auto.last_caps == [] and auto.last_tiles[0] == 128 and "cap" in auto.last_tiles[2]
    # longer than the limit: tiled at once, with progress over the tiles as lines (not a terminal)
    stream = io.StringIO()
    auto = Predictor(_CappedStub(cap=20), device="cpu", tile_overlap=32, auto_tile=(128, 256), tile_progress="lines")
    import maskrcnn.progress as progress

    old = progress.sys.stderr
    progress.sys.stderr = stream
    try:
        assert len(auto.predict_raw(image)) == n
    finally:
        progress.sys.stderr = old
    assert "longer than 256" in auto.last_tiles[2]
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("tiles: 1/9 tile") and "ETA" in lines[0] and lines[-1].startswith("tiles: 9/9 tile")
    # a small image is never tiled, even when it reaches a cap
    small = Predictor(_CappedStub(cap=2), device="cpu", tile_overlap=32, auto_tile=(128, 384))
    assert len(small.predict_raw(image[:, :100, :100])) <= 2 and small.last_tiles is None and small.last_caps


def test_auto_tile_size_follows_the_crop_and_the_input_scale():
    nuclei = load_config(os.path.join(REPO, "configs", "nuclei_cpu.yaml"))
    # 256-px crops, scale 2: max(2 * 256, 1024 / 2) = 512; whole images up to 3 tiles
    assert auto_tile_size(nuclei) == (512, 1536)
    no_crop = Config()  # no crops, scale 1: 1024 / 1
    assert auto_tile_size(no_crop) == (1024, 3072)
    big_crop = from_dict(to_dict(no_crop), ["data.augment.crop_size=[600,400]", "model.input.scale=4.0"])
    assert auto_tile_size(big_crop) == (1216, 3648)  # 2 x 600 = 1200 -> a multiple of 32


# ------------------------------------------------------------------- 16-bit input, diameter
class _BrightStub(torch.nn.Module):
    """An "8-bit model": one object per connected run of rows where the image is brighter than 0.25."""

    def forward(self, images, targets=None):
        from maskrcnn.structures import Instances, MaskList

        out = []
        for im in images:
            fg = im[0] > 0.25
            H, W = fg.shape
            ml = MaskList.from_dense(fg[None].float() * 0.9, pad=1) if fg.any() else None
            if ml is None:
                out.append(Instances((H, W), torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long), torch.zeros(0),
                                     MaskList(torch.zeros((0, 1, 1)), torch.zeros((0, 2), dtype=torch.long), (H, W))))
            else:
                out.append(Instances((H, W), ml.tight_boxes(), torch.zeros(1, dtype=torch.long), torch.ones(1), ml))
        return out


def _dim_16bit(path):
    a = np.full((40, 40), 12, dtype=np.uint16)  # background 12, a nucleus 200-235 of 65535
    a[10:25, 12:30] = 200 + (np.arange(18) * 2)[None, :]
    Image.fromarray(a).save(path)


def test_a_dim_16bit_image_is_normalised_for_an_8bit_model_or_warned_about(tmp_path, capsys):
    _dim_16bit(tmp_path / "dim.tif")
    paths = [str(tmp_path / "dim.tif")]
    cfg = Config()  # model.input.normalize: none, i.e. trained on 8-bit data
    test = Cfg(score_thresh=(0.5,))
    pred = Predictor(_BrightStub(), device="cpu")
    [(iid, final, _)] = list(predict_images(pred, paths, test, progress=False, input_cfg=cfg, normalize="model"))
    assert len(final) == 1 and int(final.masks.crops.sum()) == 15 * 18  # the nucleus, exactly
    err = capsys.readouterr().err
    assert "note: dim is a 16-bit image" in err and "percentiles" in err
    # as read (--normalize none): nothing is found, and the run says why
    [(iid, final, _)] = list(predict_images(pred, paths, test, progress=False, input_cfg=cfg, normalize="none"))
    assert len(final) == 0
    err = capsys.readouterr().err
    assert "warning: dim: a 16-bit image using 0.36% of its range" in err and "--normalize percentile" in err


def test_diameter_and_scale_map_to_the_model_input_scale():
    cfg = from_dict({}, ["model.input.scale=2.0", "model.input.object_diameter=20"])
    over, line = input_overrides(cfg, diameter=40.0)
    assert over == ["model.input.scale=1.0"] and "--diameter 40" in line  # 2 * 20 / 40
    over, line = input_overrides(cfg, scale=0.25)
    assert over == ["model.input.scale=0.5"]
    over, line = input_overrides(cfg, normalize="percentile")
    assert over == ["model.input.normalize=percentile"] and "normalize percentile (percentiles 1-99.8)" in line
    with pytest.raises(ConfigError, match="records no typical object diameter"):
        input_overrides(Config(), diameter=30.0)
    with pytest.raises(ConfigError, match="one of"):
        input_overrides(cfg, normalize="zscore")


# -------------------------------------------------------------------------- predict.py
def test_predict_py_warns_about_caps_takes_model_keys_and_logs_the_input(tmp_path, capsys):
    from maskrcnn.model import build_model

    (tmp_path / "tiny.yaml").write_text(TINY_MODEL)
    cfg = load_config(str(tmp_path / "tiny.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg.model, load_weights=False, verbose=False)
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "iteration": 0}, tmp_path / "tiny.pth")
    (tmp_path / "images").mkdir()
    ids = (draw_objects(random_blobs(5, 64, 64, seed=1))[0] * 255).round().numpy().astype(np.uint8)
    Image.fromarray(ids).save(tmp_path / "images" / "a.png")
    _dim_16bit(tmp_path / "images" / "b.tif")
    base = ["--weights", str(tmp_path / "tiny.pth"), "--images", str(tmp_path / "images"), "--device", "cpu"]
    # a random model with small caps: every image reaches the detection cap
    assert main(base + ["--out", str(tmp_path / "s1.csv"), "--set", "model.roi_heads.detections_per_image=3",
                        "--set", "test.min_area=0", "--diameter", "10",
                        "--set", "model.input.object_diameter=20"]) == 0
    err = capsys.readouterr().err
    assert "warning: a: cells may be missing" in err and "model.roi_heads.detections_per_image=3 was reached" in err
    assert "--set model.roi_heads.detections_per_image=" in err
    assert "predict: 2 of 2 image(s) reached a detection cap (" in err
    assert "model.roi_heads.detections_per_image in 2 image(s)); cells may be missing there" in err
    assert "input scale 2 (--diameter 10" in err and "note: b is a 16-bit image" in err
    # the tile follows the input scale: 1024 px at the model's input = 512 image px at scale 2
    assert "tiling: automatic, tiles of 512 px for images longer than 1536 px" in err and "\r" not in err
    # caps large enough: no warning
    assert main(base + ["--out", str(tmp_path / "s2.csv"), "--set", "model.roi_heads.detections_per_image=100000",
                        "model.rpn.pre_nms_topk_test=100000", "model.rpn.post_nms_topk_test=100000"]) == 0
    err = capsys.readouterr().err
    assert "cells may be missing" not in err and "reached a detection cap" not in err
    # a training-only key is one error line
    assert main(base + ["--out", str(tmp_path / "s3.csv"), "--set", "model.backbone.name=resnet50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fixed when the model was trained" in err
