"""LIVECell-sized data: generate a COCO json of LIVECell's size, then measure reading, caching and
one epoch of the training loader (time, peak memory, cache size), against pycocotools' plain
``COCO()`` loading as the baseline.

    python -m bench.livecell_scale generate --out /tmp/livecell            # 5,239 images, ~1.6M cells
    python -m bench.livecell_scale read --dir /tmp/livecell   # pycocotools COCO() vs CocoDataset
    python -m bench.livecell_scale cache --dir /tmp/livecell  # python -m maskrcnn make_cache
    python -m bench.livecell_scale loader --dir /tmp/livecell # one epoch, configs/livecell_r50.yaml
    (--images N --cells M for a smaller run; every measurement runs in its own process)

What is generated, and why: LIVECell's train+val json has 5,239 images of 520x704 and ~1.6 million
polygon cells (Edlund et al. 2021); the cell types' names prefix the file names and images sit in
per-type folders (``<root>/<TYPE>/<file>.tif``), as the reader expects. Each cell is a polygon of
16-40 vertices (coordinates with 2 decimals) around an ellipse of 3-14 px radius; cells per image
follow a long-tailed draw (10 to ~2,500) scaled to the total. Images are real 8-bit 520x704 TIFF
files (an uneven background plus noise, so that the cache's lossless WebP encoding has realistic
work and size) because the cache build encodes every image: placeholders would hide most of its
time. The images do not show the cells: these benchmarks measure annotation handling, image I/O
and memory, not a model.

Peak memory is the process' peak RSS (``ru_maxrss``); for the loader, the peak over time of the
summed PSS (proportional set size: shared pages split between the processes that map them) of
the main process and its workers, sampled every 0.2 s, and the main process' peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

import numpy as np

CELL_TYPES = ("A172", "BT474", "BV2", "Huh7", "MCF7", "SHSY5Y", "SkBr3", "SKOV3")
H, W = 520, 704


# ----------------------------------------------------------------------------------- generate
def _counts(rng, n_images: int, total: int) -> np.ndarray:
    raw = rng.lognormal(mean=0.0, sigma=0.9, size=n_images)
    c = np.clip(np.round(raw / raw.sum() * total), 10, 2500).astype(np.int64)
    c[np.argmax(c)] += total - c.sum()  # exact total
    return np.clip(c, 10, None)


def _polygons(rng, n: int):
    """``n`` cell polygons (flat coordinate lists, 2 decimals), their COCO boxes and areas."""
    k = rng.integers(16, 41, size=n)
    K = 40
    cx = rng.uniform(15, W - 15, n)[:, None]
    cy = rng.uniform(15, H - 15, n)[:, None]
    rx = rng.uniform(3, 14, n)[:, None]
    ry = rx * rng.uniform(0.5, 1.5, (n, 1))
    rot = rng.uniform(0, np.pi, (n, 1))
    j = np.arange(K)[None, :]
    t = 2 * np.pi * np.minimum(j, k[:, None] - 1) / k[:, None]  # vertices past k repeat the last one (cut below)
    r = 1 + rng.normal(0, 0.05, (n, K))
    x, y = rx * r * np.cos(t), ry * r * np.sin(t)
    px = np.clip(cx + x * np.cos(rot) - y * np.sin(rot), 0, W - 1)
    py = np.clip(cy + x * np.sin(rot) + y * np.cos(rot), 0, H - 1)
    valid = j < k[:, None]
    x0 = np.where(valid, px, np.inf).min(1)
    y0 = np.where(valid, py, np.inf).min(1)
    x1 = np.where(valid, px, -np.inf).max(1)
    y1 = np.where(valid, py, -np.inf).max(1)
    xy = np.round(np.stack([px, py], 2), 2).reshape(n, 2 * K).tolist()
    boxes = np.round(np.stack([x0, y0, x1 - x0, y1 - y0], 1), 2).tolist()
    areas = np.round(np.pi * rx[:, 0] * ry[:, 0], 2).tolist()
    polys = [row[: 2 * int(ki)] for row, ki in zip(xy, k)]  # per cell: slicing lists only
    return polys, boxes, areas


def _image(rng) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    a, b, c = rng.uniform(-0.05, 0.05, 3)
    base = 128 + 30 * (a * xx / W + b * yy / H) * 10 + 10 * np.sin(xx / rng.uniform(40, 90) + c * 50)
    img = base + rng.normal(0, 8, (H, W))
    return np.clip(img, 0, 255).astype(np.uint8)


def cmd_generate(args) -> None:
    from PIL import Image
    from tqdm import tqdm

    rng = np.random.default_rng(args.seed)
    counts = _counts(rng, args.images, args.cells)
    img_dir = os.path.join(args.out, "images")
    for t in CELL_TYPES:
        os.makedirs(os.path.join(img_dir, t), exist_ok=True)
    ann_path = os.path.join(args.out, "livecell_like_train.json")
    images, ann_id = [], 1
    t0 = time.time()
    tmp = ann_path + ".tmp"
    with open(tmp, "w") as f:
        f.write('{"info": {"description": "synthetic, LIVECell-sized (bench/livecell_scale.py)"}, '
                '"categories": [{"id": 1, "name": "cell", "supercategory": "cell"}], "annotations": [')
        first = True
        for i in tqdm(range(args.images), desc="generate", mininterval=5):
            ctype = CELL_TYPES[i % len(CELL_TYPES)]
            name = f"{ctype}_Phase_synthetic_{i:05d}.tif"
            images.append({"id": i + 1, "file_name": name, "height": H, "width": W})
            if not args.no_images:
                Image.fromarray(_image(rng)).save(os.path.join(img_dir, ctype, name))
            polys, boxes, areas = _polygons(rng, int(counts[i]))
            anns = []
            for p, bb, ar in zip(polys, boxes, areas):
                anns.append({"id": ann_id, "image_id": i + 1, "category_id": 1, "segmentation": [p], "area": ar,
                             "bbox": bb, "iscrowd": 0})
                ann_id += 1
            s = json.dumps(anns)[1:-1]
            if s:
                f.write(("" if first else ", ") + s)
                first = False
        f.write('], "images": ' + json.dumps(images) + "}")
    os.replace(tmp, ann_path)
    print(f"wrote {ann_path}: {args.images} images, {ann_id - 1} cells, {os.path.getsize(ann_path) / 1e6:.0f} MB "
          f"in {time.time() - t0:.0f} s")


# ------------------------------------------------------------------------------------ measure
def _ann(args) -> str:
    return os.path.join(args.dir, "livecell_like_train.json")


def _child(code: str) -> dict:
    """Run ``code`` in a fresh Python; it prints one JSON line; add wall time and peak RSS."""
    t = time.time()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    out = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    out["wall_s"] = time.time() - t
    return out


PEAK = ("import resource, json, time, os\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20\n")
START = "rss0 = rss(); t0 = time.time()\n"
REPORT = ("print(json.dumps(dict(res, inner_s=time.time() - t0, rss_after_imports_mb=rss0, "
          "peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))")


def cmd_read(args) -> None:
    ann, root = _ann(args), os.path.join(args.dir, "images")
    # Time and memory from after the imports (ours imports torch: ~200 MB, seconds on a busy machine).
    base = None if args.skip_pycocotools else _child(
        PEAK + "from pycocotools.coco import COCO\n" + START + f"c = COCO({ann!r})\n"
        "res = dict(images=len(c.imgs), annotations=len(c.anns), rss_after_mb=rss())\n" + REPORT)
    ours = _child(PEAK + "from maskrcnn.data.coco_dataset import CocoDataset\nimport gc\n" + START
                  + f"d = CocoDataset({ann!r}, {root!r}, class_agnostic=True)\n"
                  "gc.collect(); r = rss(); s = d.load(0)\n"
                  "res = dict(images=len(d), first_image_cells=len(s.instances), rss_after_mb=r)\n" + REPORT)
    print(f"json {os.path.getsize(ann) / 1e6:.0f} MB")
    for name, r in (("pycocotools COCO()", base), ("ours CocoDataset", ours)):
        if r is None:
            continue
        print(f"{name:20s} {r['inner_s']:7.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB (after imports "
              f"{r['rss_after_imports_mb']:.0f} MB), RSS once loaded {r['rss_after_mb']:.0f} MB")
    if base is None:
        return
    grow = [r["peak_rss_mb"] - r["rss_after_imports_mb"] for r in (base, ours)]
    held = [r["rss_after_mb"] - r["rss_after_imports_mb"] for r in (base, ours)]
    print(f"ratio (pycocotools time / ours): {base['inner_s'] / ours['inner_s']:.2f}x; memory above the imports, "
          f"peak: pycocotools {grow[0]:.0f} MB, ours {grow[1]:.0f} MB; held once loaded: pycocotools "
          f"{held[0]:.0f} MB, ours {held[1]:.0f} MB")


def cmd_cache(args) -> None:
    out = args.cache or os.path.join(args.dir, "livecell_like.npz")
    cmd = [sys.executable, "-m", "maskrcnn", "make_cache", "--format", "coco", "--root", os.path.join(args.dir, "images"),
           "--ann-file", _ann(args), "--out", out] + (["--workers", str(args.workers)] if args.workers else [])
    t = time.time()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, capture_output=True, text=True)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.time() - t
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    print(p.stdout.strip().splitlines()[-1])
    print(f"cache: {wall:.0f} s wall, {c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime:.0f} s CPU (all processes), "
          f"largest process peak RSS {c1.ru_maxrss / 1024:.0f} MB, file {os.path.getsize(out) / 1e6:.0f} MB "
          f"({' '.join(cmd[2:])})")


def _pss_mb(pids) -> float:
    tot = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for ln in f:
                    if ln.startswith("Pss:"):
                        tot += int(ln.split()[1])
        except OSError:
            pass
    return tot / 1024


def _tree(pid: int):
    out = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            for c in f.read().split():
                out += _tree(int(c))
    except OSError:
        pass
    return out


def cmd_loader(args) -> None:
    from maskrcnn.config import load_config
    from maskrcnn.data import build_dataset, build_loader, build_reader

    src = args.cache or os.path.join(args.dir, "livecell_like.npz")
    over = [f"data.root={src}", "data.format=cache", "data.ann_file=", f"data.split_file={args.dir}/folds.json",
            f"data.num_workers={args.workers}"]
    cfg = load_config("configs/livecell_r50.yaml", over)
    peak = {"pss": 0.0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["pss"] = max(peak["pss"], _pss_mb(_tree(os.getpid())))
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    t = time.time()
    reader = build_reader(cfg.data)
    ds = build_dataset(cfg.data, split="train", augment=True, seed=0, reader=reader)
    t_open = time.time() - t
    loader = build_loader(ds, cfg.data.batch_size, shuffle=True, num_workers=cfg.data.num_workers, seed=0)
    n_img = n_cells = 0
    limit = args.max_batches or len(loader)
    from tqdm import tqdm

    for i, batch in enumerate(tqdm(loader, total=limit, mininterval=10, desc="epoch")):
        n_img += len(batch)
        n_cells += sum(len(s.instances) for s in batch)
        if i + 1 >= limit:
            break
    wall = time.time() - t
    stop.set()
    main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"loader ({src}, batch {cfg.data.batch_size}, {cfg.data.num_workers} workers, augmentation of "
          f"configs/livecell_r50.yaml): open {t_open:.1f} s; {n_img} images / {n_cells} cells in {wall:.0f} s "
          f"({n_img / wall:.1f} img/s); peak PSS of main + workers {peak['pss']:.0f} MB; main peak RSS {main_rss:.0f} MB")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("generate", "read", "cache", "loader"))
    p.add_argument("--out", default="/tmp/livecell", help="generate: output folder")
    p.add_argument("--dir", default="/tmp/livecell", help="the generated folder")
    p.add_argument("--images", type=int, default=5239)
    p.add_argument("--cells", type=int, default=1_600_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-images", action="store_true", help="generate: the json only")
    p.add_argument("--cache", default="", help="cache file (default <dir>/livecell_like.npz)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-batches", type=int, default=0, help="loader: stop after this many batches (0: one epoch)")
    p.add_argument("--skip-pycocotools", action="store_true", help="read: ours only (the baseline needs ~6 GB here)")
    args = p.parse_args(argv)
    {"generate": cmd_generate, "read": cmd_read, "cache": cmd_cache, "loader": cmd_loader}[args.command](args)


if __name__ == "__main__":
    main()
