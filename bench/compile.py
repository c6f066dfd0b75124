"""Eager vs regional ``torch.compile`` (``model.compile: regional``) side by side, in one run, on the CPU.

The model is the DSB CPU recipe's (``configs/dsb2018_cpu.yaml``: slim ResNet-18-GN FPN, 2x
up-scaling, so a 520x704 image is 1040x1408 inside the model), fed one synthetic image of
``--size`` with cells. Two copies with the same weights: one eager, one with its regions compiled
(backbone, FPN, RPN head, box head and predictor, mask head; inductor). For a training step
(forward, backward, SGD at lr 0 so the work stays the same) and for inference (eval, no_grad):

- ``first``: the first call, compile included (the compiled copy compiles its regions there, and
  again at the second call when a region sees a new shape: the mask head's RoI count changes);
- ``steady``: median of ``--steps`` calls after ``--warmup`` calls, the two copies alternating so
  that both see the same machine load;
- ``compile_s``: the warm-up calls' time above ``steady`` (what compiling cost);
- ``break_even``: calls after which the compile has paid for itself (none when it never does).

    OMP_NUM_THREADS=1 python -m bench.compile [--size 520 704] [--steps 3] [--warmup 2] [--json out.json]

Prints a table and the load average before/after (the machine is shared: read ratios, not times).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Inductor's C++ compiles in this process's children (not a worker pool), so that their CPU time
# is counted in the compile's CPU seconds.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402

from maskrcnn.config import load_config  # noqa: E402
from maskrcnn.data.synthetic import SyntheticCells  # noqa: E402
from maskrcnn.fileio import atomic_json  # noqa: E402
from maskrcnn.model import build_model  # noqa: E402
from maskrcnn.model.compile import compile_model  # noqa: E402


def build_pair(config: str, overrides, backend: str):
    cfg = load_config(config, list(overrides))
    torch.manual_seed(0)
    eager = build_model(cfg.model, load_weights=False, verbose=False)
    compiled = build_model(cfg.model, load_weights=False, verbose=False)
    compiled.load_state_dict(eager.state_dict())
    return eager, compile_model(compiled, "regional", backend=backend)


def train_step(model):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)

    def step(image, target, seed):
        model.train()
        torch.manual_seed(seed)  # the same proposals and samples for both copies at one seed
        opt.zero_grad(set_to_none=True)
        losses = model([image], [target])
        sum(losses.values()).backward()
        opt.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    return step


def infer(model):
    def run(image, target, seed):
        model.eval()
        with torch.no_grad():
            out = model([image])[0]
        return {"detections": len(out), "score_sum": float(out.scores.sum())}

    return run


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the compiler runs inductor starts)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn, *args):
    t0, c0 = time.perf_counter(), cpu_seconds()
    out = fn(*args)
    return (time.perf_counter() - t0, cpu_seconds() - c0), out


def _summary(warm, steady, warmup: int) -> dict:
    """One clock's figures: warm and steady are lists of seconds."""
    med = statistics.median(steady)
    return {"first_s": warm[0], "steady_s": med, "warmup_s": warm, "steady_all_s": steady,
            "compile_s": sum(warm) - warmup * med, "total_s": sum(warm) + sum(steady)}


