"""Tiled vs whole-image inference on mosaics of real DSB2018 fluorescence images.

Two commands, both with a checkpoint trained on DSB2018:

    # agreement: do tiled and whole-image inference find the same cells? (and their Kaggle mAP)
    python -m bench.tiling check --weights W.pth --root ../shared/data/dsb2018/stage1_train \
        [--grid 3] [--mosaics 4] [--tile 256] [--overlap 64] [--split-file F --fold 0]

    # speed and peak memory, side by side, each run in a fresh process
    python -m bench.tiling bench --weights W.pth --root ../shared/data/dsb2018/stage1_train \
        [--sizes 1024,2048,4000] [--tile 512] [--overlap 64]

Mosaics are made of same-size (256x256) grayscale fluorescence images (dark background; the
DSB2018 reader's ``256x256/gray/dark`` stratum), placed edge to edge, so seams and tile borders
cut through many nuclei. ``check`` post-processes both results with the checkpoint's ``test``
settings and matches them one to one at mask IoU > 0.5 (masks do not overlap after
post-processing, so a match is unique); the whole image gets the tiles' RPN and detection caps per
pixel (``--whole-caps scaled``, default) or the checkpoint's (``checkpoint``: fewer proposals per
pixel than each tile gets); unmatched cells are counted, and those whose centre lies within
``overlap / 2`` of an interior core boundary (where stitching acts). ``bench`` times the raw prediction (model or tiled) and
the post-processing, and reads the child process's peak resident memory (``VmHWM``) against its
resident memory before inference (model and image loaded). For the whole image, the RPN and
detection caps are the checkpoint's (``whole``: the per-image caps cut the cells found on a large
mosaic) or scaled with the image's area relative to one tile (``whole-scaled``: the same budget per
pixel as the tiles get, so it can find every nucleus); the caps are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

import torch


from maskrcnn.data.dsb2018 import DSB2018Dataset
from maskrcnn.inference.checkpoint import load_model
from maskrcnn.evaluation.kaggle import image_score
from maskrcnn.inference.filtering import filter_predictions
from maskrcnn.inference.tiling import tiled_predict
from maskrcnn.structures import Instances, MaskList

STRATUM = "256x256/gray/dark"


def fluorescence_ids(ds: DSB2018Dataset, split_file: str = "", fold: int = -1):
    """Indices of the 256x256 gray dark images (optionally only those of one fold of a split file)."""
    strata = ds.strata()
    idx = [i for i, s in enumerate(strata) if s == STRATUM]
    if split_file:
        with open(split_file) as f:
            folds = json.load(f)["folds"]
        idx = [i for i in idx if folds.get(ds.image_ids[i]) == fold]
    return idx


def mosaic(ds: DSB2018Dataset, indices, grid: int, with_gt: bool = True):
    """A ``grid x grid`` mosaic (Tensor[1, 256 g, 256 g]) of the images and its GT Instances."""
    S = 256
    size = (S * grid, S * grid)
    image = torch.zeros((1, S * grid, S * grid))
    gts = []
    for k, i in enumerate(indices):  # grid * grid images
        s = ds.load(i)
        r, c = divmod(k, grid)
        image[:, r * S:(r + 1) * S, c * S:(c + 1) * S] = s.image[:1]
        if with_gt:
            m = s.instances.masks
            off = torch.tensor([c * S, r * S])
            gts.append(Instances(size, s.instances.boxes + off.repeat(2), s.instances.labels, None,
                                 MaskList(m.crops, m.origins + off, size)))
    return image, (Instances.cat(gts) if with_gt else None)


def match_count(a: Instances, b: Instances) -> int:
    """One-to-one matches at IoU > 0.5 between two sets of non-overlapping binary masks."""
    if len(a) == 0 or len(b) == 0:
        return 0
    return int((a.masks.iou(b.masks) > 0.5).sum())


def scale_caps(model, factor: float) -> list:
    """Multiply the model's test-time RPN and detection caps by ``factor``; returns the new caps."""
    pre, post = model.rpn.pre_nms_topk, model.rpn.post_nms_topk
    model.rpn.pre_nms_topk = (pre[0], int(pre[1] * factor))
    model.rpn.post_nms_topk = (post[0], int(post[1] * factor))
    model.roi_heads.detections_per_image = int(model.roi_heads.detections_per_image * factor)
    return [model.rpn.pre_nms_topk[1], model.rpn.post_nms_topk[1], model.roi_heads.detections_per_image]


