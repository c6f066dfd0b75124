"""The training phase's GPU checks besides the head to head's speed runs, each writing one small JSON.

    python -m bench.gpu_check roi-align --out R.json             # NCHW float32 RoIAlign vs torchvision
    python -m bench.gpu_check fp16 --out F.json --data .devdata/dsb2018.npz --split-file .devdata/dsb2018_folds.json
    python -m bench.gpu_check memory --out M.json --amp fp16      # Sartorius recipe's peak memory, capped
    python -m bench.gpu_check merge --out ALL.json --speed results.json roi_align=R.json fp16=F.json ...
    python -m bench.gpu_check folds --out .devdata/dsb2018_folds.json --data .devdata/dsb2018.npz
    (add --device cpu --quick to any of them: tiny sizes, to check that the code runs end to end)

- ``roi-align``: forward and forward+backward of contiguous (NCHW) float32 RoIAlign, ours vs
  ``torchvision.ops.roi_align``, at P2..P5 of an 800x800 input (batch 2, 256 channels, 512 RoIs
  sized for each level, sampling ratio 2, aligned), 7x7 and 14x14; CUDA-event medians; max abs
  difference of outputs and gradients.
- ``fp16``: the DSB2018 recipe (``configs/dsb2018_r50_gn.yaml``) trained with fp16 autocast and
  the gradient scaler (Kaggle's T4 has no bf16) through the real ``Trainer`` for ``--iters``
  iterations at full learning rate after a short warm-up; reports whether every loss stayed finite
  (the trainer stops on the first non-finite loss), the final loss scale and the losses.
- ``memory``: the Sartorius recipe (``configs/sartorius_r50.yaml``: batch 4, multi-scale up to
  1152 px short side, 1,000 detections) on synthetic 520x704 images with 400-800 cells, at its
  largest training scale, with the process capped to ``--cap-gib`` (15 GiB: a 16 GB P100/T4 less
  what CUDA itself takes) by ``torch.cuda.set_per_process_memory_fraction``: peak allocated and
  reserved memory, and whether it ran out of memory.
- ``merge``: one JSON in the form of ``bench/results/h2h_dsb2018_h200_2026-11-26.json``
  (``speed.models.<name>.train_it_per_s`` / ``infer_img_per_s``) plus the other checks.

Run it from the repository root with the package importable (``PYTHONPATH=.``);
``bash bench/gpu_check.sh training`` runs everything in one GPU call.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time

import torch


# --quick: a slim ResNet-18-FPN, same code paths (for a CPU dry run; bench/gpu_check.sh passes it
# to head_to_head.py too).
QUICK_MODEL = [
    "model.backbone.name=resnet18", "model.backbone.stem_out_channels=32", "model.backbone.res2_out_channels=32",
    "model.fpn.out_channels=32", "model.mask_head.conv_dim=32", "model.mask_head.num_convs=1",
    "model.roi_heads.box_fc_dim=64",
]


def _write(path: str, obj: dict) -> None:
    from maskrcnn.fileio import atomic_json

    atomic_json(obj, path)
    print(json.dumps(obj, indent=1)[:3000], flush=True)


def _device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", total_gib=p.total_memory / 2**30)
    return info


# ------------------------------------------------------------------------------------- RoIAlign
def _time(fn, device: torch.device, repeat: int) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(repeat):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
    else:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def cmd_roi_align(args) -> dict:
    from maskrcnn.ops import has_cuda_ops, roi_align

    try:
        import torchvision
    except ImportError:
        torchvision = None
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    size, C, K = (800, 256, 512) if not args.quick else (128, 8, 16)
    rows = []
    for lvl, stride in enumerate((4, 8, 16, 32)):
        H = W = size // stride
        x = torch.randn(2, C, H, W, generator=g).to(dev)
        lo, hi = (16 * 2 ** lvl, 112 * 2 ** lvl) if not args.quick else (8, 64)
        wh = lo + torch.rand(K, 2, generator=g) * (hi - lo)
        xy = torch.rand(K, 2, generator=g) * (size - wh)
        rois = torch.cat([torch.randint(0, 2, (K, 1), generator=g).float(), xy, xy + wh], 1).to(dev)
        for out in (7, 14):
            ours = lambda: roi_align(x, rois, out, 1 / stride, 2, True)  # noqa: E731
            tv = (lambda: torchvision.ops.roi_align(x, rois, out, 1 / stride, 2, True)) if torchvision else None
            row = {"level": f"P{lvl + 2}", "map": [H, W], "output": out, "rois": K}
            row["ours_fwd_ms"] = _time(ours, dev, args.repeat)
            xg = x.clone().requires_grad_(True)
            gout = torch.randn(ours().shape, generator=g).to(dev)

            def ours_bwd():
                xg.grad = None
                roi_align(xg, rois, out, 1 / stride, 2, True).backward(gout)

            row["ours_fwdbwd_ms"] = _time(ours_bwd, dev, args.repeat)
            if tv is not None:
                def tv_bwd():
                    xg.grad = None
                    torchvision.ops.roi_align(xg, rois, out, 1 / stride, 2, True).backward(gout)

                row["tv_fwd_ms"] = _time(tv, dev, args.repeat)
                row["tv_fwdbwd_ms"] = _time(tv_bwd, dev, args.repeat)
                row["fwd_ratio"] = row["tv_fwd_ms"] / row["ours_fwd_ms"]
                row["fwdbwd_ratio"] = row["tv_fwdbwd_ms"] / row["ours_fwdbwd_ms"]
                row["fwd_max_abs_diff"] = (ours() - tv()).abs().max().item()
                ours_bwd()
                ga = xg.grad.clone()
                tv_bwd()
                row["grad_max_abs_diff"] = (ga - xg.grad).abs().max().item()
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    res = _device_info(dev)
    res.update(what="NCHW float32 RoIAlign, ours vs torchvision (ratio = tv ms / ours ms, > 1: ours faster)",
               compiled_cuda_ops=has_cuda_ops(), torchvision=getattr(torchvision, "__version__", None), rows=rows)
    if rows and "fwd_ratio" in rows[0]:
        res["min_fwd_ratio"] = min(r["fwd_ratio"] for r in rows)
        res["min_fwdbwd_ratio"] = min(r["fwdbwd_ratio"] for r in rows)
    return res


# ------------------------------------------------------------------------------------- fp16
class _Stopped(Exception):
    """SIGTERM (the calling script's ``timeout``): report what was measured so far."""


def _on_term(signum, frame):
    raise _Stopped()


def _trainer_run(cfg) -> dict:
    import signal

    from maskrcnn.engine.curves import read_metrics
    from maskrcnn.engine.hooks import NonFiniteLossError
    from maskrcnn.engine.trainer import Trainer

    t = time.perf_counter()
    error = None
    trainer = None
    signal.signal(signal.SIGTERM, _on_term)
    try:
        trainer = Trainer(cfg, progress=False)
        trainer.train()
    except NonFiniteLossError as e:
        error = str(e)
    except torch.cuda.OutOfMemoryError as e:  # the memory check reports it
        error = "out of memory: " + str(e).splitlines()[0]
    except _Stopped:
        error = "stopped by the time limit (the figures are up to the last logged iteration)"
    wall = time.perf_counter() - t
    recs = [r for r in read_metrics(os.path.join(cfg.train.output_dir, "metrics.jsonl")) if "loss" in r]
    out = {"wall_s": wall, "error": error, "iterations": recs[-1]["iteration"] if recs else 0,
           "all_losses_finite": error is None and all(math.isfinite(r["loss"]) for r in recs),
           "loss_first": recs[0]["loss"] if recs else None, "loss_last": recs[-1]["loss"] if recs else None,
           "img_per_s_median": sorted(r["img_per_s"] for r in recs)[len(recs) // 2] if recs else None,
           "losses": [{k: r[k] for k in r if k.startswith("loss") or k in ("iteration", "grad_norm")} for r in recs]}
    if trainer is not None and trainer.scaler is not None:
        out["final_loss_scale"] = float(trainer.scaler.get_scale())
    return out


def cmd_fp16(args) -> dict:
    from maskrcnn.config import load_config

    out_dir = args.work or tempfile.mkdtemp(prefix="fp16_")
    iters = args.iters
    over = [
        "solver.amp=fp16", f"solver.max_iter={iters}", f"solver.warmup_iters={max(1, min(100, iters // 3))}",
        f"train.output_dir={out_dir}", "train.eval_period=0", f"train.checkpoint_period={iters}",
        f"train.log_period={max(1, min(10, iters // 10))}", f"train.device={args.device}",
        f"data.num_workers={args.workers}",
    ]
    if args.data:
        over += ["data.format=cache", f"data.root={args.data}", f"data.split_file={args.split_file}"]
    else:  # no dataset here: the recipe on synthetic cells
        over += ["data.format=synthetic", "data.root=", "data.split_file=", "data.class_agnostic=true",
                 "model.input.in_channels=3"]
    if args.quick:
        over += ["data.batch_size=2", "data.augment.crop_size=[64,64]", "data.synthetic.num_images=8",
                 "data.synthetic.height=96", "data.synthetic.width=96", "model.rpn.post_nms_topk_train=100",
                 "model.roi_heads.batch_size_per_image=32"]
    cfg = load_config(args.config, over + list(args.set))
    torch.manual_seed(cfg.train.seed)
    res = _device_info(torch.device(args.device))
    res.update(what="DSB2018 recipe, fp16 autocast + GradScaler, Trainer", config=args.config, overrides=over + list(args.set))
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    res.update(_trainer_run(cfg))
    if args.device.startswith("cuda"):
        res["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return res


# ------------------------------------------------------------------------------------ memory
def cmd_memory(args) -> dict:
    from maskrcnn.config import load_config

    dev = torch.device(args.device)
    res = _device_info(dev)
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory
        frac = min(1.0, args.cap_gib * 2**30 / total)
        torch.cuda.set_per_process_memory_fraction(frac, dev)
        res["cap_gib"] = args.cap_gib
    out_dir = args.work or tempfile.mkdtemp(prefix="mem_")
    h, w, cells, scale = (520, 704, "[400,800]", 1152) if not args.quick else (96, 128, "[10,20]", 192)
    over = [
        "data.format=synthetic", "data.root=", "data.split_file=", f"data.synthetic.height={h}",
        f"data.synthetic.width={w}", f"data.synthetic.cells_per_image={cells}", "data.synthetic.num_images=32",
        f"model.input.min_size_train=[{scale}]",  # the recipe's largest training scale, every step
        f"solver.amp={args.amp}", f"solver.max_iter={args.iters}", "solver.warmup_iters=1", "solver.steps=[]",
        "solver.lr=0.0001",  # random frozen-BN weights: keep the run finite; memory does not depend on it
        f"train.output_dir={out_dir}", "train.eval_period=0", f"train.checkpoint_period={args.iters}",
        "train.log_period=1", f"train.device={args.device}", f"data.num_workers={args.workers}",
    ]
    if args.quick:
        over += ["data.batch_size=2", "model.rpn.post_nms_topk_train=100", "model.roi_heads.batch_size_per_image=32"]
    cfg = load_config(args.config, over + list(args.set))
    res.update(what="Sartorius recipe peak memory at its batch size and largest scale", config=args.config,
               overrides=over + list(args.set), batch_size=cfg.data.batch_size)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # frozen BN without weights: deliberate here
        run = _trainer_run(cfg)
    run.pop("losses", None)
    res.update(run)
    if dev.type == "cuda":
        res["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        res["fits_cap"] = run["error"] is None or not run["error"].startswith("out of memory")
    else:
        import resource

        res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return res


# ------------------------------------------------------------------------------------- merge
def cmd_merge(args) -> dict:
    """``parts``: ``KEY=PATH`` (or ``PATH``, keyed by its base name); missing files are noted as such."""
    out = {"what": args.what, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for part in ([f"speed={args.speed}"] if args.speed else []) + list(args.parts):
        key, path = part.split("=", 1) if "=" in part else (os.path.splitext(os.path.basename(part))[0], part)
        if os.path.isfile(path):
            with open(path) as f:
                out[key] = json.load(f)
        else:
            out[key] = {"missing": path}
    return out


def cmd_folds(args) -> dict:
    """Write the DSB2018 fold file of ``--data`` (what the recipe makes on first use) to ``--out``."""
    from maskrcnn.config import load_config
    from maskrcnn.data import build_dataset, build_reader

    cfg = load_config(args.config, ["data.format=cache", f"data.root={args.data}", f"data.split_file={args.out}"])
    build_dataset(cfg.data, split="train", reader=build_reader(cfg.data))
    with open(args.out) as f:
        return json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("roi-align", "fp16", "memory", "merge", "folds"))
    p.add_argument("--out", required=True, help="JSON to write")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a CPU dry run of the code paths)")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--config", default="")
    p.add_argument("--data", default="", help="fp16: DSB2018 cache (.npz); empty: synthetic cells")
    p.add_argument("--split-file", default="")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--amp", default="fp16", choices=("bf16", "fp16", ""))
    p.add_argument("--cap-gib", type=float, default=15.0)
    p.add_argument("--work", default="", help="training output folder (default: a temporary one)")
    p.add_argument("--speed", default="", help="merge: head_to_head.py results.json")
    p.add_argument("--what", default="bash bench/gpu_check.sh training")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("parts", nargs="*", help="merge: the other JSON files")
    args = p.parse_intermixed_args(argv)
    if args.quick:  # a dry run of the code paths: a slim model too
        args.set = QUICK_MODEL + list(args.set)
        args.workers = 0
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if not args.config:
        args.config = "configs/sartorius_r50.yaml" if args.command == "memory" else "configs/dsb2018_r50_gn.yaml"
    fn = {"roi-align": cmd_roi_align, "fp16": cmd_fp16, "memory": cmd_memory, "merge": cmd_merge,
          "folds": cmd_folds}[args.command]
    res = fn(args)
    if args.command != "folds":  # the fold file is written by the dataset itself
        _write(args.out, res)


if __name__ == "__main__":
    main()
