import os

import pytest

from maskrcnn.config import ConfigError, load_config
from maskrcnn.model import build_model
from tests.model.helpers import tiny_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_unknown_key_lists_valid_keys(tmp_path):
    path = write(tmp_path, "a.yaml", "model:\n  backbone:\n    nam: resnet50\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "model.backbone.nam" in msg
    for valid in ("name", "norm", "freeze_at", "stride_in_1x1"):
        assert valid in msg


def test_wrong_type_names_the_key(tmp_path):
    path = write(tmp_path, "a.yaml", "model:\n  rpn:\n    pre_nms_topk_train: many\n")
    with pytest.raises(ConfigError, match="model.rpn.pre_nms_topk_train"):
        load_config(path)
    with pytest.raises(ConfigError, match="model.channels_last"):
        load_config(None, ["model.channels_last=3"])


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "model:\n  backbone:\n    name: resnet50\n    freeze_at: 3\n  roi_heads:\n    num_classes: 3\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nmodel:\n  backbone:\n    name: resnet101\n")
    cfg = load_config(child, ["model.anchors.sizes=[4,8,16,32,64]", "model.roi_heads.num_classes=5"])
    assert cfg.model.backbone.name == "resnet101"  # child wins
    assert cfg.model.backbone.freeze_at == 3  # kept from the base
    assert cfg.model.anchors.sizes == (4.0, 8.0, 16.0, 32.0, 64.0)
    assert cfg.model.roi_heads.num_classes == 5  # override wins over the base


def test_shipped_configs_inherit():
    r50 = load_config(os.path.join(ROOT, "configs", "r50.yaml"))
    x101 = load_config(os.path.join(ROOT, "configs", "x101.yaml"))
    r101 = load_config(os.path.join(ROOT, "configs", "r101.yaml"))
    small = load_config(os.path.join(ROOT, "configs", "small.yaml"))
    assert x101.model.backbone.name == "resnext101_32x8d"
    assert r101.model.backbone.name == "resnet101"
    assert x101.model.anchors == r50.model.anchors and x101.model.rpn == r50.model.rpn
    assert small.data.format == "synthetic"
    assert r50.model.rpn.post_nms_topk_test > r50.model.roi_heads.detections_per_image


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.anchors.sizes=[8,16,32]", "model.anchors.sizes"),
        ("model.backbone.name=resnet7", "model.backbone.name"),
        ("model.backbone.norm=ln", "model.backbone.norm"),
        ("model.mask_head.resolution=42", "model.mask_head.resolution"),
        ("model.input.pixel_mean=[0.1,0.2]", "model.input.pixel_mean"),
        ("model.input.scale=2.0", "model.input"),  # with min_size_test below: both set
    ],
)
def test_build_model_rejects_bad_values(override, key):
    extra = ["model.input.min_size_test=64"] if "scale" in override else []
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_model(tiny_model_config(override, *extra))
