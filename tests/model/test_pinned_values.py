"""Values that shape and bound checks let through, pinned against plain torch written out here.

- FPN outputs on a fixed input: lateral 1x1 convs, nearest-neighbour 2x upsampling (an index
  repeat here, not ``F.interpolate``), 3x3 output convs, P6 by taking every second pixel of P5;
  with and without GroupNorm.
- GroupNorm of ``make_norm("gn", C)``: 32 groups, mean and biased variance per group, eps 1e-5.
- The documented defaults as literal values: ImageNet pixel mean/std in RGB order (and each
  channel standardised by its own), 32 GN groups, padding to multiples of 32.
- Each loss term on a tiny case worked out with ``math``: the mask loss is a *mean* over every
  RoI's M x M pixels (a per-RoI sum is M^2 times larger), cross entropy with unequal logits,
  smooth L1 on both sides of beta.
"""
import math

import pytest
import torch
from torch import nn

from maskrcnn.config import InputConfig, ModelConfig, load_config
from maskrcnn.model import build_model
from maskrcnn.model.backbone import make_norm
from maskrcnn.model.fpn import FPN
from maskrcnn.model.mask_head import mask_loss, target_boundaries
from maskrcnn.model.roi_heads import box_losses
from maskrcnn.model.rpn import box_regression_loss
from tests.model.helpers import TINY

torch.set_num_threads(1)


def _group_norm_by_hand(x, groups, weight, bias, eps=1e-5):
    # x [B, C, H, W]: every group of C / groups channels shares one mean and (biased) variance.
    B, C, H, W = x.shape
    g = x.reshape(B, groups, (C // groups) * H * W)
    mean = g.sum(-1, keepdim=True) / g.shape[-1]
    var = ((g - mean) ** 2).sum(-1, keepdim=True) / g.shape[-1]
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(B, C, H, W)
    return y * weight[None, :, None, None] + bias[None, :, None, None]


def _randomise(module, seed):
    # Non-trivial affine GN parameters (the defaults 1 and 0 would hide a swapped weight/bias).
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.dim() == 1 else 0.0))


def test_group_norm_has_32_groups_and_matches_a_hand_computation():
    norm = make_norm("gn", 64)
    _randomise(norm, 0)
    # Channels of very different scales: a wrong group count mixes them and changes every value.
    x = torch.randn(2, 64, 3, 5, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 10.0, 64)[None, :, None, None]
    torch.testing.assert_close(norm(x), _group_norm_by_hand(x, 32, norm.weight, norm.bias), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 32"):
        make_norm("gn", 48)


def _conv(x, conv):
    # A conv written out as a sum of shifted, weighted copies (no F.conv2d): [B, Ci, H, W] -> [B, Co, H, W].
    w = conv.weight  # [Co, Ci, k, k]
    k = w.shape[-1]
    p = k // 2
    xp = torch.zeros(x.shape[0], x.shape[1], x.shape[2] + 2 * p, x.shape[3] + 2 * p)
    xp[:, :, p:p + x.shape[2], p:p + x.shape[3]] = x
    out = torch.zeros(x.shape[0], w.shape[0], x.shape[2], x.shape[3])
    for dy in range(k):
        for dx in range(k):
            patch = xp[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
            out += torch.einsum("bchw,oc->bohw", patch, w[:, :, dy, dx])
    if conv.bias is not None:
        out += conv.bias[None, :, None, None]
    return out


def _conv_norm(x, m):
    y = _conv(x, m)
    if m.norm is not None:
        y = _group_norm_by_hand(y, 32, m.norm.weight, m.norm.bias)
    return y


@pytest.mark.parametrize("norm", ["", "gn"])
def test_fpn_outputs_on_a_fixed_input(norm):
    torch.manual_seed(3)
    fpn = FPN([32, 32, 64, 64], out_channels=32, norm=norm)
    if norm:
        for m in fpn.modules():
            if isinstance(m, nn.GroupNorm):
                _randomise(m, 4)
    else:
        with torch.no_grad():
            for m in fpn.modules():
                if isinstance(m, nn.Conv2d):
                    m.bias.normal_()  # zero at init: make the bias count
    g = torch.Generator().manual_seed(5)
    feats = [torch.randn(1, c, s, s, generator=g) for c, s in ((32, 16), (32, 8), (64, 4), (64, 2))]
    with torch.no_grad():
        got = fpn(feats)
        # Top-down: P5 from C5; each finer level adds the coarser sum repeated 2x2 (nearest).
        top = _conv_norm(feats[3], fpn.lateral[3])
        want = [_conv_norm(top, fpn.output[3])]
        for i in (2, 1, 0):
            up = top.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
            top = _conv_norm(feats[i], fpn.lateral[i]) + up
            want.insert(0, _conv_norm(top, fpn.output[i]))
        want.append(want[-1][:, :, ::2, ::2])  # P6: max-pool of kernel 1, stride 2
    assert [tuple(t.shape) for t in got] == [(1, 32, 16, 16), (1, 32, 8, 8), (1, 32, 4, 4), (1, 32, 2, 2), (1, 32, 1, 1)]
    for level, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"P{level + 2}")


def test_documented_input_defaults_are_literal_values():
    inp = InputConfig()
    assert inp.pixel_mean == (0.485, 0.456, 0.406)  # ImageNet RGB order (the first channel is red)
    assert inp.pixel_std == (0.229, 0.224, 0.225)
    assert inp.size_divisibility == 32 and inp.in_channels == 3
    assert ModelConfig().backbone.norm == "frozen_bn" and ModelConfig().fpn.top_block == "maxpool"


def test_each_channel_is_standardised_by_its_own_default_mean_and_std():
    # The defaults through the builder: a constant image (0.2, 0.5, 0.8) -> (v - mean_c) / std_c.
    keep = [o for o in TINY if not o.startswith(("model.input.pixel_", "model.input.in_channels"))]
    model = build_model(load_config(None, keep).model).eval()
    image = torch.tensor([0.2, 0.5, 0.8])[:, None, None].expand(3, 32, 32).contiguous()
    batch, _ = model.preprocess([image])
    want = [(0.2 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.8 - 0.406) / 0.225]
    for c in range(3):
        assert float(batch.tensor[0, c, 5, 5]) == pytest.approx(want[c], rel=1e-5)


def _bce(logit, target):
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_mask_loss_is_the_mean_over_every_roi_pixel_of_its_gt_class_channel():
    # Two RoIs, two classes, 2x2 masks. RoI 0 (class 1) and RoI 1 (class 0) with distinct logits;
    # the other class's channel holds +-9 and must not be read.
    logits = torch.full((2, 2, 2, 2), 9.0)
    logits[0, 1] = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    logits[1, 0] = torch.tensor([[-3.0, 1.5], [1.0, -0.5]])
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]]])
    terms = [_bce(l, t) for l, t in zip([2.0, -1.0, 0.5, 0.0, -3.0, 1.5, 1.0, -0.5], targets.flatten().tolist())]
    got = mask_loss(logits, torch.tensor([1, 0]), targets)
    assert float(got) == pytest.approx(sum(terms) / 8, rel=1e-6)  # 8 = 2 RoIs x 2 x 2 pixels


