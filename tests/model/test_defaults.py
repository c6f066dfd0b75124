"""The configured defaults of the detection stages, and the builder handing each value to its stage.

The defaults are the published Mask R-CNN / detectron2 values (box-coder weights (10, 10, 5, 5) in
the box head and (1, 1, 1, 1) in the RPN, IoU thresholds, sampling, NMS per stage) except the
cell-specific ones documented in ``maskrcnn/config/model.py`` (8 px anchors at P2, 1,000 detections).
A changed default silently changes every model trained from then on, so each is asserted here.
"""
import inspect

import pytest
import torch

from maskrcnn.config import ModelConfig, TestConfig
from maskrcnn.model import build_model
from maskrcnn.model.roi_heads import MultiLevelRoIPooler, RoIHeads
from maskrcnn.model.rpn import RPN
from tests.model.helpers import tiny_model_config


def test_configured_defaults():
    cfg = ModelConfig()
    a, r, h, m = cfg.anchors, cfg.rpn, cfg.roi_heads, cfg.mask_head
    assert a.sizes == (8.0, 16.0, 32.0, 64.0, 128.0) and a.aspect_ratios == (0.5, 1.0, 2.0)
    assert a.scales_per_octave == 1 and a.offset == 0.0
    assert (r.fg_iou_thresh, r.bg_iou_thresh, r.nms_thresh) == (0.7, 0.3, 0.7)
    assert (r.batch_size_per_image, r.positive_fraction) == (256, 0.5)
    assert r.smooth_l1_beta == pytest.approx(1 / 9) and r.min_size == 0.0
    assert r.post_nms_topk_test > h.detections_per_image == 1000  # proposals must exceed the cap
    assert h.bbox_reg_weights == (10.0, 10.0, 5.0, 5.0)
    assert (h.fg_iou_thresh, h.bg_iou_thresh) == (0.5, 0.5)
    assert (h.batch_size_per_image, h.positive_fraction) == (512, 0.25)
    assert (h.score_thresh, h.nms_thresh, h.smooth_l1_beta) == (0.05, 0.5, 0.0)
    assert h.proposal_append_gt is True and h.box_pooler_resolution == 7
    assert (m.pooler_resolution, m.resolution) == (14, 28)
    assert TestConfig().mask_thresh == (0.5,)  # the one mask-threshold key


def test_module_defaults_match_the_config():
    # Modules built without the builder (tests, notebooks) must behave as the configured model.
    h, r = ModelConfig().roi_heads, ModelConfig().rpn
    roi = inspect.signature(RoIHeads).parameters
    assert tuple(roi["box_weights"].default) == h.bbox_reg_weights
    for key, field in (("positive_fraction", "positive_fraction"), ("fg_iou_thresh", "fg_iou_thresh"),
                       ("bg_iou_thresh", "bg_iou_thresh"), ("score_thresh", "score_thresh"),
                       ("nms_thresh", "nms_thresh"), ("smooth_l1_beta", "smooth_l1_beta")):
        assert roi[key].default == getattr(h, field), key
    rpn = inspect.signature(RPN).parameters
    for key in ("nms_thresh", "fg_iou_thresh", "bg_iou_thresh", "batch_size_per_image", "positive_fraction"):
        assert rpn[key].default == getattr(r, key), key
    assert rpn["smooth_l1_beta"].default == pytest.approx(r.smooth_l1_beta)
    pooler = inspect.signature(MultiLevelRoIPooler).parameters
    assert (pooler["canonical_size"].default, pooler["canonical_level"].default) == (224.0, 4)


def test_builder_hands_each_stage_its_own_values():
    # Distinct values per stage, so that one stage given the other's value is seen.
    cfg = tiny_model_config(
        "model.rpn.nms_thresh=0.65", "model.rpn.fg_iou_thresh=0.72", "model.rpn.bg_iou_thresh=0.28",
        "model.rpn.batch_size_per_image=96", "model.rpn.positive_fraction=0.4", "model.rpn.smooth_l1_beta=0.2",
        "model.rpn.min_size=1.5", "model.rpn.pre_nms_topk_train=300", "model.rpn.pre_nms_topk_test=200",
        "model.rpn.post_nms_topk_train=150", "model.rpn.post_nms_topk_test=120",
        "model.roi_heads.nms_thresh=0.45", "model.roi_heads.fg_iou_thresh=0.55", "model.roi_heads.bg_iou_thresh=0.45",
        "model.roi_heads.batch_size_per_image=80", "model.roi_heads.positive_fraction=0.3",
        "model.roi_heads.bbox_reg_weights=[9,8,4,3]", "model.roi_heads.score_thresh=0.07",
        "model.roi_heads.detections_per_image=77", "model.roi_heads.smooth_l1_beta=0.1",
        "model.roi_heads.proposal_append_gt=false",
    )
    model = build_model(cfg)
    rpn, roi = model.rpn, model.roi_heads
    assert (rpn.nms_thresh, rpn.fg_iou_thresh, rpn.bg_iou_thresh) == (0.65, 0.72, 0.28)
    assert (rpn.batch_size_per_image, rpn.positive_fraction, rpn.smooth_l1_beta, rpn.min_size) == (96, 0.4, 0.2, 1.5)
    assert rpn.pre_nms_topk == (300, 200) and rpn.post_nms_topk == (150, 120)
    assert (roi.nms_thresh, roi.fg_iou_thresh, roi.bg_iou_thresh) == (0.45, 0.55, 0.45)
    assert (roi.batch_size_per_image, roi.positive_fraction, roi.smooth_l1_beta) == (80, 0.3, 0.1)
    assert roi.box_weights == (9.0, 8.0, 4.0, 3.0) and roi.score_thresh == 0.07 and roi.detections_per_image == 77
    assert roi.proposal_append_gt is False


def test_default_model_uses_the_box_head_weights():
    model = build_model(tiny_model_config())
    assert model.roi_heads.box_weights == (10.0, 10.0, 5.0, 5.0)
    assert (model.rpn.nms_thresh, model.roi_heads.nms_thresh) == (0.7, 0.5)
    # The RPN's anchors at P2 are 8 px squares (and 8 sqrt2 x 4 sqrt2 rectangles).
    anchors = model.rpn.anchor_generator([torch.zeros(1, 1, 1, 1)] * 5)[0]
    torch.testing.assert_close(anchors[1], torch.tensor([-4.0, -4.0, 4.0, 4.0]))
