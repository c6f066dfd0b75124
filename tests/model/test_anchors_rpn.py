import math

import torch

from maskrcnn.model.anchors import AnchorGenerator, cell_anchors
from maskrcnn.model.box_coder import SCALE_CLAMP, decode_boxes, encode_boxes
from maskrcnn.model.matching import BACKGROUND, FOREGROUND, IGNORE, match_boxes, sample_balanced
from maskrcnn.model.rpn import RPNHead, find_top_proposals


def test_cell_anchors_sizes_and_ratios():
    a = cell_anchors([8.0, 16.0], [0.5, 1.0, 2.0])
    w = a[:, 2] - a[:, 0]
    h = a[:, 3] - a[:, 1]
    torch.testing.assert_close(w * h, torch.tensor([64.0] * 3 + [256.0] * 3))
    torch.testing.assert_close(h / w, torch.tensor([0.5, 1.0, 2.0] * 2))
    torch.testing.assert_close(a[:, :2] + a[:, 2:], torch.zeros(6, 2))  # centred at 0


def test_grid_anchor_order_and_offset():
    for offset in (0.0, 0.5):
        gen = AnchorGenerator([8, 16, 32, 64, 128], [0.5, 1.0, 2.0], [4, 8, 16, 32, 64], offset=offset)
        feats = [torch.zeros(1, 1, 3, 5), torch.zeros(1, 1, 2, 2)] + [torch.zeros(1, 1, 1, 1)] * 3
        anchors = gen(feats)
        assert anchors[0].shape == (3 * 5 * 3, 4)
        centres = (anchors[0][:, :2] + anchors[0][:, 2:]) / 2
        # layout (y, x, a): anchor (y=2, x=3, a=1) sits at ((3 + offset) * 4, (2 + offset) * 4)
        k = (2 * 5 + 3) * 3 + 1
        torch.testing.assert_close(centres[k], torch.tensor([(3 + offset) * 4, (2 + offset) * 4]))


def test_box_coder_round_trip_and_clamp():
    ref = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 4.0, 4.0]])
    tgt = torch.tensor([[12.0, 18.0, 40.0, 50.0], [1.0, 2.0, 3.0, 9.0]])
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        d = encode_boxes(ref, tgt, weights)
        torch.testing.assert_close(decode_boxes(d, ref, weights), tgt)
    huge = decode_boxes(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), ref[:1], (1, 1, 1, 1))
    w = huge[0, 2] - huge[0, 0]
    assert torch.isfinite(huge).all() and math.isclose(float(w), 20.0 * math.exp(SCALE_CLAMP), rel_tol=1e-4)
    # class-specific deltas: [N, 4K] -> [N, 4K]
    assert decode_boxes(torch.zeros(2, 12), ref, (10, 10, 5, 5)).shape == (2, 12)


def test_match_boxes_thresholds_low_quality_and_chunks():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],    # IoU 1 with gt 0
        [0.0, 0.0, 10.0, 14.0],    # IoU 0.714 with gt 0
        [0.0, 0.0, 10.0, 20.0],    # 0.5: ignored between 0.3 and 0.7
        [100.0, 100.0, 110.0, 110.0],  # background
        [50.0, 50.0, 65.0, 65.0],  # 0.444 with gt 1: its best box -> low-quality foreground
    ])
    matched, labels = match_boxes(gt, boxes, 0.7, 0.3)
    assert labels.tolist() == [FOREGROUND, FOREGROUND, IGNORE, BACKGROUND, IGNORE]
    matched_lq, labels_lq = match_boxes(gt, boxes, 0.7, 0.3, allow_low_quality=True)
    assert labels_lq.tolist() == [FOREGROUND, FOREGROUND, IGNORE, BACKGROUND, FOREGROUND]
    assert matched_lq[4] == 1 and matched_lq[0] == 0
    m2, l2 = match_boxes(gt, boxes, 0.7, 0.3, allow_low_quality=True, max_elements=2)  # 1 box per chunk
    assert torch.equal(m2, matched_lq) and torch.equal(l2, labels_lq)
    _, empty = match_boxes(torch.zeros(0, 4), boxes, 0.7, 0.3, allow_low_quality=True)
    assert (empty == BACKGROUND).all()


def test_sample_balanced_fraction():
    labels = torch.tensor([1] * 50 + [0] * 500 + [-1] * 10, dtype=torch.int8)
    pos, neg = sample_balanced(labels, 64, 0.25)
    assert pos.numel() == 16 and neg.numel() == 48
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all() and pos.unique().numel() == 16
    pos, neg = sample_balanced(torch.tensor([1, 0, 0], dtype=torch.int8), 64, 0.5)
    assert pos.numel() == 1 and neg.numel() == 2


