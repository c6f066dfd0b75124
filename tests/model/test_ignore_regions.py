"""Ignore regions (ground truth labelled IGNORE_LABEL, e.g. uncertain pseudo-labels) give no loss.

Hand-built cases: which anchors / proposals an ignore region takes out of sampling (intersection
over the box's own area >= the threshold, positives kept), the RPN objectness loss with and
without the region (a confident "object" logit inside it would cost ~10 as a negative), the RoI
sampling, and the whole model taking an image whose only ground truth is an ignore region.
"""
import math

import pytest
import torch

from maskrcnn.model import build_model
from maskrcnn.model.matching import BACKGROUND, FOREGROUND, IGNORE, ignore_inside
from maskrcnn.model.roi_heads import RoIHeads
from maskrcnn.model.rpn import rpn_losses
from maskrcnn.structures import IGNORE_LABEL
from tests.model.helpers import disks_sample, tiny_model_config

REGION = torch.tensor([[0.0, 0.0, 20.0, 20.0]])


def test_ignore_inside_by_intersection_over_the_box_area():
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],    # wholly inside: IoF 1 -> ignored
        [10.0, 0.0, 30.0, 10.0],   # half inside: intersection 10 x 10 = 100 of 200 -> IoF 0.5 -> ignored (>=)
        [15.0, 15.0, 25.0, 25.0],  # intersection 5 x 5 = 25 of 100 -> IoF 0.25 -> stays background
        [2.0, 2.0, 12.0, 12.0],    # inside, but a positive: keeps its label
        [50.0, 50.0, 60.0, 60.0],  # far away: stays background
        [1.0, 1.0, 9.0, 9.0],      # inside and already ignored (between IoU thresholds): stays ignored
    ])
    labels = torch.tensor([[BACKGROUND, BACKGROUND, BACKGROUND, FOREGROUND, BACKGROUND, IGNORE]], dtype=torch.int8)
    got = ignore_inside(labels, boxes, REGION[None], None, 0.5)
    assert got.tolist() == [[IGNORE, IGNORE, BACKGROUND, FOREGROUND, BACKGROUND, IGNORE]]
    assert labels.tolist()[0][0] == BACKGROUND  # the input is not modified
    # A stricter threshold keeps the half-inside box as background; no regions change nothing.
    assert ignore_inside(labels, boxes, REGION[None], None, 0.6).tolist()[0][1] == BACKGROUND
    assert ignore_inside(labels, boxes, torch.zeros((1, 0, 4)), None, 0.5).tolist() == labels.tolist()


def test_ignore_inside_keeps_each_image_to_its_own_regions():
    # Two images, the same boxes (anchors): image 0 has the region (and a padding row that would
    # cover everything if it were read), image 1 has only padding.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    regions = torch.tensor([[[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 100.0, 100.0]],
                            [[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 100.0, 100.0]]])
    valid = torch.tensor([[True, False], [False, False]])
    labels = torch.zeros((2, 2), dtype=torch.int8)
    got = ignore_inside(labels, boxes, regions, valid, 0.5)
    assert got.tolist() == [[IGNORE, BACKGROUND], [BACKGROUND, BACKGROUND]]
    # per-image boxes (proposals, Tensor[B, A, 4]) give the same as shared boxes
    assert ignore_inside(labels, boxes.expand(2, 2, 4), regions, valid, 0.5).tolist() == got.tolist()


def test_ignore_inside_in_small_chunks_gives_the_same_labels():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(500, 2, generator=g) * 20], dim=1)
    regions = torch.tensor([[10.0, 10.0, 50.0, 40.0], [60.0, 0.0, 100.0, 30.0]])
    labels = torch.zeros((1, 500), dtype=torch.int8)
    whole = ignore_inside(labels, boxes, regions[None], None, 0.5)
    assert ignore_inside(labels, boxes, regions[None], None, 0.5, max_elements=7).tolist() == whole.tolist()
    assert 0 < int((whole == IGNORE).sum()) < 500
    # by hand for one box: (12, 12, 20, 20) lies inside region 0
    one = ignore_inside(torch.zeros((1, 1), dtype=torch.int8), torch.tensor([[12.0, 12.0, 20.0, 20.0]]),
                        regions[None], None, 0.5)
    assert one.tolist() == [[IGNORE]]


# Anchors: 0 = the GT (positive), 1 far away (negative), 2 inside the ignore region (negative
# without it). batch 16, fraction 0.5: everything that can be sampled is.
ANCHORS = torch.tensor([[40.0, 40.0, 50.0, 50.0], [80.0, 0.0, 90.0, 10.0], [2.0, 2.0, 12.0, 12.0]])
GT = torch.tensor([[40.0, 40.0, 50.0, 50.0]])


def _rpn_cls_loss(ignore_boxes):
    # Logits 0 for anchors 0 and 1 (each costs ln 2), +10 for anchor 2: as a negative it would
    # cost softplus(10) = 10.0000454.
    logits = torch.tensor([[0.0, 0.0, 10.0]])
    deltas = torch.zeros(1, 3, 4)
    out = rpn_losses(logits, deltas, ANCHORS, [GT], 0.7, 0.3, 16, 0.5, 1.0 / 9.0, ignore_boxes=ignore_boxes,
                     ignore_iof_thresh=0.5)
    return float(out["loss_rpn_cls"])


