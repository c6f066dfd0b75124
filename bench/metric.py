"""Kaggle metric speed: ours (crop IoU, sparse matching) vs a dense-IoU reference, side by side.

Synthetic images of 520 x 704 with ~800 round-ish cells each (ground truth: non-overlapping
ellipses; predictions: jittered copies of 90% of them plus 5% false positives). The reference
builds dense masks and computes IoU by a float matrix product per image (chunked over ground
truth to bound memory), then the same matching; it is timed on a subset when it is slow.

    python -m bench.metric [--images 240] [--cells 800] [--ref-images 4] [--device cpu|cuda] [--threads N]

Prints per-image times, the ratio, and a check that both give the same scores.
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch


from maskrcnn.evaluation.kaggle import (
    Candidates,
    KaggleEvaluator,
    image_precisions_from_candidates,
)
from maskrcnn.structures import MaskList


def synthetic_image(rng, H, W, n_cells, device):
    """(gt MaskList, pred MaskList): ellipses of radius 4-14 px on a jittered grid, no overlaps."""
    side = int(np.ceil(np.sqrt(n_cells * W / H)))
    rows = int(np.ceil(n_cells / side))
    cy = (np.arange(rows) + 0.5) * H / rows
    cx = (np.arange(side) + 0.5) * W / side
    cy, cx = np.meshgrid(cy, cx, indexing="ij")
    cy, cx = cy.reshape(-1)[:n_cells], cx.reshape(-1)[:n_cells]
    cell = min(H / rows, W / side)
    cy = cy + rng.uniform(-0.15, 0.15, n_cells) * cell
    cx = cx + rng.uniform(-0.15, 0.15, n_cells) * cell
    ry = rng.uniform(0.25, 0.45, n_cells) * cell
    rx = rng.uniform(0.25, 0.45, n_cells) * cell
    gt = _ellipses(cy, cx, ry, rx, H, W, device)
    keep = rng.random(n_cells) < 0.9
    jy = cy[keep] + rng.normal(0, 0.6, keep.sum())
    jx = cx[keep] + rng.normal(0, 0.6, keep.sum())
    s = rng.uniform(0.85, 1.15, keep.sum())
    n_fp = n_cells // 20
    fy, fx = rng.uniform(0, H, n_fp), rng.uniform(0, W, n_fp)
    fr = rng.uniform(2, 6, n_fp)
    pred = _ellipses(np.concatenate([jy, fy]), np.concatenate([jx, fx]), np.concatenate([ry[keep] * s, fr]),
                     np.concatenate([rx[keep] * s, fr]), H, W, device)
    return gt, pred


def _ellipses(cy, cx, ry, rx, H, W, device):
    """MaskList of ellipses, built in crops (never [N, H, W])."""
    r = int(np.ceil(max(ry.max(), rx.max()))) + 1
    y0 = np.floor(cy).astype(np.int64) - r
    x0 = np.floor(cx).astype(np.int64) - r
    ar = np.arange(2 * r + 1)
    yy = (y0[:, None] + ar)[:, :, None] + 0.5
    xx = (x0[:, None] + ar)[:, None, :] + 0.5
    m = ((yy - cy[:, None, None]) / ry[:, None, None]) ** 2 + ((xx - cx[:, None, None]) / rx[:, None, None]) ** 2 <= 1
    inside = ((yy >= 0) & (yy < H)) & ((xx >= 0) & (xx < W))
    m &= inside
    return MaskList(torch.from_numpy(m).to(device), torch.from_numpy(np.stack([x0, y0], 1)).to(device), (H, W))


def dense_reference_precisions(pred: MaskList, gt: MaskList, chunk: int = 64) -> np.ndarray:
    """The obvious way: dense masks, IoU by a float matrix product, then the same matching."""
    P = pred.to_dense().flatten(1).float()  # [N, H*W]
    inter = torch.zeros(len(pred), len(gt), device=P.device)
    gt_area = torch.zeros(len(gt), device=P.device)
    for s in range(0, len(gt), chunk):  # chunks of ground truth bound memory
        G = gt.to_dense(torch.arange(s, min(len(gt), s + chunk), device=gt.device)).flatten(1).float()
        inter[:, s:s + G.shape[0]] = P @ G.T
        gt_area[s:s + G.shape[0]] = G.sum(1)
    union = P.sum(1)[:, None] + gt_area[None, :] - inter
    inter, union = inter.round().long().cpu().numpy(), union.round().long().cpu().numpy()
    ii, jj = np.nonzero(2 * inter > union)
    c = Candidates(ii, jj, inter[ii, jj], union[ii, jj], len(pred), len(gt))
    return image_precisions_from_candidates(c)


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--cells", type=int, default=800)
    ap.add_argument("--ref-images", type=int, default=4, help="images the dense reference is timed on")
    ap.add_argument("--height", type=int, default=520)
    ap.add_argument("--width", type=int, default=704)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--csv", action="store_true", help="also time `evaluate.py score` on CSV files of the same data")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="maskrcnn: compiled ops not available")
    from maskrcnn.ops import get_ext

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    data = [synthetic_image(rng, args.height, args.width, args.cells, args.device) for _ in range(args.images)]
    print(f"built {args.images} images x {args.cells} cells ({args.height}x{args.width}) in {time.perf_counter() - t0:.1f} s; "
          f"compiled ops: {'yes' if get_ext() is not None else 'no (pure-torch twin)'}; device {args.device}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"mean predictions per image {np.mean([len(p) for _, p in data]):.0f}, "
          f"gt {np.mean([len(g) for g, _ in data]):.0f}, crop {tuple(data[0][0].crops.shape[1:])}")

    ev = KaggleEvaluator()
    ours_times = []
    _sync(args.device)
    t_all = time.perf_counter()
    for k, (gt, pred) in enumerate(data):
        t = time.perf_counter()
        ev.add(str(k), pred, gt)
        _sync(args.device)
        ours_times.append(time.perf_counter() - t)
    t_all = time.perf_counter() - t_all
    ours = ev.summary()
    print(f"ours:      {args.images} images in {t_all:.2f} s = {1000 * t_all / args.images:.1f} ms/image, mAP {ours['mAP']:.4f}")

    n_ref = min(args.ref_images, args.images)
    ref_times, same = [], True
    per_image = ev.per_image()
    for k in range(n_ref):
        gt, pred = data[k]
        _sync(args.device)
        t = time.perf_counter()
        prec = dense_reference_precisions(pred, gt)
        _sync(args.device)
        ref_times.append(time.perf_counter() - t)
        same &= abs(float(prec.mean()) - per_image[str(k)]) < 1e-12
        print(f"  image {k}: ours {1000 * ours_times[k]:8.1f} ms   dense {1000 * ref_times[-1]:9.1f} ms   "
              f"ratio {ref_times[-1] / ours_times[k]:6.1f}x")
    if n_ref:
        ref_ms = 1000 * float(np.mean(ref_times))
        ours_ms = 1000 * float(np.mean(ours_times[:n_ref]))
        print(f"dense ref: {n_ref} of {args.images} images, {ref_ms:.1f} ms/image "
              f"(all {args.images} would take ~{ref_ms * args.images / 1000:.0f} s)")
        print(f"same per-image scores on the {n_ref} images: {same}")
        print(f"ratio (dense / ours, same {n_ref} images): {ref_ms / ours_ms:.1f}x")
    if args.csv:
        time_csv_scoring(data, ours["mAP"])


def time_csv_scoring(data, expected_map):
    """The file path end to end: read the label and submission CSVs, validate, decode into crops, score."""
    import tempfile

    from maskrcnn.evaluation.score import score_files
    from maskrcnn.formats.kaggle_csv import masks_to_rows, write_labels, write_submission

    with tempfile.TemporaryDirectory() as d:
        labels, sub = os.path.join(d, "labels.csv"), os.path.join(d, "submission.csv")
        t = time.perf_counter()
        write_labels(labels, ((str(k), gt.to("cpu"), "synthetic") for k, (gt, _) in enumerate(data)))
        write_submission((row for k, (_, p) in enumerate(data) for row in masks_to_rows(str(k), p.to("cpu"))), sub)
        t_write = time.perf_counter() - t
        t = time.perf_counter()
        res = score_files(sub, labels)
        t_score = time.perf_counter() - t
    n = len(data)
    print(f"csv: wrote labels + submission in {t_write:.1f} s; score_files (read, validate, decode, score) "
          f"{t_score:.1f} s = {1000 * t_score / n:.0f} ms/image; mAP {res.summary['mAP']:.4f} "
          f"(in memory {expected_map:.4f}); {len(res.errors)} validation problems")


if __name__ == "__main__":
    main()
