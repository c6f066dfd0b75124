"""Op counts and Python-side overhead of one training step, on CPU: a proxy for GPU kernel launches.

On a GPU a training step of this model is bounded as much by the number of small kernels it
launches (and the Python that launches them) as by its FLOPs. On the CPU, torch.profiler sees the
same aten ops the GPU would run, so counting them here tells where the launches come from without
a GPU. Per stage (hooks on the model's modules and its loss/target functions) the script prints:

- ``ops``: aten ops that do work (leaves of the profiler's call tree, without pure view/metadata
  ops such as ``view``, ``select``, ``expand``, ``empty``): about one GPU kernel each;
- ``all``: every aten op the dispatcher saw (views included);
- ``self ms``: the CPU time of those ops (compute on a CPU, launch + dispatch cost on a GPU).

Then the top ops by count, the Python function calls per step (cProfile), and the step time
without the profiler (median of ``--steps``; wall and process CPU time). The profiler's own
overhead inflates ``self ms``: compare it between versions, not with the step time.

    python -m bench.step_profile                      # GN recipe, batch 2 of 128x128 crops
    python -m bench.step_profile --variant bn         # BN variant (no norm in FPN/mask head)
    python -m bench.step_profile --batch 4 --size 256 256 --json out.json
    python -m bench.step_profile --dump losses.pt     # losses + gradients, to compare versions

The model is ``configs/dsb2018_r50_gn.yaml``'s (R50-FPN, 2x up-scaling, anchors 8-128, RPN
2000/1000 proposals, 512 RoIs per image), fed synthetic cells (``maskrcnn.data.synthetic``), so
the code paths are the head to head's (batch 8 of 512x512 inside the model) at a CPU-sized batch.
Every step starts from the same seed, so two versions of the code can be compared op for op and
loss for loss (``--dump``).
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time
from collections import Counter, defaultdict
from typing import Dict, List

import torch

# Ops that only make views, read metadata or allocate: no GPU kernel of their own.
VIEW_OPS = {
    "aten::view", "aten::_unsafe_view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided",
    "aten::slice", "aten::select", "aten::expand", "aten::expand_as", "aten::permute", "aten::transpose",
    "aten::t", "aten::unsqueeze", "aten::squeeze", "aten::flatten", "aten::unflatten", "aten::detach",
    "aten::detach_", "aten::alias", "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg",
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::split", "aten::split_with_sizes",
    "aten::unbind", "aten::chunk", "aten::narrow", "aten::numpy_T", "aten::view_as", "aten::unfold",
    "aten::result_type", "aten::is_nonzero", "aten::set_", "aten::resize_", "aten::contiguous",
    "aten::to", "aten::_to_copy", "aten::type_as", "aten::broadcast_tensors", "aten::movedim",
    "aten::swapaxes", "aten::pin_memory", "aten::is_pinned", "aten::_has_compatible_shallow_copy_type",
    "aten::retain_grad", "aten::requires_grad_", "aten::_local_scalar_dense", "aten::item",
    "aten::align_tensors", "aten::_nested_tensor_from_mask_left_aligned", "aten::empty_permuted",
    "aten::sym_size", "aten::sym_stride", "aten::sym_numel", "aten::size", "aten::stride", "aten::dim",
    "aten::as_strided_", "aten::_nnpack_available", "aten::scalar_tensor", "aten::is_same_size",
}
# aten::to / _to_copy are listed because their work shows up as a child aten::copy_ (counted).
# aten::item / _local_scalar_dense are device -> host syncs: counted apart as "syncs".
SYNC_OPS = {"aten::_local_scalar_dense"}

STAGE_PREFIX = "stage:"


def _stage_hooks(model) -> List:
    """record_function ranges around the model's stages (module hooks) and loss/target functions."""
    import maskrcnn.model.mask_rcnn as mrc
    import maskrcnn.model.roi_heads as rh
    import maskrcnn.model.rpn as rpn

    handles = []
    modules = {
        "backbone": model.backbone, "fpn": model.fpn, "rpn.head": model.rpn.head,
        "rpn.anchors": model.rpn.anchor_generator, "roi.box_pool": model.roi_heads.box_pooler,
        "roi.box_head": model.roi_heads.box_head, "roi.box_predictor": model.roi_heads.box_predictor,
        "roi.mask_pool": model.roi_heads.mask_pooler, "roi.mask_head": model.roi_heads.mask_head,
    }
    for name, mod in modules.items():
        ctx: Dict[str, object] = {}

        def pre(m, inp, _n=name, _c=ctx):
            _c["r"] = torch.profiler.record_function(STAGE_PREFIX + _n)
            _c["r"].__enter__()

        def post(m, inp, out, _c=ctx):
            _c.pop("r").__exit__(None, None, None)

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))

    # Functions: wrap the module-level names the model calls (restored by the returned undo list).
    targets = [
        (mrc.MaskRCNN, "preprocess", "preprocess"), (mrc.MaskRCNN, "_check_targets", "check_targets"),
        (rpn, "find_top_proposals", "rpn.proposals"), (rpn, "rpn_losses", "rpn.losses"),
        (rh.RoIHeads, "sample_proposals", "roi.sample"), (rh, "box_losses", "roi.box_losses"),
        (rh, "mask_targets", "roi.mask_targets"), (rh, "mask_loss", "roi.mask_loss"),
        (rh, "build_mask_targets", "roi.mask_targets"),
    ]
    undo = []
    for owner, attr, label in targets:
        fn = getattr(owner, attr, None)
        if fn is None:
            continue

        def wrapped(*a, _fn=fn, _label=label, **k):
            with torch.profiler.record_function(STAGE_PREFIX + _label):
                return _fn(*a, **k)

        setattr(owner, attr, wrapped)
        undo.append((owner, attr, fn))
    return handles, undo


