"""Per-image cost of inference after the model: TTA inversion, mask-level merge, post-processing, RLE.

Synthetic predictions stand in for the model (so the numbers isolate our code): ``--cells`` soft
elliptical cells per image (Sartorius: up to ~800-1000), seen by every TTA view with jitter, missed
detections and false positives, stored as crops in each view's own pixel grid. Each view's
predictions are mapped back (``View.invert``), merged, post-processed and encoded.

Side by side, the vectorised pieces against the obvious per-instance loops they replace
(sequential greedy clustering; painting masks one by one into the label image).

    nice python -m bench.bench_inference --cells 1000 --tta d4 --repeats 3 [--device cuda]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch


from maskrcnn.config import TestConfig
from maskrcnn.formats.rle import encode_crops
from maskrcnn.inference.merge import cross_view_edges, greedy_clusters, greedy_clusters_reference, merge_instances
from maskrcnn.inference.filtering import filter_predictions
from maskrcnn.inference.tta import parse_tta
from maskrcnn.ops import get_ext
from maskrcnn.structures import Instances, MaskList


def synthetic_view(n, H, W, crop, rmin, rmax, seed, view_seed, device, drop=0.05, fp=0.05, jitter=0.7):
    """Soft elliptical cells of one view (before the view transform), as a MaskList of ``crop``-sized crops."""
    g = torch.Generator().manual_seed(seed)
    cy = torch.rand(n, generator=g) * H
    cx = torch.rand(n, generator=g) * W
    ry = rmin + torch.rand(n, generator=g) * (rmax - rmin)
    rx = rmin + torch.rand(n, generator=g) * (rmax - rmin)
    score = 0.3 + 0.7 * torch.rand(n, generator=g)
    gv = torch.Generator().manual_seed(view_seed)
    keep = torch.rand(n, generator=gv) >= drop
    nfp = int(fp * n)
    cy = torch.cat([cy[keep] + jitter * torch.randn(int(keep.sum()), generator=gv), torch.rand(nfp, generator=gv) * H])
    cx = torch.cat([cx[keep] + jitter * torch.randn(int(keep.sum()), generator=gv), torch.rand(nfp, generator=gv) * W])
    ry = torch.cat([ry[keep], rmin + torch.rand(nfp, generator=gv) * (rmax - rmin)])
    rx = torch.cat([rx[keep], rmin + torch.rand(nfp, generator=gv) * (rmax - rmin)])
    score = torch.cat([(score[keep] + 0.05 * torch.randn(int(keep.sum()), generator=gv)).clamp(0.05, 1),
                       0.05 + 0.3 * torch.rand(nfp, generator=gv)])
    m = cy.numel()
    ox = (cx - crop / 2).floor().long()
    oy = (cy - crop / 2).floor().long()
    ys = oy[:, None] + torch.arange(crop) + 0.5
    xs = ox[:, None] + torch.arange(crop) + 0.5
    d = ((ys - cy[:, None]) / ry[:, None])[:, :, None] ** 2 + ((xs - cx[:, None]) / rx[:, None])[:, None, :] ** 2
    soft = torch.sigmoid((1 - d.sqrt()) * 6) * (d < 2.0)
    inside = ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]
    soft = soft * inside
    ml = MaskList(soft.to(device), torch.stack([ox, oy], 1).to(device), (H, W))
    labels = torch.zeros(m, dtype=torch.long, device=device)
    return Instances((H, W), ml.tight_boxes(), labels, score.to(device), ml)


def naive_paint(masks: MaskList):
    """Paint masks one by one (best first) into a label image: the per-instance loop we avoid."""
    H, W = masks.image_size
    owner = torch.full((H, W), -1, dtype=torch.int32, device=masks.device)
    _, h, w = masks.crops.shape
    for i in range(len(masks)):
        x0, y0 = masks.origins[i].tolist()
        ya, yb, xa, xb = max(0, y0), min(H, y0 + h), max(0, x0), min(W, x0 + w)
        if yb <= ya or xb <= xa:
            continue
        win = owner[ya:yb, xa:xb]
        m = masks.crops[i, ya - y0:yb - y0, xa - x0:xb - x0] & (win < 0)
        win[m] = i
    return owner


def vector_paint(masks: MaskList):
    H, W = masks.image_size
    n_idx, _, flat = masks.foreground_pixels()
    owner = torch.full((H * W,), len(masks), dtype=torch.int32, device=masks.device)
    owner.scatter_reduce_(0, flat, n_idx.int(), reduce="amin")
    return owner


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, default=1000)
    p.add_argument("--height", type=int, default=520)
    p.add_argument("--width", type=int, default=704)
    p.add_argument("--crop", type=int, default=40, help="crop side (the largest box of the image)")
    p.add_argument("--rmin", type=float, default=5)
    p.add_argument("--rmax", type=float, default=14)
    p.add_argument("--tta", default="d4")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fill-holes", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--compare-cpu", action="store_true", help="check the device's merge/postprocess against the CPU's")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    views = parse_tta(args.tta)
    H, W = args.height, args.width
    cfg = TestConfig(score_thresh=(0.3,), mask_thresh=(0.5,), min_area=(15,), fill_holes=args.fill_holes)
    print(f"device {device}, compiled ops: {'yes' if get_ext() is not None else 'no (pure-torch twins)'}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{args.cells} cells/view on {H}x{W}, {len(views)} views ({args.tta}), crops {args.crop}x{args.crop}")
    stages = {k: [] for k in ("invert", "merge", "postprocess", "encode", "total")}
    cpu = {k: [] for k in stages}  # process CPU seconds: on a busy shared machine wall time inflates
    for r in range(args.repeats):  # a loop over synthetic images
        preds = []
        for k, v in enumerate(views):
            inst = synthetic_view(args.cells, H, W, args.crop, args.rmin, args.rmax, seed=r, view_seed=100 * r + k,
                                  device=device)
            fwd = v.apply_masks(inst.masks)  # the prediction as the model would make it, in the view's grid
            preds.append(Instances(fwd.image_size, v.apply_boxes(inst.boxes, (H, W)), inst.labels, inst.scores, fwd))
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        back = [v.invert(pr, (H, W)) for v, pr in zip(views, preds)]
        sync(device)
        t1, c1 = time.perf_counter(), time.process_time()
        merged = merge_instances(back, 0.5, max(1, len(views) // 2), 0.5, len(views))
        sync(device)
        t2, c2 = time.perf_counter(), time.process_time()
        final = filter_predictions(merged, cfg)
        sync(device)
        t3, c3 = time.perf_counter(), time.process_time()
        rles = encode_crops(final.masks.crops, final.masks.origins, final.image_size)
        t4, c4 = time.perf_counter(), time.process_time()
        for key, val, cv in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0),
                                (c1 - c0, c2 - c1, c3 - c2, c4 - c3, c4 - c0)):
            stages[key].append(val)
            cpu[key].append(cv)
        print(f"  image {r}: {sum(len(b) for b in back)} view instances -> {len(merged)} merged -> "
              f"{len(final)} final ({len(rles)} RLE rows); merged crops {tuple(merged.masks.crops.shape)}")
    print("seconds per image (wall: mean / median / max; process CPU: mean):")
    print(f"  {'stage':<12}{'mean':>9}{'median':>9}{'max':>9}{'cpu':>9}")
    for key, vals in stages.items():
        print(f"  {key:<12}{statistics.fmean(vals):9.3f}{statistics.median(vals):9.3f}{max(vals):9.3f}"
              f"{statistics.fmean(cpu[key]):9.3f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
          + (f", peak CUDA {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device.type == "cuda" else ""))

    if args.compare_cpu and device.type != "cpu":
        ref_merged = merge_instances([b.to("cpu") for b in back], 0.5, max(1, len(views) // 2), 0.5, len(views))
        ref_final = filter_predictions(ref_merged, cfg)
        same_n = len(ref_merged) == len(merged) and len(ref_final) == len(final)
        score_diff = (ref_merged.scores - merged.scores.cpu()).abs().max().item() if same_n else float("nan")
        pix_ref = ref_final.masks.to_dense().sum(0)
        pix_dev = final.masks.to("cpu").to_dense().sum(0)
        print(f"{device} vs cpu: merged {len(merged)} / {len(ref_merged)}, final {len(final)} / {len(ref_final)}, "
              f"max score diff {score_diff:.2e}, final pixels differing {int((pix_ref != pix_dev).sum())} "
              f"of {int(pix_ref.sum())}, max coverage {int(pix_dev.max())} (1 = no overlaps)")

    # Side by side: vectorised vs per-instance loops, on the last image.
    allv = Instances.cat(back)
    vid = torch.cat([torch.full((len(b),), k, device=device) for k, b in enumerate(back)])
    binary = [MaskList(b.masks.crops >= 0.5, b.masks.origins, b.image_size) for b in back]
    t0 = time.perf_counter()
    i, j, w, _ = cross_view_edges(binary, 0.5, method="sparse")
    sync(device)
    t1 = time.perf_counter()
    i2, j2, w2, _ = cross_view_edges(binary, 0.5, method="pairs")
    sync(device)
    t2 = time.perf_counter()
    same = torch.equal(torch.sort(i * len(vid) + j).values, torch.sort(i2 * len(vid) + j2).values)
    print(f"cross-view edges of {len(vid)} masks: sparse product {1e3 * (t1 - t0):.0f} ms, box-pruned pairs "
          f"{1e3 * (t2 - t1):.0f} ms, ratio {(t2 - t1) / max(t1 - t0, 1e-9):.1f}x, same edges: {same}")
    n = len(allv)
    t0 = time.perf_counter()
    fast = greedy_clusters(n, i, j, w)
    sync(device)
    t1 = time.perf_counter()
    slow = greedy_clusters_reference(n, i.cpu(), j.cpu(), w.cpu())
    t2 = time.perf_counter()
    assert torch.equal(fast.cpu(), slow), "vectorised clustering disagrees with the sequential loop"
    print(f"greedy clustering of {n} instances, {i.numel()} edges: vectorised {1e3 * (t1 - t0):.1f} ms, "
          f"sequential loop {1e3 * (t2 - t1):.1f} ms, ratio {(t2 - t1) / max(t1 - t0, 1e-9):.1f}x")
    masks = merged.masks.threshold(0.5)
    t0 = time.perf_counter()
    vo = vector_paint(masks)
    sync(device)
    t1 = time.perf_counter()
    no = naive_paint(masks)
    sync(device)
    t2 = time.perf_counter()
    assert torch.equal(torch.where(vo == len(masks), -1, vo), no.flatten()), "painting disagrees"
    print(f"painting {len(masks)} masks: scatter {1e3 * (t1 - t0):.1f} ms, per-mask loop {1e3 * (t2 - t1):.1f} ms, "
          f"ratio {(t2 - t1) / max(t1 - t0, 1e-9):.1f}x")


if __name__ == "__main__":
    main()
