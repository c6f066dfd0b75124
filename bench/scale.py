"""The Dask paths (``maskrcnn.scale``) against the single-process ones, on DSB2018 images.

    # a mosaic of DSB2018 fluorescence images as zarr
    python -m bench.scale mosaic --root ../shared/data/dsb2018/stage1_train --grid 5 --out mosaic.zarr

    # the slide path with 1 and 2 workers vs single-process tiled predict (Predictor, same tiles)
    python -m bench.scale slide --weights W.pth --image mosaic.zarr --workers 1,2 [--block 512 --overlap 64] [--tta none] \
        [--malloc-trim BYTES]

    # a collection with one worker killed mid-run vs predict.py on the same images
    python -m bench.scale collection --weights W.pth --root ../shared/data/dsb2018/stage1_train --images 60 \
        --kill-after 20 [--tta none]

``slide`` runs the single-process baseline in a child process (``_baseline``: the whole mosaic in
memory, ``Predictor`` with ``tile_size = block``, post-processed; its peak resident memory is the
child's ``VmHWM``), then the Dask path on a fresh local cluster per worker count (peak resident
memory of each worker process: ``ru_maxrss`` read on the workers at the end; the client's own is
printed too). Cells are matched one to one at mask IoU > 0.5 between the two label images
(computed from the pixel pairs of the two label images, no loop over cells).

``collection`` links the first ``--images`` DSB2018 images into a flat folder, runs ``predict.py``
on it, then the collection path with 2 workers, one of which is killed with SIGKILL once
``--kill-after`` part files exist; it reports whether the two CSVs are byte-identical and counts
the ids (each must appear, none twice).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch


def _mem_kb(key: str = "VmHWM") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def _worker_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _test(cfg_test, tta: str):
    import dataclasses

    return cfg_test if tta == "config" else dataclasses.replace(cfg_test, tta=() if tta == "none" else tuple(tta.split(",")))


# ------------------------------------------------------------------------------ mosaic
def cmd_mosaic(args) -> None:
    import random

    import zarr

    from bench.tiling import fluorescence_ids, mosaic
    from maskrcnn.data.dsb2018 import DSB2018Dataset

    ds = DSB2018Dataset(args.root, channels=1)
    pool = fluorescence_ids(ds)
    rng = random.Random(args.seed)
    image, _ = mosaic(ds, [rng.choice(pool) for _ in range(args.grid ** 2)], args.grid, with_gt=False)
    a = (image[0] * 255).round().clamp(0, 255).numpy().astype(np.uint8)
    zarr.open_array(args.out, mode="w", shape=a.shape, chunks=(args.chunk, args.chunk), dtype="uint8")[:] = a
    print(f"wrote {args.out}: {a.shape[0]}x{a.shape[1]} uint8, chunks {args.chunk}, {args.grid ** 2} images "
          f"from {len(pool)} 256x256 fluorescence images")


# ------------------------------------------------------------------------------ slide
def cmd_baseline(args) -> None:
    """Single-process tiled predict of the whole mosaic (in this fresh process); prints JSON."""
    import zarr

    from maskrcnn.inference.checkpoint import load_model
    from maskrcnn.formats.label_images import to_label_image
    from maskrcnn.inference.filtering import filter_predictions
    from maskrcnn.inference.predictor import build_predictor
    from maskrcnn.inference.tile_grid import plan_tiles

    torch.set_num_threads(args.threads)
    model, cfg = load_model(args.weights, "cpu")
    import dataclasses

    test = dataclasses.replace(_test(cfg.test, args.tta), tile_size=args.block, tile_overlap=args.overlap)
    a = zarr.open_array(args.image, mode="r")[:]
    image = torch.from_numpy(a.astype(np.float32) / 255.0)[None]
    pred = build_predictor([model], test, device="cpu")
    before = _mem_kb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    final = filter_predictions(pred.predict_raw(image), test)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.save(args.labels, to_label_image(final))
    print(json.dumps({"cells": len(final), "wall_s": wall, "cpu_s": cpu, "tiles": len(plan_tiles(a.shape, args.block, args.overlap)),
                      "peak_mb": _mem_kb() / 1024.0,
                      "rss_before_mb": before / 1024.0}))


def match_labels(a: np.ndarray, b: np.ndarray):
    """(cells of a, cells of b, one-to-one matches at IoU > 0.5) between two label images."""
    a, b = a.astype(np.int64).ravel(), b.astype(np.int64).ravel()
    na, nb = int(a.max()), int(b.max())
    area_a, area_b = np.bincount(a, minlength=na + 1), np.bincount(b, minlength=nb + 1)
    both = (a > 0) & (b > 0)
    pair, inter = np.unique(a[both] * (nb + 1) + b[both], return_counts=True)
    ia, ib = pair // (nb + 1), pair % (nb + 1)
    iou = inter / (area_a[ia] + area_b[ib] - inter)
    return int((area_a[1:] > 0).sum()), int((area_b[1:] > 0).sum()), int((iou > 0.5).sum())


def cmd_slide(args) -> None:
    import dataclasses

    import zarr
    from distributed import Client, LocalCluster

    from maskrcnn.inference.checkpoint import load_model
    from maskrcnn.scale.slide import run_slide
    from maskrcnn.scale.sources import open_source
    from maskrcnn.scale.workers import ModelSpec

    src = open_source(args.image)
    tmp = tempfile.mkdtemp(prefix="bench_scale_")
    base_labels = os.path.join(tmp, "baseline.npy")
    cmd = [sys.executable, "-m", "bench.scale", "_baseline", "--weights", args.weights, "--image", args.image,
           "--block", str(args.block), "--overlap", str(args.overlap), "--tta", args.tta, "--labels", base_labels,
           "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    base = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"mosaic {args.image}: {src.shape[1]}x{src.shape[2]}; block {args.block}, overlap {args.overlap}, tta {args.tta}")
    print(f"single process, tiled predict: {base['cells']} cells, {base['wall_s']:.1f} s wall, {base['cpu_s']:.1f} s CPU "
          f"({base['cpu_s'] / base['tiles']:.2f} s CPU per tile incl. stitching and post-processing), peak RSS {base['peak_mb']:.0f} MB "
          f"(model + image loaded: {base['rss_before_mb']:.0f} MB)")
    ref = np.load(base_labels)
    _, cfg = load_model(args.weights, "cpu")
    spec = ModelSpec(weights=(os.path.abspath(args.weights),), test=_test(cfg.test, args.tta), threads=1)
    print("| workers | blocks | skipped | cells | wall s | per predicted block: wall s / CPU s (mean) | join per block: wall s / CPU s | "
          "peak RSS per worker MB | cells matched (IoU > 0.5) / single-process cells |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    import dask

    trim = {} if args.malloc_trim is None else {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": args.malloc_trim}
    for n in [int(v) for v in args.workers.split(",")]:
        labels = os.path.join(tmp, f"labels_{n}.zarr")
        with dask.config.set(trim), LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, Client(cl) as c:
            st = run_slide(c, src, spec, labels, os.path.join(tmp, f"cells_{n}.csv"), args.block, args.overlap,
                           args.chunk, args.skip_contrast, progress="off")
            peaks = sorted(c.run(_worker_peak_mb).values())
        got = zarr.open_array(labels, mode="r")[:]
        na, nb, m = match_labels(ref, got)
        print(f"| {n} | {st['blocks']} | {st['skipped']} | {st['cells']} | {st['wall_s']:.1f} | {st['predict_s']:.2f} / {st['predict_cpu_s']:.2f} | "
              f"{st['finish_s']:.2f} / {st['finish_cpu_s']:.2f} | {', '.join(f'{p:.0f}' for p in peaks)} | {m} / {na} ({100.0 * m / max(na, 1):.2f}%) |",
              flush=True)
    print(f"client process peak RSS {_mem_kb() / 1024.0:.0f} MB; files in {tmp}")


# ------------------------------------------------------------------------------ collection
def cmd_collection(args) -> None:
    from distributed import Client, LocalCluster

    from maskrcnn.inference.checkpoint import load_model
    from maskrcnn.inference.outputs import SubmissionWriter
    from maskrcnn.cli.predict import main as predict_main
    from maskrcnn.scale.collection import assemble, claim_work_dir, list_inputs, manifest, part_path, run_collection
    from maskrcnn.scale.workers import ModelSpec

    tmp = tempfile.mkdtemp(prefix="bench_collection_")
    folder = os.path.join(tmp, "images")
    os.makedirs(folder)
    for p in sorted(glob.glob(os.path.join(args.root, "*", "images", "*.png")))[:args.images]:
        os.symlink(os.path.abspath(p), os.path.join(folder, os.path.basename(p)))
    ref = os.path.join(tmp, "predict_py.csv")
    tta = [] if args.tta == "config" else ["--tta", "" if args.tta == "none" else args.tta]
    t0 = time.perf_counter()
    rc = predict_main(["--weights", args.weights, "--images", folder, "--out", ref, "--device", "cpu", "--no-progress"] + tta)
    t_ref = time.perf_counter() - t0
    paths = list_inputs(folder)
    ids = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    _, cfg = load_model(args.weights, "cpu")
    spec = ModelSpec(weights=(args.weights,), test=_test(cfg.test, args.tta), threads=1)
    work = os.path.join(tmp, "work")
    claim_work_dir(work, manifest(spec, {}))
    killed = {}
    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, Client(cl) as c:
        pids = c.run(os.getpid)

        def killer():
            while sum(os.path.exists(part_path(work, i)) for i in ids) < args.kill_after:
                time.sleep(0.2)
            addr, pid = sorted(pids.items())[0]
            os.kill(pid, signal.SIGKILL)
            killed.update(addr=addr, pid=pid, at=time.perf_counter() - t0,
                          done=sum(os.path.exists(part_path(work, i)) for i in ids))

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        stats = run_collection(c, spec, paths, ids, work, images_per_task=args.images_per_task, progress="off")
        pids_after = c.run(os.getpid)
    t_dask = time.perf_counter() - t0
    got = os.path.join(tmp, "collection.csv")
    t0 = time.perf_counter()
    timings = assemble(work, ids, SubmissionWriter(got), progress="off")
    t_asm = time.perf_counter() - t0
    wall = [t["total"] - t.get("encode", 0.0) for t in timings if "cpu" in t]
    cpu = [t["cpu"] for t in timings if "cpu" in t]
    a, b = open(ref, "rb").read(), open(got, "rb").read()
    row_ids = [ln.split(",")[0] for ln in b.decode().splitlines()[1:]]
    print(f"{len(ids)} images; predict.py (rc {rc}): {t_ref:.1f} s; collection, 2 workers: {t_dask:.1f} s, "
          f"{stats['predicted']} predicted; assembly {t_asm:.2f} s ({len(ids) / t_asm:.0f} parts/s); "
          f"per image on a worker (read + model + post-processing): {np.mean(wall):.2f} s wall, {np.mean(cpu):.2f} s CPU (means)")
    print(f"killed worker pid {killed.get('pid')} at {killed.get('at', 0):.1f} s with {killed.get('done')} parts written; "
          f"workers after: {sorted(pids_after.values())} (before {sorted(pids.values())})")
    print(f"CSV byte-identical to predict.py: {a == b}; ids in the CSV: {len(set(row_ids))} of {len(ids)}, "
          f"missing {len(set(ids) - set(row_ids))}; object rows {len(row_ids)} (predict.py: {a.decode().count(chr(10)) - 1})")
    print(f"files in {tmp}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("mosaic")
    s.add_argument("--root", default="../shared/data/dsb2018/stage1_train")
    s.add_argument("--grid", type=int, default=5)
    s.add_argument("--chunk", type=int, default=512)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    for name in ("slide", "_baseline"):
        s = sub.add_parser(name)
        s.add_argument("--weights", required=True)
        s.add_argument("--image", required=True)
        s.add_argument("--block", type=int, default=512)
        s.add_argument("--overlap", type=int, default=64)
        s.add_argument("--tta", default="none", help="none | config | comma-separated views")
        s.add_argument("--threads", type=int, default=1)
        if name == "slide":
            s.add_argument("--workers", default="1,2")
            s.add_argument("--chunk", type=int, default=1024)
            s.add_argument("--skip-contrast", type=float, default=0.1)
            s.add_argument("--malloc-trim", type=int, default=None,
                           help="MALLOC_TRIM_THRESHOLD_ of the workers (default: what Dask's nanny sets, 65536)")
        else:
            s.add_argument("--labels", required=True)
    s = sub.add_parser("collection")
    s.add_argument("--weights", required=True)
    s.add_argument("--root", default="../shared/data/dsb2018/stage1_train")
    s.add_argument("--images", type=int, default=60)
    s.add_argument("--kill-after", type=int, default=20)
    s.add_argument("--images-per-task", type=int, default=2)
    s.add_argument("--tta", default="none", help="none | config | comma-separated views")
    args = p.parse_args(argv)
    {"mosaic": cmd_mosaic, "slide": cmd_slide, "_baseline": cmd_baseline, "collection": cmd_collection}[args.cmd](args)


if __name__ == "__main__":
    main()
