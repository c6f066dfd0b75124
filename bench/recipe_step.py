"""Where a training step of a recipe goes, on real data, per stage; config variants side by side.

Builds the recipe's Trainer (its data, loader, model and optimiser) for each variant, optionally
loads trained weights (a step of a trained model does more RoI-head work than one at
initialisation: more proposals match the ground truth, so the mask head gets more RoIs), and
times steps stage by stage: waiting for data, forward (and inside it the backbone, FPN, RPN with
its proposal selection and losses, RoI heads with the mask head), backward, optimiser. The
variants run alternately, one step each in turn, so a drifting machine slows them alike;
medians over ``--steps`` after ``--warmup`` steps.

    python -m bench.recipe_step configs/dsb2018_cpu.yaml --weights maskrcnn/zoo/nuclei.pth \\
        --variant "" --variant "model.roi_heads.batch_size_per_image=128"

Each ``--variant`` is a space-separated list of ``key=value`` overrides ("" = the config as it
is). The learning rate is set to 1e-6 after loading weights so that the model stays what it was.
"""
from __future__ import annotations

import argparse
import collections
import functools
import statistics
import tempfile
import time
from typing import Dict, List

import torch

from maskrcnn.config import load_config
from maskrcnn.engine.trainer import Trainer
import maskrcnn.model.rpn as rpn_module

STAGES = ("backbone", "fpn", "rpn", "roi_heads")


class StageTimer:
    """Wall seconds per stage of the current step (module hooks and wrapped RPN functions)."""

    def __init__(self, model: torch.nn.Module):
        self.times: Dict[str, float] = collections.defaultdict(float)
        self._start: Dict[str, float] = {}
        for name in STAGES:
            self._hook(name, getattr(model, name))
        self._hook("mask_head", model.roi_heads.mask_head)

    def _hook(self, name: str, module: torch.nn.Module) -> None:
        def pre(mod, inp):
            self._start[name] = time.perf_counter()

        def post(mod, inp, out):
            self.times[name] += time.perf_counter() - self._start[name]

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)


def _wrap_rpn_functions(times: List[Dict[str, float]]) -> None:
    """Times the RPN's proposal selection and losses into the current timer (``times[0]``)."""
    for name, key in (("find_top_proposals", "rpn.proposals"), ("rpn_losses", "rpn.losses")):
        fn = getattr(rpn_module, name)
        if getattr(fn, "_bench_wrapped", False):
            continue

        @functools.wraps(fn)
        def timed(*a, _fn=fn, _key=key, **k):
            t = time.perf_counter()
            out = _fn(*a, **k)
            if times:
                times[0][_key] += time.perf_counter() - t
            return out

        timed._bench_wrapped = True
        setattr(rpn_module, name, timed)


class Variant:
    def __init__(self, config: str, overrides: List[str], weights: str, out: str):
        cfg = load_config(config, overrides + ["train.eval_period=0", f"train.output_dir={out}",
                                               "solver.max_iter=100000", "train.checkpoint_period=100000"])
        self.trainer = Trainer(cfg, progress=False)
        self.model = self.trainer.model
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=False)
            self.model.load_state_dict(state.get("model", state))
            for group in self.trainer.optimizer.param_groups:
                group["lr"] = 1e-6
        self.timer = StageTimer(self.model)
        self.batches = iter(self.trainer.data)
        self.clip = cfg.solver.clip_grad_norm
        self.steps: List[Dict[str, float]] = []

    def step(self, current: List[Dict[str, float]], keep: bool) -> None:
        self.timer.times = collections.defaultdict(float)
        self.timer._start = {}
        current[:] = [self.timer.times]
        t0 = time.perf_counter()
        batch = next(self.batches)
        t1 = time.perf_counter()
        with self.trainer.autocast():  # solver.amp, as the training loop does
            losses = self.model([s.image for s in batch], [s.instances for s in batch])
        t2 = time.perf_counter()
        sum(losses.values()).backward()
        t3 = time.perf_counter()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.trainer.optimizer.step()
        self.trainer.optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if keep:
            row = dict(self.timer.times)
            row.update(data=t1 - t0, forward=t2 - t1, backward=t3 - t2, optimizer=t4 - t3, step=t4 - t0)
            self.steps.append(row)

    def medians(self) -> Dict[str, float]:
        keys = sorted({k for r in self.steps for k in r})
        return {k: statistics.median(r.get(k, 0.0) for r in self.steps) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--variant", action="append", default=None, help='space-separated key=value overrides ("" = as is)')
    ap.add_argument("--weights", default="", help="trained weights to load (a checkpoint or a zoo .pth)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    variants = args.variant if args.variant is not None else [""]
    current: List[Dict[str, float]] = []
    _wrap_rpn_functions(current)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [Variant(args.config, v.split(), args.weights, f"{tmp}/v{i}") for i, v in enumerate(variants)]
        for i in range(args.warmup + args.steps):
            for run in runs:
                run.step(current, keep=i >= args.warmup)
        results = [run.medians() for run in runs]
        for run in runs:
            run.trainer.close()
    order = ["step", "data", "forward", "backbone", "fpn", "rpn", "rpn.proposals", "rpn.losses", "roi_heads",
             "mask_head", "backward", "optimizer"]
    names = [v or "(as configured)" for v in variants]
    print(f"median seconds over {args.steps} steps ({torch.get_num_threads()} torch threads)"
          + (f", weights {args.weights}" if args.weights else ", initial weights"))
    print("| stage | " + " | ".join(names) + (" | ratio |" if len(runs) > 1 else " |"))
    print("|---|" + "---:|" * (len(runs) + (len(runs) > 1)))
    for key in order:
        vals = [r.get(key, 0.0) for r in results]
        ratio = f" {vals[0] / vals[-1]:.2f}x |" if len(runs) > 1 and vals[-1] > 0 else (" |" if len(runs) > 1 else "")
        print(f"| {key} | " + " | ".join(f"{v:.3f}" for v in vals) + " |" + ratio)


if __name__ == "__main__":
    main()
