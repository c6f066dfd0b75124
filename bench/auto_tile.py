"""predict.py on one large mosaic of DSB2018 images: the default (automatic tiling) against
``--tile 512`` (and optionally ``--no-tile``), each in a fresh process.

    python -m bench.auto_tile --weights W.pth [--size 3000] [--modes default,tile512,notile]
        [--cache .devdata/dsb2018.npz] [--out output/bench_auto_tile]

The mosaic: 256 x 256 grayscale fluorescence images of DSB2018 stage 1 (the cache's
``256x256/gray/dark`` stratum, drawn at random with ``--seed``), edge to edge, cut to
``--size`` pixels, written as an 8-bit PNG; its ground-truth count is the nuclei whose box starts
inside the cut. Each mode runs ``predict.py --images <mosaic folder> --no-progress`` in its own
process under a small wrapper that reads the child's peak resident memory (``ru_maxrss``); the
table gives the cells written (non-empty CSV rows), the wall time, the peak memory, and the load
average before the run (the machine is shared), and what predict.py said about tiling and caps.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRATUM = "256x256/gray/dark"
MODES = {"default": [], "tile512": ["--tile", "512"], "notile": ["--no-tile"]}
_WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
         "sys.exit(r.returncode)")


def build_mosaic(cache: str, size: int, seed: int, out_png: str) -> int:
    """Write the mosaic PNG; returns its ground-truth nucleus count."""
    from maskrcnn.formats.dataset_cache import CacheDataset

    ds = CacheDataset(cache)
    pool = [i for i, s in enumerate(ds.strata()) if s == STRATUM]
    rng = random.Random(seed)
    g = -(-size // 256)
    image = np.zeros((256 * g, 256 * g), dtype=np.float32)
    count = 0
    for k in range(g * g):  # one image per cell of the grid
        s = ds.load(rng.choice(pool))
        r, c = divmod(k, g)
        image[r * 256:(r + 1) * 256, c * 256:(c + 1) * 256] = s.image[0].numpy()
        b = s.instances.boxes.numpy()
        count += int(((b[:, 0] + c * 256 < size) & (b[:, 1] + r * 256 < size)).sum())
    Image.fromarray((image[:size, :size] * 255).round().astype(np.uint8)).save(out_png)
    return count


def run_mode(mode: str, weights: str, images: str, out_dir: str) -> dict:
    out_csv = os.path.join(out_dir, f"{mode}.csv")
    cmd = [sys.executable, "-c", _WRAP, sys.executable, os.path.join(REPO, "predict.py"), "--weights", weights,
           "--images", images, "--out", out_csv, "--device", "cpu", "--no-progress", *MODES[mode]]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{mode}: predict.py failed ({res.returncode}):\n{res.stderr[-3000:]}")
    with open(out_csv) as f:
        cells = sum(1 for row in csv.DictReader(f) if row["predicted"])
    peak = next(int(line.split()[1]) for line in res.stderr.splitlines() if line.startswith("PEAK_KB"))
    said = [line for line in res.stderr.splitlines() if line.startswith(("predict: input", "warning:", "predict: 1 of"))]
    return {"mode": mode, "cells": cells, "wall_s": round(wall, 1), "peak_mb": round(peak / 1024),
            "load_before": round(load, 1), "said": said}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.auto_tile", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--size", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=os.path.join(REPO, ".devdata", "dsb2018.npz"))
    p.add_argument("--modes", default="default,tile512")
    p.add_argument("--out", default=os.path.join(REPO, "output", "bench_auto_tile"))
    args = p.parse_args(argv)
    images = os.path.join(args.out, "images")
    os.makedirs(images, exist_ok=True)
    gt = build_mosaic(args.cache, args.size, args.seed, os.path.join(images, f"mosaic{args.size}.png"))
    print(json.dumps({"mosaic": f"{args.size}x{args.size}", "gt_nuclei": gt}), flush=True)
    rows = []
    for mode in args.modes.split(","):
        rows.append(run_mode(mode, args.weights, images, args.out))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| mode | cells | vs tile512 | wall s | peak MB | load before |\n|---|---:|---:|---:|---:|---:|")
    ref = next((r["cells"] for r in rows if r["mode"] == "tile512"), None)
    for r in rows:
        ratio = f"{100.0 * r['cells'] / ref:.1f}%" if ref else ""
        print(f"| {r['mode']} | {r['cells']:,} | {ratio} | {r['wall_s']} | {r['peak_mb']:,} | {r['load_before']} |")


if __name__ == "__main__":
    main()