def side_by_side(name, eager_fn, compiled_fn, image, target, warmup: int, steps: int) -> dict:
    calls = {"eager": {"warm": [], "steady": []}, "compiled": {"warm": [], "steady": []}}
    outs = {}
    for i in range(warmup):
        for key, fn in (("eager", eager_fn), ("compiled", compiled_fn)):
            t, outs[key] = _timed(fn, image, target, i)
            calls[key]["warm"].append(t)
            print(f"  {name} {key} warm-up call {i + 1}: {t[0]:.2f} s wall, {t[1]:.2f} s CPU", flush=True)
    diffs = []
    for i in range(steps):
        # alternate the order too, so neither copy always runs second
        order = (("eager", eager_fn), ("compiled", compiled_fn)) if i % 2 == 0 else \
            (("compiled", compiled_fn), ("eager", eager_fn))
        for key, fn in order:
            t, outs[key] = _timed(fn, image, target, warmup + i)
            calls[key]["steady"].append(t)
            print(f"  {name} {key} call: {t[0]:.2f} s wall, {t[1]:.2f} s CPU", flush=True)
        diffs.append(max(abs(outs["eager"][k] - outs["compiled"][k]) for k in outs["eager"]))
    row = {"max_output_diff": max(diffs), "last_outputs": outs}
    for clock, j in (("wall", 0), ("cpu", 1)):
        e, c = ({k: [t[j] for t in calls[key][k]] for k in ("warm", "steady")} for key in ("eager", "compiled"))
        e, c = _summary(e["warm"], e["steady"], warmup), _summary(c["warm"], c["steady"], warmup)
        gain = e["steady_s"] - c["steady_s"]
        extra = c["compile_s"] - e["compile_s"]
        row[clock] = {"eager": e, "compiled": c, "speedup_steady": e["steady_s"] / c["steady_s"],
                      "speedup_incl_compile": e["total_s"] / c["total_s"],
                      "break_even_calls": (extra / gain) if gain > 0 else None}
    return row


def _table(results) -> None:
    print(f"\n{'':14}{'eager first':>12}{'compiled first':>15}{'eager steady':>13}{'compiled steady':>16}"
          f"{'steady x':>9}{'incl. compile x':>16}{'break-even':>12}")
    for part, r in results.items():
        for clock in ("wall", "cpu"):
            x = r[clock]
            be = "never" if x["break_even_calls"] is None else f"{x['break_even_calls']:.0f} calls"
            print(f"{part + ' ' + clock:14}{x['eager']['first_s']:>11.2f}s{x['compiled']['first_s']:>14.2f}s"
                  f"{x['eager']['steady_s']:>12.2f}s{x['compiled']['steady_s']:>15.2f}s"
                  f"{x['speedup_steady']:>8.2f}x{x['speedup_incl_compile']:>15.2f}x{be:>12}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/dsb2018_cpu.yaml")
    ap.add_argument("--size", type=int, nargs=2, default=[520, 704], metavar=("H", "W"))
    ap.add_argument("--cells", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--parts", nargs="+", choices=("train", "infer"), default=["train", "infer"])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (eager: dynamo only, a dry run)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    cpu0 = cpu_seconds()
    eager, compiled = build_pair(args.config, args.set, args.backend)
    sample = SyntheticCells(num_images=1, height=args.size[0], width=args.size[1],
                            cells_per_image=(args.cells // 2, args.cells), seed=3, class_agnostic=True).load(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, image {args.size[0]}x{args.size[1]} "
          f"({len(sample.instances)} cells), backend {args.backend}, load average {load_before[0]:.2f}", flush=True)
    out = {"config": args.config, "size": args.size, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "backend": args.backend, "load_before": load_before, "results": {}}
    for part in args.parts:
        make = train_step if part == "train" else infer
        out["results"][part] = side_by_side(part, make(eager), make(compiled), sample.image, sample.instances,
                                            args.warmup, args.steps)
        out.update(load_after=os.getloadavg(), cpu_s=cpu_seconds() - cpu0,
                   graph_breaks_in_regions=sum(torch._dynamo.utils.counters["graph_break"].values()))
        if args.json:  # after each part: a long run that is stopped keeps what it measured
            atomic_json(out, args.json)
    _table(out["results"])
    print(f"graph breaks in the compiled regions: {out['graph_breaks_in_regions']}; load average "
          f"{load_before[0]:.2f} -> {out['load_after'][0]:.2f}; CPU time {out['cpu_s']:.0f} s")
    return out


if __name__ == "__main__":
    main()
