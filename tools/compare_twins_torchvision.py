"""Check the pure-PyTorch twins against torchvision.ops (reference only, never a dependency).

Run under the torchvision venv with the twins forced:
    PYTHONPATH=. MASKRCNN_FORCE_FALLBACK=1 /work/tvenv/bin/python tools/compare_twins_torchvision.py
Prints one line per case and exits non-zero on any mismatch.
"""
import itertools
import sys

import torch
import torchvision

from maskrcnn.ops import nms_reference, roi_align_reference
from maskrcnn.structures import box_iou


def random_rois(g, K, N, H, W, scale, dtype):
    # Boxes in image pixels (1/scale of the feature map), some outside the image, some tiny or empty.
    ih, iw = H / scale, W / scale
    x1 = torch.rand(K, generator=g, dtype=torch.float64) * iw * 1.4 - iw * 0.2
    y1 = torch.rand(K, generator=g, dtype=torch.float64) * ih * 1.4 - ih * 0.2
    w = torch.rand(K, generator=g, dtype=torch.float64) * iw * 0.6
    h = torch.rand(K, generator=g, dtype=torch.float64) * ih * 0.6
    w[: K // 8] = 0.0  # zero-size boxes
    h[K // 8 : K // 4] *= 0.01
    w[K // 4 : K // 3] *= -0.2  # inverted boxes (x2 < x1)
    b = torch.randint(0, N, (K,), generator=g).to(torch.float64)
    return torch.stack([b, x1, y1, x1 + w, y1 + h], 1).to(dtype)


def main():
    g = torch.Generator().manual_seed(0)
    bad = 0
    for dtype, aligned, sr, scale, (ph, pw) in itertools.product(
        (torch.float64, torch.float32), (True, False), (0, 2, 1), (1.0, 0.25, 0.125), ((7, 7), (14, 14), (3, 5))
    ):
        N, C, H, W = 2, 3, 23, 31
        x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64).to(dtype)
        rois = random_rois(g, 64, N, H, W, scale, dtype)
        ref = torchvision.ops.roi_align(x, rois, (ph, pw), scale, sr, aligned)
        ours = roi_align_reference(x, rois, (ph, pw), scale, sr, aligned)
        err = (ref - ours).abs().max().item()
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        # backward of the twin (autograd) vs torchvision's backward
        xr = x.clone().requires_grad_(True)
        xo = x.clone().requires_grad_(True)
        go = torch.randn(ref.shape, generator=g, dtype=torch.float64).to(dtype)
        torchvision.ops.roi_align(xr, rois, (ph, pw), scale, sr, aligned).backward(go)
        roi_align_reference(xo, rois, (ph, pw), scale, sr, aligned).backward(go)
        gerr = (xr.grad - xo.grad).abs().max().item()
        ok = err <= tol and gerr <= tol * 10
        bad += not ok
        print(f"roi_align {str(dtype):14s} aligned={aligned!s:5s} sr={sr} scale={scale:<6} out={ph}x{pw}: "
              f"fwd max|diff|={err:.2e} bwd max|diff|={gerr:.2e} {'ok' if ok else 'MISMATCH'}")
    # channels_last and a non-contiguous input
    x = torch.randn(2, 5, 16, 16, generator=g).to(memory_format=torch.channels_last)
    rois = random_rois(g, 40, 2, 16, 16, 0.5, torch.float32)
    err = (torchvision.ops.roi_align(x, rois, 7, 0.5, 0, True) - roi_align_reference(x, rois, 7, 0.5, 0, True)).abs().max().item()
    bad += err > 1e-5
    print(f"roi_align channels_last: max|diff|={err:.2e}")
    for n, thr, quant in itertools.product((0, 1, 50, 1000), (0.3, 0.5, 0.7), (False, True)):
        xy = torch.rand(n, 2, generator=g) * 200
        wh = torch.rand(n, 2, generator=g) * 60
        boxes = torch.cat([xy, xy + wh], 1)
        scores = torch.rand(n, generator=g)
        if quant:  # many exact ties in score; also duplicate boxes
            scores = (scores * 5).floor()
            boxes[n // 2 :] = boxes[: n - n // 2]
        keep_tv = torchvision.ops.nms(boxes, scores, thr)
        keep = nms_reference(boxes, scores, thr)
        same = torch.equal(keep_tv, keep)
        if not same and quant:
            # torchvision's CPU sort is not stable: on ties only the kept set must agree
            # with a greedy pass in its order; ours promises lower index first.
            same = _valid_greedy(boxes, scores, keep, thr)
        bad += not same
        print(f"nms n={n:4d} thr={thr} ties={quant!s:5s}: {'same as torchvision' if torch.equal(keep_tv, keep) else ('valid greedy (tie order differs)' if same else 'MISMATCH')}")
    print("ALL OK" if bad == 0 else f"{bad} MISMATCHES")
    return 1 if bad else 0


def _valid_greedy(boxes, scores, keep, thr):
    order = torch.sort(scores, descending=True, stable=True).indices
    if not torch.equal(order[torch.isin(order, keep)], keep):
        return False
    iou = box_iou(boxes, boxes)
    kept = []
    for i in order.tolist():
        if all(iou[i, k] <= thr for k in kept):
            kept.append(i)
    return kept == keep.tolist()


if __name__ == "__main__":
    sys.exit(main())