def _remove(handles, undo):
    for h in handles:
        h.remove()
    for owner, attr, fn in undo:
        setattr(owner, attr, fn)


def build(args):
    from maskrcnn.config import load_config
    from maskrcnn.data.synthetic import SyntheticCells
    from maskrcnn.model import build_model

    overrides = list(args.set)
    if args.variant == "bn":
        overrides += ["model.backbone.norm=bn", "model.fpn.norm=", "model.mask_head.norm="]
    cfg = load_config(args.config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if args.channels_last:
        model.channels_last = True
        model.to(memory_format=torch.channels_last)
    ds = SyntheticCells(num_images=args.batch, height=args.size[0], width=args.size[1],
                        cells_per_image=(args.cells // 2, args.cells), seed=3, class_agnostic=True)
    samples = [ds.load(i) for i in range(args.batch)]
    images = [s.image for s in samples]
    targets = [s.instances for s in samples]
    return cfg, model, images, targets


def make_step(model, images, targets, amp: str):
    params = [p for p in model.parameters() if p.requires_grad]
    # lr 0: weights never change, so every step does the same work (and the same ops).
    opt = torch.optim.SGD(params, lr=0.0, momentum=0.9)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def step(seed: int = 0):
        torch.manual_seed(seed)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            losses = model(images, targets)
        total = sum(v.float() for v in losses.values())
        total.backward()
        opt.step()
        return losses

    return step, opt


def _is_work(e, memo) -> bool:
    """A leaf among work ops: not a view/metadata op, and no aten op below it does work."""
    key = id(e)
    if key not in memo:
        below = any(_has_work(c, memo) for c in e.cpu_children)
        memo[key] = (e.name.startswith("aten::") and e.name not in VIEW_OPS and not below, below)
    return memo[key][0]


def _has_work(e, memo) -> bool:
    """True when ``e`` or an op below it is a work op."""
    _is_work(e, memo)
    return memo[id(e)][0] or memo[id(e)][1]


def _classify(events):
    """Per stage (innermost ``stage:``/``phase:`` range above an op): work ops, all aten ops, syncs, self time."""
    per_stage = defaultdict(lambda: {"ops": 0, "all": 0, "self_us": 0.0, "syncs": 0})
    top = Counter()
    top_us = Counter()
    stage_top = defaultdict(Counter)
    memo: Dict[int, tuple] = {}
    for e in events:
        name = e.name
        if not name.startswith("aten::"):
            continue
        stage, p = "other", e.cpu_parent
        while p is not None:
            if p.name.startswith(STAGE_PREFIX):
                stage = p.name[len(STAGE_PREFIX):]
                break
            if p.name.startswith("phase:"):
                stage = p.name[len("phase:"):]
                break
            p = p.cpu_parent
        s = per_stage[stage]
        s["all"] += 1
        s["self_us"] += e.self_cpu_time_total
        if name in SYNC_OPS:
            s["syncs"] += 1
        if _is_work(e, memo):
            s["ops"] += 1
            top[name] += 1
            top_us[name] += e.self_cpu_time_total
            stage_top[stage][name] += 1
    return per_stage, top, top_us, stage_top


STAGE_ORDER = [
    "check_targets", "preprocess", "backbone", "fpn", "rpn.head", "rpn.anchors", "rpn.proposals", "rpn.losses",
    "roi.sample", "roi.box_pool", "roi.box_head", "roi.box_predictor", "roi.box_losses", "roi.mask_targets",
    "roi.mask_pool", "roi.mask_head", "roi.mask_loss", "forward", "loss_sum", "backward", "optimizer", "other",
]


def profile_step(model, step, steps: int):
    handles, undo = _stage_hooks(model)
    try:
        step()  # warm-up (anchor cache, allocator)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for i in range(steps):
                _profiled_step(model, step)
    finally:
        _remove(handles, undo)
    per_stage, top, top_us, stage_top = _classify(prof.events())
    for s in per_stage.values():
        for k in ("ops", "all", "syncs"):
            s[k] /= steps
        s["self_us"] /= steps
    for k in list(top):
        top[k] /= steps
        top_us[k] /= steps
    for c in stage_top.values():
        for k in list(c):
            c[k] /= steps
    return per_stage, top, top_us, stage_top


def _profiled_step(model, step):
    # The whole step under one range per phase: forward (model call), loss sum, backward, optimiser.
    # ``step`` is re-implemented here so that each phase gets its range.
    opt, images, targets, dtype = step.opt, step.images, step.targets, step.dtype
    torch.manual_seed(0)
    with torch.profiler.record_function("phase:optimizer"):
        opt.zero_grad(set_to_none=True)
    with torch.profiler.record_function("phase:forward"):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            losses = model(images, targets)
    with torch.profiler.record_function("phase:loss_sum"):
        total = sum(v.float() for v in losses.values())
    with torch.profiler.record_function("phase:backward"):
        total.backward()
    with torch.profiler.record_function("phase:optimizer"):
        opt.step()


def python_calls(step) -> tuple:
    pr = cProfile.Profile()
    pr.enable()
    step()
    pr.disable()
    st = pstats.Stats(pr)
    calls = sum(v[1] for v in st.stats.values())  # primitive + recursive calls
    py = sum(v[1] for k, v in st.stats.items() if not k[0].startswith("~") and k[0] != "<built-in>")
    return calls, py


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dsb2018_r50_gn.yaml")
    p.add_argument("--variant", choices=("gn", "bn"), default="gn", help="gn: the recipe; bn: BN backbone, no norm in FPN/mask head")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"),
                   help="crop size before the recipe's 2x up-scaling (the head to head: 256 256)")
    p.add_argument("--cells", type=int, default=40, help="up to this many cells per image (at least half)")
    p.add_argument("--amp", choices=("", "bf16", "fp16"), default="", help="autocast dtype (CPU)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--steps", type=int, default=3, help="timed steps (median) and profiled steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile-steps", type=int, default=1, help="steps under the profiler (op counts are per step)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--stage-top", type=int, default=0, help="also list this many top ops of each stage")
    p.add_argument("--json", default="", help="write the figures here")
    p.add_argument("--dump", default="", help="save losses and gradients of one step here (torch.save)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg, model, images, targets = build(args)
    model.train()
    step, opt = make_step(model, images, targets, args.amp)
    step.opt, step.images, step.targets = opt, images, targets
    step.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    n_gt = sum(len(t) for t in targets)
    print(f"# bench/step_profile.py {args.config} variant={args.variant} batch {args.batch} of "
          f"{args.size[0]}x{args.size[1]} (x{cfg.model.input.scale:g} inside the model), {n_gt} GT cells, "
          f"amp={args.amp or 'off'}, channels_last={args.channels_last}, threads={args.threads}, torch {torch.__version__}")

    if args.dump:
        losses = step(0)
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"losses": {k: v.detach() for k, v in losses.items()}, "grads": grads}, args.dump)
        print(f"losses and {len(grads)} gradients -> {args.dump}: "
              + " ".join(f"{k}={v.item():.6f}" for k, v in losses.items()))

    # Step time without the profiler: wall and process CPU time (steadier on a shared machine).
    step(0)
    walls, cpus = [], []
    for i in range(args.steps):
        t, c = time.perf_counter(), time.process_time()
        step(0)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    wall, cpu = statistics.median(walls), statistics.median(cpus)

    per_stage, top, top_us, stage_top = profile_step(model, step, args.profile_steps)
    calls, py_calls = python_calls(lambda: step(0))

    tot = {k: sum(s[k] for s in per_stage.values()) for k in ("ops", "all", "self_us", "syncs")}
    print(f"{'stage':20s} {'ops':>8s} {'all':>8s} {'syncs':>6s} {'self ms':>9s}")
    for name in STAGE_ORDER + sorted(set(per_stage) - set(STAGE_ORDER)):
        if name in per_stage:
            s = per_stage[name]
            print(f"{name:20s} {s['ops']:8.0f} {s['all']:8.0f} {s['syncs']:6.0f} {s['self_us'] / 1e3:9.1f}")
    print(f"{'total':20s} {tot['ops']:8.0f} {tot['all']:8.0f} {tot['syncs']:6.0f} {tot['self_us'] / 1e3:9.1f}")
    print(f"\ntop {args.top} work ops by count per step (count, self ms):")
    for name, n in top.most_common(args.top):
        print(f"  {name:40s} {n:7.0f} {top_us[name] / 1e3:9.1f}")
    if args.stage_top:
        for name in STAGE_ORDER + sorted(set(stage_top) - set(STAGE_ORDER)):
            if name in stage_top:
                items = ", ".join(f"{k[6:]} {v:.0f}" for k, v in stage_top[name].most_common(args.stage_top))
                print(f"  [{name}] {items}")
    fwd = sum(s["ops"] for k, s in per_stage.items() if k not in ("backward", "optimizer"))
    print(f"\nwork ops per step: forward {fwd:.0f}, backward {per_stage['backward']['ops']:.0f}, "
          f"optimizer {per_stage['optimizer']['ops']:.0f} (SGD, per-parameter loop on CPU)")
    print(f"step (no profiler, median of {args.steps}): wall {wall:.3f} s, CPU {cpu:.3f} s; "
          f"Python calls per step {calls} ({py_calls} to Python functions, cProfile)")
    if args.json:
        from maskrcnn.fileio import atomic_write_text

        out = {
            "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
            "torch": torch.__version__, "gt_cells": n_gt,
            "stages": {k: dict(v) for k, v in per_stage.items()}, "total": tot,
            "stage_top": {k: dict(v.most_common(20)) for k, v in stage_top.items()},
            "top_ops": {k: {"count": v, "self_us": top_us[k]} for k, v in top.most_common(100)},
            "step_wall_s": wall, "step_cpu_s": cpu, "python_calls": calls, "python_function_calls": py_calls,
        }
        atomic_write_text(args.json, json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