def test_rpn_takes_no_loss_inside_an_ignore_region():
    norm = 16 * 1
    assert _rpn_cls_loss([REGION]) == pytest.approx(2 * math.log(2) / norm, rel=1e-6)
    assert _rpn_cls_loss(None) == pytest.approx((2 * math.log(2) + math.log1p(math.exp(10.0))) / norm, rel=1e-6)


def test_roi_sampling_skips_proposals_inside_an_ignore_region():
    heads = RoIHeads(None, None, None, None, None, num_classes=1, batch_size_per_image=64, positive_fraction=1.0,
                     fg_iou_thresh=0.5, bg_iou_thresh=0.5, proposal_append_gt=True, ignore_iof_thresh=0.5)
    proposals = torch.tensor([
        [40.0, 40.0, 50.0, 51.0],  # foreground (IoU 100 / 110 with the GT)
        [80.0, 0.0, 90.0, 10.0],   # background
        [2.0, 2.0, 12.0, 12.0],    # inside the ignore region: not sampled
        [15.0, 0.0, 35.0, 10.0],   # a quarter inside (IoF 50 / 200): background
    ])
    rois, classes, _, _ = heads.sample_proposals([proposals], [GT], [torch.tensor([0])], ignore_boxes=[REGION])
    got = {tuple(b[1:]): c for b, c in zip(rois.tolist(), classes.tolist())}
    assert got == {(40.0, 40.0, 50.0, 51.0): 0, (80.0, 0.0, 90.0, 10.0): 1, (15.0, 0.0, 35.0, 10.0): 1,
                   (40.0, 40.0, 50.0, 50.0): 0}
    rois, classes, _, _ = heads.sample_proposals([proposals], [GT], [torch.tensor([0])])
    assert (2.0, 2.0, 12.0, 12.0) in {tuple(b[1:]) for b in rois.tolist()}  # sampled as background without it
    # Two images, the region in the first only: the second image's proposal there is sampled.
    rois, _, _, _ = heads.sample_proposals([proposals, proposals], [GT, GT], [torch.tensor([0])] * 2,
                                           ignore_boxes=[REGION, torch.zeros((0, 4))])
    per_image = [{tuple(b[1:]) for b in rois.tolist() if b[0] == i} for i in (0, 1)]
    assert (2.0, 2.0, 12.0, 12.0) not in per_image[0] and (2.0, 2.0, 12.0, 12.0) in per_image[1]
    assert len(per_image[0]) == 4 and len(per_image[1]) == 5


def test_model_trains_on_an_image_whose_only_ground_truth_is_an_ignore_region():
    torch.manual_seed(0)
    model = build_model(tiny_model_config()).train()
    image, gt = disks_sample(64, 80)
    as_ignore = gt.replace(labels=torch.full_like(gt.labels, IGNORE_LABEL))
    losses = {k: v.detach() for k, v in model([image], [as_ignore]).items()}
    # No object: no positive anchor or RoI, so no box and no mask loss; the objectness and class
    # losses come from the background outside the disks only.
    assert float(losses["loss_rpn_box"]) == 0.0 and float(losses["loss_box"]) == 0.0
    assert float(losses["loss_mask"]) == 0.0
    assert all(torch.isfinite(v) for v in losses.values())
    # The same disks as objects do give box and mask losses.
    losses = {k: v.detach() for k, v in model([image], [gt]).items()}
    assert float(losses["loss_rpn_box"]) > 0 and float(losses["loss_mask"]) > 0


def test_model_sees_only_the_real_objects_and_the_regions_apart():
    torch.manual_seed(0)
    model = build_model(tiny_model_config("model.input.scale=2.0")).train()
    image, gt = disks_sample(64, 80)
    mixed = gt.replace(labels=torch.tensor([0, IGNORE_LABEL, 1]))
    seen = {}
    rpn_forward = model.rpn.forward

    def spy(features, image_sizes, gt_boxes=None, ignore_boxes=None):
        seen["gt"], seen["ignore"] = gt_boxes[0].clone(), ignore_boxes[0].clone()
        return rpn_forward(features, image_sizes, gt_boxes, ignore_boxes)

    model.rpn.forward = spy
    model([image], [mixed])
    torch.testing.assert_close(seen["gt"], gt.boxes[[0, 2]] * 2)  # in the resized (2x) image
    torch.testing.assert_close(seen["ignore"], gt.boxes[[1]] * 2)


def test_labels_below_the_ignore_label_are_refused():
    model = build_model(tiny_model_config()).train()
    image, gt = disks_sample(64, 80)
    with pytest.raises(ValueError, match="ignore region"):
        model([image], [gt.replace(labels=torch.tensor([0, -2, 1]))])


@pytest.mark.parametrize("key", ["rpn", "roi_heads"])
@pytest.mark.parametrize("value", [0.0, 1.5, -0.1])
def test_ignore_iof_thresh_outside_0_1_is_a_config_error(key, value):
    from maskrcnn.config import ConfigError

    with pytest.raises(ConfigError, match=f"model.{key}.ignore_iof_thresh"):
        build_model(tiny_model_config(f"model.{key}.ignore_iof_thresh={value}"))
    build_model(tiny_model_config(f"model.{key}.ignore_iof_thresh=1.0"))  # the bound itself is fine
