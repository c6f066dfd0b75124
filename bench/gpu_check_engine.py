"""GPU checks of the training engine (no GPU in CI; `bash bench/gpu_check.sh engine`): PASS/FAIL lines.

    python -m bench.gpu_check_engine [--config configs/small.yaml] [--iters 12] [--out DIR]

1. bf16 autocast on CUDA: a run stopped by an exception during iteration k+1 (after the
   checkpoint at k) and resumed ends with losses close to an uninterrupted run's (GPU kernels are
   not bitwise deterministic, so a tolerance), and CUDA RNG states are in the checkpoint;
2. fp16 with a GradScaler on CUDA: finite weights, the scaler's state saved;
3. ``load_model(path, "cuda")`` predicts on the GPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from maskrcnn.config import load_config  # noqa: E402
from maskrcnn.inference.checkpoint import load_checkpoint, load_model  # noqa: E402
from maskrcnn.engine.curves import read_metrics  # noqa: E402
from maskrcnn.engine.trainer import Trainer, seed_everything  # noqa: E402
from maskrcnn.model import build_model  # noqa: E402


DEVICE = "cuda"


def _cfg(config, out, iters, amp, period):
    return load_config(config, [
        f"train.output_dir={out}", f"train.device={DEVICE}", f"solver.max_iter={iters}", "solver.steps=[]",
        "solver.schedule=cosine", f"solver.warmup_iters={min(4, iters)}", f"solver.amp={amp}",
        f"train.checkpoint_period={period}", f"train.eval_period={iters}", "train.log_period=1",
        "data.num_workers=2", "train.max_eval_images=4",
    ])


def _model_failing_at(cfg, at):
    """The config's model, raising on training forward call ``at`` (a crash mid-run)."""
    seed_everything(cfg.train.seed)  # the same initial weights in both runs
    model = build_model(cfg.model, load_weights=False, verbose=False)
    calls = {"n": 0}
    orig = model.forward

    def forward(images, targets=None):
        if model.training:
            calls["n"] += 1
            if calls["n"] == at:
                raise RuntimeError("injected failure")
        return orig(images, targets)

    model.forward = forward
    return model


def check_resume(config, root, iters):
    k = iters // 2
    ref_dir, run_dir = os.path.join(root, "ref"), os.path.join(root, "run")
    ref_cfg = _cfg(config, ref_dir, iters, "bf16", k)
    Trainer(ref_cfg, model=_model_failing_at(ref_cfg, 0), progress=False, overwrite=True).train()
    cfg = _cfg(config, run_dir, iters, "bf16", k)
    try:
        Trainer(cfg, model=_model_failing_at(cfg, k + 2), progress=False, overwrite=True).train()
        return "FAIL resume: the injected failure did not happen"
    except RuntimeError as e:
        if "injected failure" not in str(e):
            raise
    Trainer(cfg, resume=True, progress=False).train()
    a = [r for r in read_metrics(os.path.join(ref_dir, "metrics.jsonl")) if "loss" in r]
    b = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "loss" in r]
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b] == list(range(1, iters + 1))
    diff = max(abs(x["loss"] - y["loss"]) / max(abs(x["loss"]), 1e-6) for x, y in zip(a, b))
    ck = load_checkpoint(os.path.join(run_dir, "model_final.pth"))
    has_cuda_rng = len(ck["rng"][0]["cuda"]) == (torch.cuda.device_count() if DEVICE == "cuda" else 0)
    ok = diff < 0.05 and has_cuda_rng
    return (f"{'PASS' if ok else 'FAIL'} bf16 crash at {k + 2} + resume: max relative loss difference "
            f"{diff:.2e} over {iters} iterations; CUDA RNG saved: {has_cuda_rng}; "
            f"losses {a[0]['loss']:.3f} -> {a[-1]['loss']:.3f}")


def check_fp16(config, root, iters):
    out = os.path.join(root, "fp16")
    Trainer(_cfg(config, out, iters, "fp16", iters), progress=False, overwrite=True).train()
    ck = load_checkpoint(os.path.join(out, "model_final.pth"))
    finite = all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    scale = (ck["scaler"] or {}).get("scale")
    ok = finite and scale is not None and scale > 0
    return f"{'PASS' if ok else 'FAIL'} fp16 + GradScaler: finite weights {finite}, scaler scale {scale}"


def check_load_model(root):
    model, cfg = load_model(os.path.join(root, "fp16", "model_final.pth"), DEVICE)
    with torch.no_grad():
        (pred,) = model([torch.rand(cfg.model.input.in_channels, 128, 160, device=DEVICE)])
    ok = pred.boxes.device.type == DEVICE and pred.image_size == (128, 160)
    return f"{'PASS' if ok else 'FAIL'} load_model on {DEVICE}: {len(pred)} detections on a random image"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/small.yaml")
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--out", default="")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available: this script checks the GPU code paths")
    root = args.out or tempfile.mkdtemp(prefix="engine_gpu_check_")
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}, out {root}", flush=True)
    for name, fn in (("resume", lambda: check_resume(args.config, root, args.iters)),
                     ("fp16", lambda: check_fp16(args.config, root, args.iters)),
                     ("load_model", lambda: check_load_model(root))):
        try:
            print(fn(), flush=True)
        except Exception:
            print(f"FAIL {name}: exception\n{traceback.format_exc()}", flush=True)


if __name__ == "__main__":
    main()
