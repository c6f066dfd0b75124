"""Batched target assignment, sampling, mask targets and pooling equal the same work done one image
at a time (the loops they replaced), given the same random keys."""
import pytest
import torch

from maskrcnn.model.box_coder import encode_boxes
from maskrcnn.model.mask_head import build_mask_targets, mask_targets
from maskrcnn.model.matching import (
    BACKGROUND,
    FOREGROUND,
    IGNORE,
    match_boxes,
    match_boxes_batched,
    pad_boxes,
    sample_balanced_masks,
)
from maskrcnn.model.roi_heads import MultiLevelRoIPooler
from maskrcnn.model.rpn import RPN_BOX_WEIGHTS, box_regression_loss, rpn_losses
from maskrcnn.structures import MaskList


def _boxes(n, size=64.0, seed=0, lo=2.0, hi=24.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * (size - hi)
    wh = lo + torch.rand(n, 2, generator=g) * (hi - lo)
    return torch.cat([xy, xy + wh], 1)


def _anchors(size=64, stride=4, sizes=(6.0, 12.0)):
    c = (torch.arange(size // stride) * stride + stride / 2).float()
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    out = []
    for s in sizes:
        out.append(torch.stack([xx - s / 2, yy - s / 2, xx + s / 2, yy + s / 2], -1).reshape(-1, 4))
    return torch.cat(out)


GT_COUNTS = (5, 0, 12, 1)  # an image without GT and one with a single GT


@pytest.mark.parametrize("low_quality", [False, True])
@pytest.mark.parametrize("max_elements", [1 << 24, 97])  # one chunk, and many uneven chunks
def test_match_boxes_batched_equals_per_image(low_quality, max_elements):
    anchors = _anchors()
    gts = [_boxes(n, seed=i) for i, n in enumerate(GT_COUNTS)]
    gt, valid = pad_boxes(gts)
    assert gt.shape == (4, 12, 4) and valid.sum(1).tolist() == list(GT_COUNTS)
    matched, labels = match_boxes_batched(gt, valid, anchors, 0.5, 0.3, allow_low_quality=low_quality,
                                          max_elements=max_elements)
    assert matched.shape == labels.shape == (4, anchors.shape[0])
    for i, g in enumerate(gts):
        m, lab = match_boxes(g, anchors, 0.5, 0.3, allow_low_quality=low_quality)
        assert torch.equal(labels[i], lab)
        fg = lab == FOREGROUND
        assert torch.equal(matched[i][fg], m[fg])  # where a match is used
    assert (labels[1] == BACKGROUND).all()
    assert (labels == FOREGROUND).any() and (labels == IGNORE).any()


@pytest.mark.parametrize("batched", [False, True])
def test_low_quality_matching_never_promotes_boxes_that_do_not_overlap(batched):
    # Image 0's second GT box lies beyond every anchor (IoU 0 with all): low-quality matching must
    # not make every anchor its match. Its first GT box's best anchors are promoted.
    anchors = _anchors(size=32, stride=8, sizes=(6.0,))
    gts = [torch.tensor([[3.0, 3.0, 10.0, 11.0], [100.0, 100.0, 110.0, 110.0]]), torch.tensor([[200.0, 0.0, 210.0, 8.0]])]
    if batched:
        gt, valid = pad_boxes(gts)
        _, labels = match_boxes_batched(gt, valid, anchors, 0.7, 0.3, allow_low_quality=True)
    else:
        labels = torch.stack([match_boxes(g, anchors, 0.7, 0.3, allow_low_quality=True)[1] for g in gts])
    assert int((labels[0] == FOREGROUND).sum()) >= 1  # the first box's best anchor(s)
    assert int((labels[0] == FOREGROUND).sum()) < 4
    assert not (labels[1] == FOREGROUND).any() and (labels[1] == BACKGROUND).all()


def test_match_boxes_batched_per_image_boxes_and_padding():
    gts = [_boxes(n, seed=10 + i) for i, n in enumerate((4, 7, 0))]
    props = [torch.cat([_boxes(30, seed=20 + i), g]) for i, g in enumerate(gts)]  # proposals + GT
    props[1] = props[1][:9]  # uneven lengths: padding
    gt, gv = pad_boxes(gts)
    pb, pv = pad_boxes(props)
    matched, labels = match_boxes_batched(gt, gv, pb, 0.5, 0.5, box_valid=pv)
    for i, (g, p) in enumerate(zip(gts, props)):
        m, lab = match_boxes(g, p, 0.5, 0.5)
        n = p.shape[0]
        assert torch.equal(labels[i, :n], lab)
        assert (labels[i, n:] == IGNORE).all()
        assert torch.equal(matched[i, :n][lab == FOREGROUND], m[lab == FOREGROUND])


def test_sample_balanced_masks_rows_are_independent_and_bounded():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(-1, 2, (5, 300), generator=g).to(torch.int8)
    labels[1] = BACKGROUND  # no foreground at all
    labels[2, :3] = FOREGROUND
    labels[2, 3:] = IGNORE  # fewer candidates than the quota
    keys = torch.rand(5, 300, generator=g)
    pos, neg = sample_balanced_masks(labels, 64, 0.25, keys=keys)
    for b in range(5):
        p1, n1 = sample_balanced_masks(labels[b : b + 1], 64, 0.25, keys=keys[b : b + 1])
        assert torch.equal(pos[b], p1[0]) and torch.equal(neg[b], n1[0])
        assert (labels[b][pos[b]] == FOREGROUND).all() and (labels[b][neg[b]] == BACKGROUND).all()
        npos = int((labels[b] == FOREGROUND).sum())
        assert int(pos[b].sum()) == min(npos, 16)
        assert int(neg[b].sum()) == min(int((labels[b] == BACKGROUND).sum()), 64 - int(pos[b].sum()))
        # the smallest keys among the candidates win
        rest = keys[b][(labels[b] == FOREGROUND) & ~pos[b]]
        if pos[b].any() and rest.numel():
            assert keys[b][pos[b]].max() <= rest.min()
    assert int(pos[2].sum()) == 3 and int(neg[2].sum()) == 0


def test_sample_balanced_masks_is_uniform():
    labels = torch.zeros(1, 10, dtype=torch.int8)  # 10 background candidates, 3 taken per draw
    g = torch.Generator().manual_seed(1)
    hits = torch.zeros(10)
    for _ in range(2000):
        _, neg = sample_balanced_masks(labels, 3, 0.0, generator=g)
        hits += neg[0].float()
    freq = hits / 2000
    assert (freq - 0.3).abs().max() < 0.05


def test_rpn_losses_batched_equal_per_image_reference():
    anchors = _anchors()
    B, A = 4, anchors.shape[0]
    gts = [_boxes(n, seed=i) for i, n in enumerate(GT_COUNTS)]
    torch.manual_seed(0)
    logits = torch.randn(B, A, requires_grad=True)
    deltas = (0.1 * torch.randn(B, A, 4)).requires_grad_()
    got = rpn_losses(logits, deltas, anchors, gts, 0.5, 0.3, 32, 0.5, 1.0 / 9, generator=torch.Generator().manual_seed(5))
    # Reference: each image alone, with the same keys (rpn_losses draws rand((B, A)) from the generator).
    keys = torch.rand((B, A), generator=torch.Generator().manual_seed(5))
    cls_sum, box_sum = 0.0, 0.0
    for b, g in enumerate(gts):
        m, lab = match_boxes(g, anchors, 0.5, 0.3, allow_low_quality=True)
        pos, neg = sample_balanced_masks(lab[None], 32, 0.5, keys=keys[b : b + 1])
        pos, neg = pos[0], neg[0]
        sel = pos | neg
        cls_sum = cls_sum + torch.nn.functional.binary_cross_entropy_with_logits(
            logits[b][sel], pos[sel].float(), reduction="sum")
        if pos.any():
            t = encode_boxes(anchors[pos], g[m[pos]], RPN_BOX_WEIGHTS)
            box_sum = box_sum + box_regression_loss(deltas[b][pos], t, 1.0 / 9)
    norm = 32.0 * B
    torch.testing.assert_close(got["loss_rpn_cls"], cls_sum / norm)
    torch.testing.assert_close(got["loss_rpn_box"], box_sum / norm)
    g1 = torch.autograd.grad(got["loss_rpn_cls"] + got["loss_rpn_box"], [logits, deltas])
    g2 = torch.autograd.grad(cls_sum / norm + box_sum / norm, [logits, deltas])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def _mask_list(n, H, W, seed):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    cy, cx = torch.randint(4, H - 4, (n,), generator=g), torch.randint(4, W - 4, (n,), generator=g)
    r = torch.randint(2, 7, (n,), generator=g)
    dense = ((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) < (r ** 2)[:, None, None]
    return MaskList.from_dense(dense)


def test_build_mask_targets_equals_each_image_alone():
    masks = [_mask_list(6, 40, 50, 0), _mask_list(3, 60, 30, 1), _mask_list(9, 32, 32, 2)]
    assert len({tuple(m.crops.shape[1:]) for m in masks}) > 1  # crops of different sizes get padded
    g = torch.Generator().manual_seed(3)
    image = torch.tensor([0, 2, 1, 0, 2, 2, 1, 0])
    gt = torch.stack([torch.randint(0, len(masks[i]), (1,), generator=g)[0] for i in image.tolist()])
    boxes = masks[0].tight_boxes().new_zeros((len(image), 4))
    for k, (i, j) in enumerate(zip(image.tolist(), gt.tolist())):
        boxes[k] = masks[i].tight_boxes()[j].float() + torch.randn(4, generator=g) * 2  # jittered RoIs
    got = build_mask_targets(masks, image, gt, boxes, 14)
    for k, (i, j) in enumerate(zip(image.tolist(), gt.tolist())):
        want = mask_targets(masks[i], gt[k : k + 1], boxes[k : k + 1], 14)
        assert torch.equal(got[k : k + 1], want)
    assert got.sum() > 0


def test_pooler_rois_tensor_and_bf16_features():
    torch.manual_seed(0)
    feats = [torch.randn(2, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    boxes = [_boxes(7, seed=1, hi=60.0), _boxes(5, seed=2, hi=60.0)]
    pooler = MultiLevelRoIPooler(7, (4, 8, 16, 32), sampling_ratio=2, canonical_size=32.0)
    from_list = pooler(feats, boxes)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    assert torch.equal(pooler(feats, rois), from_list)
    # bfloat16 features pool in float32 inside roi_align: the same as pooling float32 copies and rounding.
    fb = [f.to(torch.bfloat16).requires_grad_() for f in feats]
    ff = [f.detach().float().requires_grad_() for f in fb]
    out_b = pooler(fb, rois)
    out_f = pooler(ff, rois)
    assert out_b.dtype == torch.bfloat16
    assert torch.equal(out_b, out_f.to(torch.bfloat16))
    grad = torch.randn(out_f.shape).to(torch.bfloat16)
    gb = torch.autograd.grad(out_b, fb, grad, allow_unused=True)
    gf = torch.autograd.grad(out_f, ff, grad.float(), allow_unused=True)
    assert sum(a is not None for a in gb) >= 2  # several levels pooled
    for a, b in zip(gb, gf):
        assert (a is None and b is None) or torch.equal(a, b.to(torch.bfloat16))
    assert pooler(feats, rois[:0]).shape == (0, 4, 7, 7)