def near_seams(inst: Instances, idx: torch.Tensor, grid, margin: float) -> int:
    """How many of ``inst[idx]`` have their box centre within ``margin`` px of an interior core boundary."""
    if idx.numel() == 0:
        return 0
    b = inst.boxes[idx]
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    d = torch.full_like(cx, float("inf"))
    for x in grid.core_x[1:-1]:
        d = torch.minimum(d, (cx - x).abs())
    for y in grid.core_y[1:-1]:
        d = torch.minimum(d, (cy - y).abs())
    return int((d <= margin).sum())


def cmd_check(args) -> None:
    from maskrcnn.inference.tile_grid import plan_tiles

    torch.set_num_threads(args.threads)
    model, cfg = load_model(args.weights, "cpu")
    whole_model, _ = load_model(args.weights, "cpu")
    S = 256 * args.grid
    caps = scale_caps(whole_model, (S / args.tile) ** 2 if args.whole_caps == "scaled" else 1.0)
    grid = plan_tiles((S, S), args.tile, args.overlap)
    # Fraction of the image within overlap / 2 of an interior core boundary (where stitching acts).
    inner = 1.0
    for bounds in (grid.core_x, grid.core_y):
        cov = torch.zeros(S, dtype=torch.bool)
        for c in bounds[1:-1]:
            cov[max(0, c - args.overlap // 2):c + args.overlap // 2 + 1] = True
        inner *= 1.0 - float(cov.float().mean())
    ds = DSB2018Dataset(args.root, channels=1)
    pool = fluorescence_ids(ds, args.split_file, args.fold)
    need = args.grid * args.grid
    if len(pool) < need:
        raise SystemExit(f"error: only {len(pool)} {STRATUM} images, need {need} per mosaic")
    rng = random.Random(args.seed)
    print(f"checkpoint {args.weights}; test: score_thresh {list(cfg.test.score_thresh)}, "
          f"min_area {list(cfg.test.min_area)}; tile {args.tile}, overlap {args.overlap}, merge {not args.no_merge}")
    print(f"{len(pool)} {STRATUM} images{' of fold %d' % args.fold if args.split_file else ''}; "
          f"{args.mosaics} mosaics of {args.grid}x{args.grid} ({S}x{S}); {len(grid)} tiles; whole-image caps "
          f"({args.whole_caps}) pre/post/dets {caps}, tiles {[model.rpn.pre_nms_topk[1], model.rpn.post_nms_topk[1], model.roi_heads.detections_per_image]}")
    print(f"{1 - inner:.0%} of the image lies within overlap/2 = {args.overlap // 2} px of an interior core boundary "
          f"(\"near seams\" below)")
    header = ("| mosaic | GT | whole | tiled | matched | matched/whole | matched/tiled | count diff | unmatched whole "
              "(near seams) | unmatched tiled (near seams) | mAP whole | mAP tiled | s whole | s tiled |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    tot = {"gt": 0, "whole": 0, "tiled": 0, "matched": 0, "sw": 0.0, "st": 0.0, "mw": [], "mt": [],
           "uw": 0, "uwn": 0, "ut": 0, "utn": 0}
    with torch.no_grad():
        for m in range(args.mosaics):
            image, gt = mosaic(ds, rng.sample(pool, need), args.grid)
            t0 = time.perf_counter()
            whole = filter_predictions(whole_model([image])[0], cfg.test)
            t1 = time.perf_counter()
            raw = tiled_predict(lambda t: model([t])[0], image, args.tile, args.overlap, merge=not args.no_merge,
                                score_thresh=min(cfg.test.score_thresh))
            tiled = filter_predictions(raw, cfg.test)
            t2 = time.perf_counter()
            iou = whole.masks.iou(tiled.masks) if len(whole) and len(tiled) else torch.zeros((len(whole), len(tiled)))
            hit = iou > 0.5
            k = int(hit.sum())
            uw = torch.nonzero(~hit.any(1), as_tuple=True)[0]
            ut = torch.nonzero(~hit.any(0), as_tuple=True)[0]
            uwn, utn = near_seams(whole, uw, grid, args.overlap / 2), near_seams(tiled, ut, grid, args.overlap / 2)
            mw, mt = image_score(whole, gt), image_score(tiled, gt)
            print(f"| {m} | {len(gt)} | {len(whole)} | {len(tiled)} | {k} | {k / max(1, len(whole)):.1%} | "
                  f"{k / max(1, len(tiled)):.1%} | {(len(tiled) - len(whole)) / max(1, len(whole)):+.1%} | "
                  f"{len(uw)} ({uwn}) | {len(ut)} ({utn}) | "
                  f"{mw:.3f} | {mt:.3f} | {t1 - t0:.1f} | {t2 - t1:.1f} |", flush=True)
            for key, v in (("gt", len(gt)), ("whole", len(whole)), ("tiled", len(tiled)), ("matched", k),
                           ("sw", t1 - t0), ("st", t2 - t1), ("uw", len(uw)), ("uwn", uwn), ("ut", len(ut)),
                           ("utn", utn)):
                tot[key] += v
            tot["mw"].append(mw)
            tot["mt"].append(mt)
    n = args.mosaics
    print(f"| all | {tot['gt']} | {tot['whole']} | {tot['tiled']} | {tot['matched']} | "
          f"{tot['matched'] / max(1, tot['whole']):.1%} | {tot['matched'] / max(1, tot['tiled']):.1%} | "
          f"{(tot['tiled'] - tot['whole']) / max(1, tot['whole']):+.1%} | {tot['uw']} ({tot['uwn']}) | "
          f"{tot['ut']} ({tot['utn']}) | {sum(tot['mw']) / n:.3f} | "
          f"{sum(tot['mt']) / n:.3f} | {tot['sw']:.1f} | {tot['st']:.1f} |")


# ------------------------------------------------------------------------------- bench
def _mem_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def cmd_run(args) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    torch.set_num_threads(args.threads)
    model, cfg = load_model(args.weights, "cpu")
    ds = DSB2018Dataset(args.root, channels=1)
    with open(args.pool) as f:
        pool = json.load(f)
    rng = random.Random(args.seed)
    g = -(-args.size // 256)
    image, _ = mosaic(ds, [rng.choice(pool) for _ in range(g * g)], g, with_gt=False)
    image = image[:, :args.size, :args.size].contiguous()
    caps = [model.rpn.pre_nms_topk[1], model.rpn.post_nms_topk[1], model.roi_heads.detections_per_image]
    if args.mode == "whole-scaled":
        caps = scale_caps(model, max(1.0, (args.size / args.tile) ** 2))  # the tiles' caps per pixel
    base = _mem_kb("VmRSS")
    model_s = [0.0]

    def timed(tile):
        t = time.perf_counter()
        out = model([tile])[0]
        model_s[0] += time.perf_counter() - t
        return out

    t0 = time.perf_counter()
    with torch.no_grad():
        if args.mode.startswith("whole"):
            raw = timed(image)
        else:
            raw = tiled_predict(timed, image, args.tile, args.overlap, score_thresh=min(cfg.test.score_thresh))
    t1 = time.perf_counter()
    final = filter_predictions(raw, cfg.test)
    t2 = time.perf_counter()
    print(json.dumps({"mode": args.mode, "size": args.size, "raw": len(raw), "cells": len(final),
                      "predict_s": t1 - t0, "model_s": model_s[0], "post_s": t2 - t1, "base_mb": base / 1024,
                      "peak_mb": _mem_kb("VmHWM") / 1024, "caps": caps,
                      "crop": list(raw.masks.crops.shape[1:])}))


def cmd_bench(args) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    os.makedirs("output", exist_ok=True)
    pool_file = os.path.join("output", "bench_tiling_pool.json")
    with open(pool_file, "w") as f:  # read the strata once, not in every run
        json.dump(fluorescence_ids(DSB2018Dataset(args.root, channels=1)), f)
    print(f"checkpoint {args.weights}; tile {args.tile}, overlap {args.overlap}; {args.threads} thread(s); "
          f"each run in a fresh process, whole then tiled per size")
    rows = []
    for size in sizes:  # side by side: whole then tiled for each size
        for mode in ("whole", "whole-scaled", "tiled"):
            if mode.startswith("whole") and size > args.max_whole:
                rows.append({"mode": mode, "size": size, "skipped": True})
                continue
            cmd = [sys.executable, "-m", "bench.tiling", "_run", "--mode", mode, "--size", str(size),
                   "--weights", args.weights, "--root", args.root, "--tile", str(args.tile),
                   "--overlap", str(args.overlap), "--threads", str(args.threads), "--seed", str(args.seed),
                   "--pool", pool_file]
            limit = int(args.mem_limit_gb * (1 << 30))

            def cap_memory():  # a run that needs more fails alone instead of waking the OOM killer
                import resource

                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

            try:
                p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=cap_memory, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                rows.append({"mode": mode, "size": size, "failed": f"timed out after {args.timeout} s"})
                print(json.dumps(rows[-1]), flush=True)
                continue
            if p.returncode != 0:
                rows.append({"mode": mode, "size": size, "failed": (p.stderr.strip().splitlines() or ["?"])[-1][:160]})
            else:
                rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print()
    print("| image | mode | cells | predict s (model s) | postprocess s | peak RSS MB | peak - before MB | caps (pre/post/dets) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "predict_s" not in r:
            why = "skipped (--max-whole)" if r.get("skipped") else f"failed: {r.get('failed')}"
            print(f"| {r['size']}x{r['size']} | {r['mode']} | {why} | | | | | |")
            continue
        print(f"| {r['size']}x{r['size']} | {r['mode']} | {r['cells']} | {r['predict_s']:.1f} ({r['model_s']:.1f}) | {r['post_s']:.1f} | "
              f"{r['peak_mb']:.0f} | {r['peak_mb'] - r['base_mb']:.0f} | {'/'.join(str(c) for c in r['caps'])}"
              f"{' per tile' if r['mode'] == 'tiled' else ''} |")
    by = {(r["size"], r["mode"]): r for r in rows if "predict_s" in r}
    for size in sizes:
        t = by.get((size, "tiled"))
        for wm in ("whole", "whole-scaled"):
            w = by.get((size, wm))
            if w and t:
                print(f"{size}x{size}: tiled / {wm}: time {(t['predict_s'] + t['post_s']) / (w['predict_s'] + w['post_s']):.2f}x, "
                      f"memory above baseline {(t['peak_mb'] - t['base_mb']) / max(1, w['peak_mb'] - w['base_mb']):.2f}x, "
                      f"cells {t['cells']} vs {w['cells']}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.tiling", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("check", "bench", "_run"):
        s = sub.add_parser(name, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        s.add_argument("--weights", required=True)
        s.add_argument("--root", default="../shared/data/dsb2018/stage1_train")
        s.add_argument("--tile", type=int, default=256 if name == "check" else 512)
        s.add_argument("--overlap", type=int, default=64)
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--seed", type=int, default=0)
        if name == "check":
            s.add_argument("--grid", type=int, default=3)
            s.add_argument("--mosaics", type=int, default=4)
            s.add_argument("--split-file", default="")
            s.add_argument("--fold", type=int, default=0)
            s.add_argument("--no-merge", action="store_true", help="ownership only (merge=False)")
            s.add_argument("--whole-caps", choices=("checkpoint", "scaled"), default="scaled",
                           help="whole-image RPN/detection caps: the checkpoint's, or scaled by image/tile area "
                                "(the tiles' budget per pixel)")
        elif name == "bench":
            s.add_argument("--sizes", default="1024,2048,4000")
            s.add_argument("--max-whole", type=int, default=100000, help="skip whole-image runs above this size")
            s.add_argument("--mem-limit-gb", type=float, default=8.0,
                           help="address-space limit of each run (RLIMIT_AS); a run above it fails")
            s.add_argument("--timeout", type=int, default=1800, help="seconds per run")
        else:
            s.add_argument("--mode", choices=("whole", "whole-scaled", "tiled"), required=True)
            s.add_argument("--pool", required=True, help="json list of image indices to draw from")
            s.add_argument("--size", type=int, required=True)
    args = p.parse_args(argv)
    {"check": cmd_check, "bench": cmd_bench, "_run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    main()
