"""Training throughput of the engine under each precision mode, side by side.

Runs the real trainer (``maskrcnn.engine.trainer.Trainer``: loader, AMP, optimiser, logging) for
a few iterations per mode on synthetic cells of a chosen size, and prints images/s (median over
the iterations after ``--skip`` warm-up ones) and the ratio to full precision.

    python -m bench.train_speed [--config configs/dsb2018_r50_gn.yaml] [--device cuda]
        [--modes fp32 bf16 fp16] [--iters 30] [--skip 10] [--batch 8] [--size 512 512] [--set k=v ...]

The config's model and solver are used as they are; its data section is replaced by synthetic
images (``--size``, ~``--cells`` per image), so no dataset is needed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from maskrcnn.config import load_config  # noqa: E402
from maskrcnn.engine.curves import read_metrics  # noqa: E402
from maskrcnn.engine.trainer import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/dsb2018_r50_gn.yaml")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", nargs="+", default=["fp32", "bf16", "fp16"])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--skip", type=int, default=10, help="warm-up iterations left out of the timing")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    ap.add_argument("--cells", type=int, default=60)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    if args.iters <= args.skip:
        ap.error("--iters must exceed --skip")

    results = {}
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as out:
            overrides = [
                "data.format=synthetic",
                "data.root=",
                f"data.synthetic.num_images={max(4 * args.batch, 16)}",
                f"data.synthetic.height={args.size[0]}",
                f"data.synthetic.width={args.size[1]}",
                f"data.synthetic.cells_per_image=[{args.cells // 2},{args.cells}]",
                "data.class_agnostic=true",
                "data.split_file=",
                "data.augment.crop_size=[0,0]",
                f"data.batch_size={args.batch}",
                f"data.num_workers={args.workers}",
                "model.roi_heads.num_classes=1",
                "test.score_thresh=[0.5]",
                "test.mask_thresh=[0.5]",
                "test.min_area=[0]",
                f"solver.max_iter={args.iters}",
                "solver.steps=[]",
                f"solver.warmup_iters={min(5, args.iters)}",
                f"solver.amp={'' if mode == 'fp32' else mode}",
                f"train.output_dir={out}",
                f"train.device={args.device}",
                f"train.checkpoint_period={args.iters}",
                "train.eval_period=0",
                "train.log_period=1",
            ] + list(args.set)
            cfg = load_config(args.config, overrides)
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            Trainer(cfg, progress=False).train()
            wall = time.perf_counter() - t0
            recs = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r]
            ips = statistics.median(r["img_per_s"] for r in recs[args.skip :])
            mem = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
            results[mode] = (ips, mem, wall, recs[-1]["loss"])
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{torch.get_num_threads()}"
    print(f"\n{args.config} on {dev}: batch {args.batch} of {args.size[0]}x{args.size[1]}, {args.iters} iterations")
    base = results.get("fp32", next(iter(results.values())))[0]
    print(f"{'mode':6} {'img/s':>8} {'x fp32':>7} {'peak GiB':>9} {'wall s':>7} {'last loss':>9}")
    for mode, (ips, mem, wall, loss) in results.items():
        print(f"{mode:6} {ips:8.2f} {ips / base:7.2f} {mem:9.2f} {wall:7.1f} {loss:9.4f}")


if __name__ == "__main__":
    main()