def test_classification_loss_with_unequal_logits():
    # Cross entropy: logsumexp(logits) - logit of the true class, averaged over the RoIs.
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0]])
    classes = torch.tensor([0, 0, 2])
    want = sum(math.log(sum(math.exp(v) for v in row)) - row[c]
               for row, c in zip(logits.tolist(), classes.tolist())) / 3
    out = box_losses(logits, torch.zeros(3, 8), classes, torch.tensor([[0.0, 0, 10, 10]] * 3),
                     torch.tensor([[0.0, 0, 10, 10]] * 3), (10.0, 10.0, 5.0, 5.0), 0.0)
    assert float(out["loss_cls"]) == pytest.approx(want, rel=1e-6)
    assert float(out["loss_box"]) == 0.0  # proposals equal their GT: zero targets, zero deltas


def test_smooth_l1_on_both_sides_of_beta():
    # beta = 0.5: |d| < beta -> 0.5 d^2 / beta; else |d| - beta / 2. Summed over all deltas.
    pred = torch.tensor([[0.2, -0.3, 1.0, -2.0]])
    got = box_regression_loss(pred, torch.zeros_like(pred), 0.5)
    want = 0.5 * 0.04 / 0.5 + 0.5 * 0.09 / 0.5 + (1.0 - 0.25) + (2.0 - 0.25)
    assert float(got) == pytest.approx(want, rel=1e-6)
    assert float(box_regression_loss(pred, torch.zeros_like(pred), 0.0)) == pytest.approx(3.5, rel=1e-6)


def test_target_boundaries_by_hand():
    # A 2x2 square in a 5x5 grid: the boundary is every pixel whose 3x3 neighbourhood (clipped to
    # the grid) holds both values: the square itself and its 12 outer neighbours (a 4x4 ring).
    t = torch.zeros(1, 5, 5)
    t[0, 1:3, 1:3] = 1.0
    want = torch.zeros(5, 5, dtype=torch.bool)
    want[0:4, 0:4] = True
    assert torch.equal(target_boundaries(t)[0], want)
    # All foreground or all background: no boundary.
    assert not target_boundaries(torch.ones(1, 4, 4)).any()
    assert not target_boundaries(torch.zeros(1, 4, 4)).any()


def test_mask_loss_boundary_weight_is_a_weighted_mean_by_hand():
    # One RoI, 1 class, a 1x3 strip: target [1, 0, 0] -> boundary pixels 0 and 1 (pixel 2 sees
    # only 0s). Weight 3 on them: (3*b0 + 3*b1 + b2) / 7.
    logits = torch.tensor([[[[0.5, -1.0, 2.0]]]])
    targets = torch.tensor([[[1.0, 0.0, 0.0]]])
    b = [_bce(0.5, 1.0), _bce(-1.0, 0.0), _bce(2.0, 0.0)]
    got = mask_loss(logits, torch.tensor([0]), targets, boundary_weight=2.0)
    assert float(got) == pytest.approx((3 * b[0] + 3 * b[1] + b[2]) / 7, rel=1e-6)
    assert float(mask_loss(logits, torch.tensor([0]), targets)) == pytest.approx(sum(b) / 3, rel=1e-6)