def test_rpn_head_layout_matches_anchor_order():
    head = RPNHead(4, num_anchors=3)
    x = torch.randn(2, 4, 3, 5)
    logits, deltas = head([x])
    t = torch.relu(head.conv(x))
    raw = head.objectness_logits(t)  # [B, A, H, W]
    raw_d = head.anchor_deltas(t).view(2, 3, 4, 3, 5)
    b, y, xx, a = 1, 2, 4, 2
    k = (y * 5 + xx) * 3 + a
    torch.testing.assert_close(logits[0][b, k], raw[b, a, y, xx])
    torch.testing.assert_close(deltas[0][b, k], raw_d[b, a, :, y, xx])


def _decode_by_hand(d, a):
    """The box-coder formulas with weights (1, 1, 1, 1), written out (not ``decode_boxes``)."""
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    cx, cy = a[:, 0] + w / 2 + d[:, 0] * w, a[:, 1] + h / 2 + d[:, 1] * h
    pw, ph = w * torch.exp(d[:, 2]), h * torch.exp(d[:, 3])
    return torch.stack([cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2], 1)


def _nms_by_hand(boxes, scores, thr):
    """Greedy NMS one box at a time in float64 (not ``maskrcnn.ops.nms``)."""
    b = boxes.double().tolist()
    order = sorted(range(len(b)), key=lambda i: (-float(scores[i]), i))

    def iou(p, q):
        iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        inter = iw * ih
        union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
        return inter / union if union > 0 else 0.0

    kept = []
    for i in order:
        if all(iou(b[i], b[k]) <= thr for k in kept):
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


def _proposals_reference(logits, deltas, anchors, sizes, pre, post, thr):
    """The obvious loops over images and levels, with decoding and NMS written out by hand."""
    out = []
    for b, (h, w) in enumerate(sizes):
        boxes_all, scores_all = [], []
        for lg, dl, an in zip(logits, deltas, anchors):
            s, i = lg[b].topk(min(pre, lg.shape[1]))
            bx = _decode_by_hand(dl[b, i], an[i])
            bx[:, 0::2] = bx[:, 0::2].clamp(0, w)
            bx[:, 1::2] = bx[:, 1::2].clamp(0, h)
            ok = (bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1])
            bx, s = bx[ok], s[ok]
            k = _nms_by_hand(bx, s, thr)
            boxes_all.append(bx[k])
            scores_all.append(s[k])
        bx, s = torch.cat(boxes_all), torch.cat(scores_all)
        order = s.argsort(descending=True)[:post]
        out.append(bx[order])
    return out


def test_find_top_proposals_matches_per_image_per_level_loops():
    torch.manual_seed(0)
    gen = AnchorGenerator([8, 16, 32, 64, 128], [0.5, 1.0, 2.0], [4, 8, 16, 32, 64])
    shapes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    anchors = gen([torch.zeros(1, 1, h, w) for h, w in shapes])
    logits = [torch.randn(2, a.shape[0]) for a in anchors]
    deltas = [torch.randn(2, a.shape[0], 4) * 0.3 for a in anchors]
    sizes = [(64, 80), (50, 70)]
    got = find_top_proposals(logits, deltas, anchors, sizes, 60, 100, 0.7, 0.0)
    want = _proposals_reference(logits, deltas, anchors, sizes, 60, 100, 0.7)
    assert len(got) == 2
    for g, w, (h, wd) in zip(got, want, sizes):
        assert g.shape[0] == 100
        torch.testing.assert_close(g, w)
        assert (g[:, 2] <= wd).all() and (g[:, 3] <= h).all() and (g >= 0).all()


def test_proposals_of_a_batch_equal_each_image_alone():
    g = torch.Generator().manual_seed(11)
    B, sizes = 3, [3000, 700, 180]
    logits = [torch.randn(B, n, generator=g) for n in sizes]
    deltas = [0.2 * torch.randn(B, n, 4, generator=g) for n in sizes]
    anchors = []
    for n, s in zip(sizes, (8, 16, 32)):
        c = torch.rand(n, 2, generator=g) * 200
        anchors.append(torch.cat([c - s / 2, c + s / 2], 1))
    image_sizes = [(200, 200), (180, 150), (120, 200)]
    batch = find_top_proposals(logits, deltas, anchors, image_sizes, 1000, 300, 0.7, 1.0)
    for i in range(B):
        alone = find_top_proposals([x[i : i + 1] for x in logits], [d[i : i + 1] for d in deltas], anchors,
                                   image_sizes[i : i + 1], 1000, 300, 0.7, 1.0)[0]
        assert 0 < len(alone) <= 300
        assert torch.equal(batch[i], alone)
