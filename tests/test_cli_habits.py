"""The habits every front end shares: --set accumulates, YAML reads 1e-4 as a number, unknown keys
suggest the nearest valid one, --tta none, progress bars only on a terminal."""
import io
import os
import sys

import pytest

from maskrcnn.config import ConfigError, load_config, load_yaml, parse_overrides, split_predict_overrides
from maskrcnn.progress import progress_mode, track

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ numbers in YAML and --set
@pytest.mark.parametrize("text, value", [
    ("1e-4", 0.0001), ("5e-3", 0.005), ("1E3", 1000.0), ("-2.5e-3", -0.0025), ("+2e2", 200.0),
    ("1.5e3", 1500.0), ("1.e-3", 0.001), ("0.02", 0.02), (".5", 0.5),
])
def test_exponent_floats_without_a_dot_are_floats(text, value):
    got = load_yaml(text)
    assert isinstance(got, float) and got == pytest.approx(value, rel=1e-12)
    assert parse_overrides([f"solver.lr={text}"]) == {"solver": {"lr": got}}


@pytest.mark.parametrize("text, value", [("1", 1), ("-3", -3), ("1e", "1e"), ("e5", "e5"), ("1e-4x", "1e-4x"),
                                         ("true", True), ("abc", "abc")])
def test_other_scalars_keep_their_yaml_types(text, value):
    got = load_yaml(text)
    assert got == value and type(got) is type(value)


def test_a_config_file_and_set_take_1e_minus_4(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("solver:\n  lr: 1e-4\n  weight_decay: 5E-3\n")
    cfg = load_config(str(p), ["solver.warmup_factor=-2.5e-3", "solver.gamma=1E3"])
    assert (cfg.solver.lr, cfg.solver.weight_decay) == (0.0001, 0.005)
    assert (cfg.solver.warmup_factor, cfg.solver.gamma) == (-0.0025, 1000.0)


def test_thresholds_files_read_exponent_floats(tmp_path):
    from maskrcnn.config import TestConfig, apply_thresholds

    p = tmp_path / "t.yaml"
    p.write_text("test:\n  score_thresh: [5e-1]\n  overlap_min_keep: 2.5E-1\n")
    t = apply_thresholds(TestConfig(), str(p))
    assert t.score_thresh == (0.5,) and t.overlap_min_keep == 0.25


# ------------------------------------------------------------------------- unknown keys
@pytest.mark.parametrize("item, near", [
    ("train.max_iter=40", "solver.max_iter"),       # the right name in another section
    ("solver.lrr=0.1", "solver.lr"),                # a typo
    ("model.rpn.pre_nms_topk=10", "model.rpn.pre_nms_topk_test"),
    ("test.scor_thresh=0.3", "test.score_thresh"),
])
def test_an_unknown_key_suggests_the_nearest_valid_one(item, near):
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    assert f"did you mean {near}?" in str(e.value) and item.split("=")[0] in str(e.value)


def test_predict_set_takes_test_and_inference_model_keys_and_explains_the_others():
    test, model = split_predict_overrides(["test.min_area=10", "model.roi_heads.detections_per_image=3000",
                                           "model.rpn.pre_nms_topk_test=5000"])
    assert test == {"min_area": 10}
    assert model == ["model.roi_heads.detections_per_image=3000", "model.rpn.pre_nms_topk_test=5000"]
    with pytest.raises(ConfigError, match="model.backbone.name: fixed when the model was trained"):
        split_predict_overrides(["model.backbone.name=resnet101"])
    with pytest.raises(ConfigError, match="solver.lr: fixed when the model was trained"):
        split_predict_overrides(["solver.lr=1e-4"])
    with pytest.raises(ConfigError, match=r"did you mean model\.roi_heads\.detections_per_image\?"):
        split_predict_overrides(["model.roi_heads.detections_per_img=10"])


# ------------------------------------------------------------------- --set accumulates
def test_set_accumulates_in_predict_evaluate_and_pseudo_label():
    import evaluate
    from maskrcnn.cli import predict, pseudo_label
    from maskrcnn.inference import predict_run

    a = predict.build_parser().parse_args(["--weights", "w", "--images", "i", "--set", "test.min_area=5",
                                               "--set", "test.fill_holes=true", "test.merge_iou=0.6"])
    assert a.set == ["test.min_area=5", "test.fill_holes=true", "test.merge_iou=0.6"]
    t = predict_run.resolve_test_config(a, predict_run.TestConfig())
    assert (t.min_area, t.fill_holes, t.merge_iou) == ((5,), True, 0.6)
    a = evaluate.build_parser().parse_args(["labels", "--config", "c", "--out", "o", "--set", "a=1", "--set", "b=2"])
    assert a.set == ["a=1", "b=2"]
    a = pseudo_label.build_parser().parse_args(["label", "--weights", "w", "--images", "i", "--out", "o",
                                                "--set", "a=1", "--set", "b=2"])
    assert a.set == ["a=1", "b=2"]


def test_train_py_applies_every_set_group(capsys):
    """The first group holds a bad value: were it dropped (argparse's ``store``), the run would go on
    to the missing checkpoint instead of naming the value."""
    sys.path.insert(0, REPO)
    import train

    code = train.main([os.path.join(REPO, "configs", "small.yaml"), "--eval-only", "missing.pth",
                       "--set", "solver.max_iter=abc", "--set", "train.device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "solver.max_iter" in err and "missing.pth" not in err
    code = train.main([os.path.join(REPO, "configs", "small.yaml"), "--eval-only", "missing.pth",
                       "--set", "train.max_iter=40", "--set", "train.device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean solver.max_iter?" in err


# ---------------------------------------------------------------------------- --tta none
def test_tta_none_is_no_tta():
    from maskrcnn.cli import predict
    from maskrcnn.inference import predict_run
    from maskrcnn.inference.tta import parse_tta

    a = predict.build_parser().parse_args(["--weights", "w", "--images", "i", "--tta", "none"])
    base = predict_run.TestConfig(tta=("hflip", "vflip"))
    assert predict_run.resolve_test_config(a, base).tta == ()
    assert [v.name for v in parse_tta("none")] == [v.name for v in parse_tta("")] and len(parse_tta(["None"])) == 1
    with pytest.raises(ConfigError, match="none"):
        parse_tta("none,hflip")


# ------------------------------------------------------------------------------ progress
class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_bars_only_on_a_terminal_plain_lines_with_an_eta_otherwise():
    assert progress_mode(False, _Stream(True)) == "bar"
    assert progress_mode(False, _Stream(False)) == "lines" and progress_mode(True, _Stream(True)) == "lines"
    out = _Stream(False)
    assert list(track(range(4), "predict", mode="bar", every=0.0, file=out)) == [0, 1, 2, 3]
    text = out.getvalue()
    assert "\r" not in text and text.splitlines()[0].startswith("predict: 1/4 img (25%)") and "ETA" in text
