"""Every recipe in configs/ loads, passes the trainer's checks and builds its model."""
import glob
import os

import pytest

from maskrcnn.config import ConfigError, load_config
from maskrcnn.engine.trainer import check_train_config
from maskrcnn.model import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def test_the_recipes_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"dsb2018_r50_gn.yaml", "sartorius_r50.yaml", "livecell_r50.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_recipe_is_valid(path):
    cfg = load_config(path)
    check_train_config(cfg)
    build_model(cfg.model, load_weights=False, verbose=False)
    # The detection cap can only be reached when the RPN proposes more boxes (docs/conventions.md).
    assert cfg.model.rpn.post_nms_topk_test > cfg.model.roi_heads.detections_per_image


def test_shipped_configs_inherit():
    r50, x101, r101, small = (load_config(os.path.join(ROOT, "configs", f"{n}.yaml")) for n in ("r50", "x101", "r101", "small"))
    assert x101.model.backbone.name == "resnext101_32x8d"
    assert r101.model.backbone.name == "resnet101"
    assert x101.model.anchors == r50.model.anchors and x101.model.rpn == r50.model.rpn
    assert small.data.format == "synthetic"
    assert r50.model.rpn.post_nms_topk_test > r50.model.roi_heads.detections_per_image


def test_per_class_thresholds_must_match_the_classes():
    cfg = load_config(None, ["model.roi_heads.num_classes=3", "test.score_thresh=[0.1, 0.2]"])
    with pytest.raises(ConfigError, match="test.score_thresh has 2 values"):
        check_train_config(cfg)
