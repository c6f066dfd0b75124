"""Speed of the compiled ops against their pure-PyTorch twins (CPU) or torchvision (CUDA).

    python -m bench.ops                    # CPU: compiled vs twin, ratios side by side
    python -m bench.ops --quick            # fewer sizes and repeats (a smoke run)
    python -m bench.ops --device cuda      # ours vs torchvision.ops on the GPU, + mask IoU CUDA vs CPU

Sizes are Mask R-CNN's: batch 2, 256 channels, FPN levels P2 (200 x 200, stride 4) to P5
(25 x 25, stride 32) of an 800 x 800 input, 512 RoIs per level sized for that level, 7 x 7 (box
head) and 14 x 14 (mask head) outputs, sampling_ratio 2, aligned. NMS: 5,000 proposal-like boxes.
Box matching: the RPN's case in the DSB CPU recipe, 4 images of 60 nucleus-sized GT boxes against
the 65,472 anchors of a 512 x 512 input (16-256 px, 3 ratios, P2-P6).
Mask IoU: 800 cell-sized masks (radius 5-15 px) in a 520 x 704 image, all pairs, against the dense
float product. Times are medians; "x" = baseline time / our time (higher is better).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import maskrcnn.ops as ops
from maskrcnn.structures import MaskList

LEVELS = [  # (name, feature size, stride, box side range in image pixels: FPN level assignment)
    ("P2", 200, 4, (16, 112)),
    ("P3", 100, 8, (112, 224)),
    ("P4", 50, 16, (224, 448)),
    ("P5", 25, 32, (448, 800)),
]


def timeit(fn, repeat, device):
    """Median seconds of ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def level_rois(g, n_rois, side_range, image=800, batch=2):
    lo, hi = side_range
    side = torch.exp(torch.empty(n_rois).uniform_(math.log(lo), math.log(hi), generator=g))
    aspect = torch.exp(torch.empty(n_rois).uniform_(-0.7, 0.7, generator=g))
    w, h = side * aspect.sqrt(), side / aspect.sqrt()
    cx = torch.rand(n_rois, generator=g) * image
    cy = torch.rand(n_rois, generator=g) * image
    b = torch.randint(0, batch, (n_rois,), generator=g).float()
    return torch.stack([b, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def cell_masks(g, n=800, H=520, W=704):
    """Dense bool [n, H, W] disks of radius 5-15 px (touching cells overlap a little)."""
    cy = torch.randint(0, H, (n,), generator=g)
    cx = torch.randint(0, W, (n,), generator=g)
    r = torch.randint(5, 16, (n,), generator=g)
    # Build crops first (cheap), then scatter into the dense tensor the baseline needs.
    side = 2 * 15 + 1
    d = torch.arange(side) - 15
    disk = (d[None, :, None] ** 2 + d[None, None, :] ** 2) <= (r[:, None, None] ** 2)
    ml = MaskList(disk, torch.stack([cx - 15, cy - 15], 1), (H, W))
    return ml.to_dense(), ml


def proposal_boxes(g, n=5000, image=800):
    side = torch.exp(torch.empty(n).uniform_(math.log(8), math.log(300), generator=g))
    cx = torch.rand(n, generator=g) * image
    cy = torch.rand(n, generator=g) * image
    # Clusters, as an RPN's proposals are: every box has 4 jittered copies.
    boxes = torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)
    boxes[n // 5 :] = boxes[: n // 5].repeat(4, 1)[: n - n // 5] + torch.randn(n - n // 5, 4, generator=g) * 4
    return boxes, torch.rand(n, generator=g)


def anchor_matching_case(g, images=4, gts=60):
    from maskrcnn.model.anchors import AnchorGenerator

    feats = [torch.zeros(1, 1, 512 // s, 512 // s) for s in (4, 8, 16, 32, 64)]
    anchors = torch.cat(AnchorGenerator((16, 32, 64, 128, 256), (0.5, 1.0, 2.0), (4, 8, 16, 32, 64))(feats))
    xy = torch.rand(images, gts, 2, generator=g) * 480
    gt = torch.cat([xy, xy + 8 + torch.rand(images, gts, 2, generator=g) * 50], -1)
    return gt, torch.ones(images, gts, dtype=torch.bool), anchors


def row(name, ours, base, extra=""):
    ratio = base / ours if ours > 0 else float("inf")
    print(f"| {name:<44} | {ours * 1e3:10.2f} | {base * 1e3:10.2f} | {ratio:7.1f}x |{extra}")


def header(base_name, extra=""):
    print(f"| {'op':<44} | {'ours ms':>10} | {base_name + ' ms':>10} | {'ratio':>8} |{extra}")
    print(f"|{'-' * 46}|{'-' * 12}|{'-' * 12}|{'-' * 10}|" + ("-" * (len(extra) - 1) + "|" if extra else ""))


def bench_cpu(args):
    if ops.get_ext() is None:
        raise SystemExit("maskrcnn._C is not built: python setup.py build_ext --inplace")
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; twin = pure-PyTorch reference")
    header("twin")
    levels = LEVELS[::3] if args.quick else LEVELS
    sizes = (7,) if args.quick else (7, 14)
    selected = set(args.ops.split(","))
    for name, size, stride, side_range in levels if "roi_align" in selected else ():
        x = torch.randn(2, 256, size, size, generator=g)
        rois = level_rois(g, 512, side_range)
        for out in sizes:
            twin_times = None  # the twin's time does not depend on the layout: measured once
            for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
                xf = x.to(memory_format=fmt)
                xg = xf.detach().clone().requires_grad_(True)
                gout = torch.randn(512, 256, out, out, generator=g)

                def fwd():
                    return ops.roi_align(xf, rois, out, 1 / stride, 2, True)

                def bwd():
                    xg.grad = None
                    ops.roi_align(xg, rois, out, 1 / stride, 2, True).backward(gout)

                def twin_fwd():
                    return ops.roi_align_reference(xf, rois, out, 1 / stride, 2, True)

                def twin_bwd():
                    xg.grad = None
                    ops.roi_align_reference(xg, rois, out, 1 / stride, 2, True).backward(gout)

                if twin_times is None:
                    twin_times = (timeit(twin_fwd, args.twin_repeat, "cpu"), timeit(twin_bwd, args.twin_repeat, "cpu"))
                row(f"roi_align fwd {name} {size}x{size} -> {out}x{out} {fmt_name}", timeit(fwd, args.repeat, "cpu"),
                    twin_times[0])
                row(f"roi_align fwd+bwd {name} {size}x{size} -> {out}x{out} {fmt_name}",
                    timeit(bwd, args.repeat, "cpu"), twin_times[1])
    if "nms" in selected:
        boxes, scores = proposal_boxes(g)
        t_ours = timeit(lambda: ops.nms(boxes, scores, 0.7), args.repeat, "cpu")
        t_twin = timeit(lambda: ops.nms_reference(boxes, scores, 0.7), args.twin_repeat, "cpu")
        row("nms 5000 boxes thr 0.7", t_ours, t_twin)
    if "match" in selected:
        gt, valid, anchors = anchor_matching_case(g)
        t_ours = timeit(lambda: ops.best_matches(gt, valid, anchors), args.repeat, "cpu")
        t_twin = timeit(lambda: ops.best_matches_reference(gt, valid, anchors), args.twin_repeat, "cpu")
        row("best_matches 4 x 60 GT vs 65,472 anchors", t_ours, t_twin)
    if "mask" not in selected:
        return
    dense, ml = cell_masks(g)
    t_dense = timeit(lambda: ops.mask_iou_dense_reference(dense, dense), 1, "cpu")
    t_ours_dense = timeit(lambda: ops.mask_iou(dense, dense), args.repeat, "cpu")
    t_ours_crop = timeit(lambda: ops.crop_mask_iou(ml.crops, ml.origins, ml.crops, ml.origins), args.repeat, "cpu")
    t_twin_crop = timeit(lambda: ops.crop_mask_intersection_reference(ml.crops, ml.origins, ml.crops, ml.origins), 1, "cpu")
    row("mask_iou 800x800 dense in (vs dense product)", t_ours_dense, t_dense)
    row("crop_mask_iou 800x800 crops (vs dense product)", t_ours_crop, t_dense)
    row("crop_mask_iou 800x800 crops (vs crop twin)", t_ours_crop, t_twin_crop)
    order = torch.randperm(len(ml.crops), generator=g)
    iou = ops.crop_mask_iou(ml.crops[order], ml.origins[order], ml.crops[order], ml.origins[order])
    t_ours = timeit(lambda: ops.greedy_suppress(iou, 0.3), args.repeat, "cpu")
    t_twin = timeit(lambda: ops.greedy_suppress_reference(iou, 0.3), args.twin_repeat, "cpu")
    row("greedy_suppress 800x800 IoU matrix", t_ours, t_twin)


def bench_cuda(args):
    if not (torch.cuda.is_available() and ops.has_cuda_ops()):
        raise SystemExit("needs a GPU and a CUDA build of maskrcnn._C (TORCH_CUDA_ARCH_LIST=9.0 python setup.py build_ext --inplace)")
    try:
        import torchvision  # only here: a comparison, never a dependency
    except ImportError:
        torchvision = None
    dev = "cuda"
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, torchvision "
          f"{torchvision.__version__ if torchvision else 'missing (ratios skipped)'}")
    header("tv" if torchvision else "-", " max abs diff |")

    def compare(name, ours_fn, tv_fn, diff):
        t_ours = timeit(ours_fn, args.repeat, dev)
        if tv_fn is None:
            print(f"| {name:<44} | {t_ours * 1e3:10.3f} |")
            return
        t_tv = timeit(tv_fn, args.repeat, dev)
        row(name, t_ours, t_tv, f" {diff:.2e} |")

    half_errors = []
    for name, size, stride, side_range in LEVELS:
        x = torch.randn(2, 256, size, size, generator=g).to(dev)
        rois = level_rois(g, 512, side_range).to(dev)
        for out in (7, 14):
            for dtype in (torch.float32, torch.float16):
                for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
                    xf = x.to(dtype).to(memory_format=fmt)
                    r = rois.to(dtype)
                    ours = lambda: ops.roi_align(xf, r, out, 1 / stride, 2, True)  # noqa: E731
                    tv = (lambda: torchvision.ops.roi_align(xf, r, out, 1 / stride, 2, True)) if torchvision else None
                    diff = (ours().float() - tv().float()).abs().max().item() if tv else float("nan")
                    if dtype == torch.float16 and tv:
                        # Compare each with its own float32 result: torchvision computes the sample
                        # coordinates in half precision (rois must share the input's dtype); ours in float32.
                        ref = ops.roi_align(x.to(memory_format=fmt), r.float(), out, 1 / stride, 2, True)
                        tv_ref = torchvision.ops.roi_align(x.to(memory_format=fmt), r.float(), out, 1 / stride, 2, True)
                        half_errors.append(((ours().float() - ref).abs().max().item(),
                                            (tv().float() - tv_ref).abs().max().item()))
                    label = f"roi_align fwd {name} ->{out}x{out} {fmt_name} {str(dtype)[6:]}"
                    compare(label, ours, tv, diff)
                    xg = xf.detach().clone().requires_grad_(True)
                    gout = torch.randn_like(ours())

                    def ours_bwd():
                        xg.grad = None
                        ops.roi_align(xg, r, out, 1 / stride, 2, True).backward(gout)

                    def tv_bwd():
                        xg.grad = None
                        torchvision.ops.roi_align(xg, r, out, 1 / stride, 2, True).backward(gout)

                    if tv:
                        ours_bwd()
                        ga = xg.grad.float().clone()
                        tv_bwd()
                        diff = (ga - xg.grad.float()).abs().max().item()
                    compare(label.replace("fwd", "fwd+bwd"), ours_bwd, tv_bwd if tv else None, diff)
    if half_errors:
        ours_err = max(e[0] for e in half_errors)
        tv_err = max(e[1] for e in half_errors)
        print(f"float16 forward, max abs error against the same op in float32: ours {ours_err:.2e}, "
              f"torchvision {tv_err:.2e}; the 'max abs diff' column compares the two float16 results")
    for n in (1000, 5000, 20000):
        boxes, scores = proposal_boxes(g, n)
        boxes, scores = boxes.to(dev), scores.to(dev)
        ours = lambda: ops.nms(boxes, scores, 0.7)  # noqa: E731
        tv = (lambda: torchvision.ops.nms(boxes, scores, 0.7)) if torchvision else None
        same = float(not torch.equal(ours(), tv())) if tv else float("nan")  # 0 = identical kept lists
        compare(f"nms {n} boxes thr 0.7 (diff: 0 = same kept)", ours, tv, same)
    dense, ml = cell_masks(g)
    crops, origins = ml.crops.to(dev), ml.origins.to(dev)
    t_gpu = timeit(lambda: ops.crop_mask_iou(crops, origins, crops, origins), args.repeat, dev)
    t_cpu = timeit(lambda: ops.crop_mask_iou(ml.crops, ml.origins, ml.crops, ml.origins), args.repeat, "cpu")
    diff = (ops.crop_mask_iou(crops, origins, crops, origins).cpu()
            - ops.crop_mask_iou(ml.crops, ml.origins, ml.crops, ml.origins)).abs().max().item()
    row("crop_mask_iou 800x800 CUDA (vs our CPU)", t_gpu, t_cpu, f" {diff:.2e} |")
    dd = dense.to(dev)
    t_dense = timeit(lambda: ops.mask_iou_dense_reference(dd, dd), args.repeat, dev)
    row("crop_mask_iou 800x800 CUDA (vs CUDA dense product)", t_gpu, t_dense, "")
    order = torch.randperm(len(crops), generator=g).to(dev)
    iou = ops.crop_mask_iou(crops[order], origins[order], crops[order], origins[order])
    t_gpu = timeit(lambda: ops.greedy_suppress(iou, 0.3), args.repeat, dev)
    t_cpu = timeit(lambda: ops.greedy_suppress(iou.cpu(), 0.3), args.repeat, "cpu")
    row("greedy_suppress 800x800 CUDA (vs our CPU incl. copy)", t_gpu, t_cpu, "")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeat", type=int, default=5, help="timed calls of our ops (median)")
    p.add_argument("--twin-repeat", type=int, default=1, help="timed calls of the slow twins (median)")
    p.add_argument("--quick", action="store_true", help="P2 and P5 at 7x7 only (CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--ops", default="roi_align,nms,match,mask",
                   help="CPU: comma-separated subset of roi_align,nms,match,mask")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(True)
    (bench_cuda if args.device == "cuda" else bench_cpu)(args)


if __name__ == "__main__":
    main()
