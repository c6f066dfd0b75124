"""RPN proposal selection: NMS per image (what the RPN does) vs one batched NMS over the whole batch.

Batched NMS cost grows with the square of the boxes given at once; one call over a batch of B
images is ~B times the work of B calls of one image each (the results are identical: boxes of
different images never suppress each other).

    python -m bench.proposals [--device cuda] [--batch 8] [--size 512] [--pre-nms 2000]
"""
from __future__ import annotations

import argparse
import time

import torch


from maskrcnn.model.rpn import find_top_proposals
from maskrcnn.ops import batched_nms


def joint(logits, deltas, anchors, sizes, pre, post, thresh):
    """The whole batch in one batched_nms call (image x level groups)."""
    B = logits[0].shape[0]
    boxes_l, scores_l, groups_l = [], [], []
    for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
        from maskrcnn.model.box_coder import decode_boxes
        from maskrcnn.model.rpn import RPN_BOX_WEIGHTS

        k = min(pre, lg.shape[1])
        s, idx = lg.float().topk(k, dim=1)
        d = dl.gather(1, idx[..., None].expand(B, k, 4))
        boxes_l.append(decode_boxes(d.reshape(-1, 4), an[idx.reshape(-1)], RPN_BOX_WEIGHTS).reshape(B, k, 4))
        scores_l.append(s)
        groups_l.append(torch.arange(B, device=lg.device)[:, None] * len(logits) + lvl + 0 * idx)
    boxes, scores, groups = torch.cat(boxes_l, 1), torch.cat(scores_l, 1), torch.cat(groups_l, 1)
    h, w = sizes[0]
    boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h), boxes[..., 2].clamp(0, w),
                         boxes[..., 3].clamp(0, h)], -1).reshape(-1, 4)
    keep = batched_nms(boxes, scores.reshape(-1), groups.reshape(-1), thresh)
    return boxes[keep]


def timeit(fn, device, repeat):
    times = []
    for _ in range(repeat + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[len(times[1:]) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=512, help="square input size (pixels)")
    p.add_argument("--pre-nms", type=int, default=2000)
    p.add_argument("--post-nms", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    B, S = a.batch, a.size
    strides, sizes = (4, 8, 16, 32, 64), (8, 16, 32, 64, 128)
    logits, deltas, anchors = [], [], []
    for st, sz in zip(strides, sizes):
        n = (S // st) ** 2 * 3
        logits.append(torch.randn(B, n, generator=g).to(dev))
        deltas.append((0.1 * torch.randn(B, n, 4, generator=g)).to(dev))
        c = torch.rand(n, 2, generator=g) * S
        anchors.append(torch.cat([c - sz / 2, c + sz / 2], 1).to(dev))
    image_sizes = [(S, S)] * B
    args = (logits, deltas, anchors, image_sizes, a.pre_nms, a.post_nms, 0.7)
    t_ours = timeit(lambda: find_top_proposals(*args, 0.0), dev, a.repeat)
    t_joint = timeit(lambda: joint(*args), dev, a.repeat)
    print(f"device {dev}, batch {B} of {S}x{S}, {a.pre_nms} boxes per level before NMS")
    print(f"per image (ours)   {t_ours * 1e3:9.1f} ms")
    print(f"whole batch        {t_joint * 1e3:9.1f} ms")
    print(f"ratio              {t_joint / t_ours:9.1f}x")


if __name__ == "__main__":
    main()
