"""Model benchmark: training and inference speed and peak memory, ours vs our pure-torch twins vs
torchvision's Mask R-CNN, side by side.

    python -m bench.model                         # CPU: R50-FPN, batch 1, 520x704
    python -m bench.model --device cuda --amp bf16 --channels-last
    python -m bench.model --tv-python /work/tvenv/bin/python   # torchvision from another venv

Every configuration runs in its own subprocess (a fresh peak-memory counter; the twins via
``MASKRCNN_FORCE_FALLBACK=1``). Both models see the same 520x704 image (torchvision with
``min_size=520, max_size=704``), anchors 8..128 at P2..P6, RPN top-k 2000/2000 (train and test),
512 RoIs per image, a 1000-detection cap, score threshold 0 and NMS 0.5, so inference produces
and pastes up to 1000 masks in both. Setup ``finetune`` (default): FrozenBN, stem + res2 frozen in
both (torchvision's BatchNorm layers are swapped for its FrozenBatchNorm2d); ``scratch``:
torchvision as ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` builds it (BN,
everything trained) against ours with ``norm=bn, freeze_at=0``.

Weights are random and fixed (SGD with lr 0: the step is timed, the work stays the same).
Also: ``paste`` measures pasting 1,000 soft masks on a 520x704 image (time and peak memory).
Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and the process' peak RSS on CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:  # the torchvision venv lacks pyyaml; the bench builds its configs in code and needs none
    import yaml  # noqa: F401
except ImportError:
    sys.modules["yaml"] = types.ModuleType("yaml")

import torch  # noqa: E402

ANCHOR_SIZES = (8, 16, 32, 64, 128)


def make_scene(height: int, width: int, cells: int, seed: int = 0):
    """A grey image with ``cells`` bright ellipses and their masks as crops (and dense, for torchvision)."""
    from maskrcnn.structures import Instances, MaskList

    g = torch.Generator().manual_seed(seed)
    cy = torch.rand(cells, generator=g) * (height - 20) + 10
    cx = torch.rand(cells, generator=g) * (width - 20) + 10
    ry = torch.rand(cells, generator=g) * 6 + 5
    rx = torch.rand(cells, generator=g) * 6 + 5
    S = 2 * 12 + 3  # crop size covering any ellipse (+ a zero border)
    x0 = (cx - S // 2).floor().long()
    y0 = (cy - S // 2).floor().long()
    ys = y0[:, None, None] + torch.arange(S)[None, :, None] + 0.5
    xs = x0[:, None, None] + torch.arange(S)[None, None, :] + 0.5
    inside = ((ys - cy[:, None, None]) / ry[:, None, None]) ** 2 + ((xs - cx[:, None, None]) / rx[:, None, None]) ** 2 < 1
    inside &= (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    masks = MaskList(inside, torch.stack([x0, y0], 1), (height, width))
    dense = masks.to_dense()
    image = 0.2 + 0.6 * dense.any(0).float() + 0.05 * torch.rand(height, width, generator=g)
    image = image.clamp(0, 1)[None].repeat(3, 1, 1)
    inst = Instances((height, width), masks.tight_boxes(), torch.zeros(cells, dtype=torch.long), None, masks)
    return image, inst, dense


def build_ours(args):
    import warnings
    from dataclasses import replace

    from maskrcnn.config import BackboneConfig, ModelConfig
    from maskrcnn.model import build_model

    d = ModelConfig()
    scratch = args.setup == "scratch"
    cfg = replace(
        d,
        backbone=BackboneConfig(name=args.backbone, norm="bn" if scratch else "frozen_bn", freeze_at=0 if scratch else 2),
        rpn=replace(d.rpn, pre_nms_topk_train=2000, post_nms_topk_train=2000, pre_nms_topk_test=2000,
                    post_nms_topk_test=2000),
        roi_heads=replace(d.roi_heads, num_classes=1, score_thresh=0.0, nms_thresh=0.5, detections_per_image=1000,
                          batch_size_per_image=512),
        input=replace(d.input, in_channels=3),
        channels_last=args.channels_last,
    )
    with warnings.catch_warnings():  # random frozen-BN weights are deliberate here
        warnings.simplefilter("ignore", RuntimeWarning)
        return build_model(cfg)


def build_torchvision(args):
    import torchvision
    from torch import nn
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=2, min_size=args.height, max_size=args.width,
        rpn_anchor_generator=AnchorGenerator(tuple((s,) for s in ANCHOR_SIZES), ((0.5, 1.0, 2.0),) * 5),
        rpn_pre_nms_top_n_train=2000, rpn_pre_nms_top_n_test=2000, rpn_post_nms_top_n_train=2000,
        rpn_post_nms_top_n_test=2000, box_score_thresh=0.0, box_nms_thresh=0.5, box_detections_per_img=1000,
        box_batch_size_per_image=512,
    )
    if args.setup == "finetune":
        body = model.backbone.body

        def freeze_bn(module):
            for name, child in module.named_children():
                if isinstance(child, nn.BatchNorm2d):
                    f = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                    f.weight.copy_(child.weight.detach())
                    f.bias.copy_(child.bias.detach())
                    f.running_mean.copy_(child.running_mean)
                    f.running_var.copy_(child.running_var)
                    setattr(module, name, f)
                else:
                    freeze_bn(child)

        freeze_bn(body)
        for name, p in body.named_parameters():
            if name.startswith(("conv1", "layer1")):
                p.requires_grad_(False)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def run_worker(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    image, inst, dense = make_scene(args.height, args.width, args.cells)
    image = image.to(device)
    tv = args.worker.startswith("tv_")
    out = {"worker": args.worker, "device": str(device)}
    if args.worker == "paste":
        from maskrcnn.model.mask_head import paste_masks

        n = args.paste_count
        g = torch.Generator().manual_seed(1)
        boxes = torch.rand(n, 2, generator=g) * torch.tensor([args.width - 40.0, args.height - 40.0])
        boxes = torch.cat([boxes, boxes + 8 + torch.rand(n, 2, generator=g) * 28], 1).to(device)
        probs = torch.rand(n, 28, 28, generator=g).to(device)
        base = _rss_mb()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.warmup + args.iters):
            _sync(device)
            t = time.perf_counter()
            ml = paste_masks(probs, boxes, (args.height, args.width))
            _sync(device)
            times.append(time.perf_counter() - t)
        out.update(times=times[args.warmup:], peak_mb=_peak_mb(device), base_mb=base,
                   crops=list(ml.crops.shape), dense_mb=n * args.height * args.width * 4 / 2 ** 20)
        return out
    model = (build_torchvision(args) if tv else build_ours(args)).to(device)
    if not tv:
        from maskrcnn.ops import get_ext

        out["compiled_ops"] = get_ext() is not None
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    train = args.worker.endswith("train")
    if train:
        model.train()
        if tv:
            target = {"boxes": inst.boxes.to(device), "labels": torch.ones(len(inst), dtype=torch.long, device=device),
                      "masks": dense.to(torch.uint8).to(device)}
        else:
            target = inst.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        # lr 0: random weights never change, so every iteration does the same work (a random
        # frozen-BN network trained for real diverges within a few steps and then has no proposals).
        opt = torch.optim.SGD(params, lr=0.0, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    else:
        model.eval()
    base = _rss_mb()
    times, cpu_times, dets = [], [], 0
    for it in range(args.warmup + args.iters):
        if it == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            if train:
                losses = model([image], [target])
                loss = sum(losses.values())
            else:
                with torch.no_grad():
                    res = model([image])
        if train:
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        _sync(device)
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
        if not train:
            dets = int(len(res[0]["boxes"]) if tv else len(res[0]))
    out.update(times=times[args.warmup:], cpu_times=cpu_times[args.warmup:], peak_mb=_peak_mb(device), base_mb=base,
               detections=dets)
    return out


def _launch(args, worker: str, python: str, env_extra: dict) -> dict:
    cmd = [python, os.path.abspath(__file__), "--worker", worker] + [
        a for a in sys.argv[1:] if a not in ("--worker",)
    ]
    # drop options that only the parent understands
    clean, skip = [], False
    for a in cmd:
        if skip:
            skip = False
            continue
        if a == "--tv-python":
            skip = True
            continue
        clean.append(a)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env_extra)
    t = time.time()
    proc = subprocess.run(clean, capture_output=True, text=True, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"worker": worker, "error": " | ".join(tail)}
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    res = json.loads(line)
    res["wall_total_s"] = time.time() - t
    return res


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--height", type=int, default=520)
    p.add_argument("--width", type=int, default=704)
    p.add_argument("--cells", type=int, default=300, help="ground-truth cells in the training image")
    p.add_argument("--paste-count", type=int, default=1000)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--setup", choices=("finetune", "scratch"), default="finetune")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast (default: none)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--threads", type=int, default=0, help="CPU threads per run (0: torch default)")
    p.add_argument("--only", default="", help="comma list of runs: ours,twins,tv,paste (default: all available)")
    p.add_argument("--tv-python", default="", help="python with torchvision (else this one, if it has it)")
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.warmup is None:
        args.warmup = 5 if cuda else 1
    if args.iters is None:
        args.iters = 20 if cuda else 3
    if args.worker:
        print(json.dumps(run_worker(args)))
        return

    only = set(filter(None, args.only.split(","))) or {"ours", "twins", "tv", "paste"}
    tv_python = args.tv_python or sys.executable
    if "tv" in only and not args.tv_python:
        has_tv = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True).returncode == 0
        if not has_tv:
            only.discard("tv")
            print("torchvision not importable here: pass --tv-python to compare with it")
    if "tv" in only and args.backbone != "resnet50":
        only.discard("tv")
        print(f"torchvision's maskrcnn_resnet50_fpn has a ResNet-50: not compared with {args.backbone}")
    if "twins" in only and not cuda:
        probe = subprocess.run([sys.executable, "-c", "import torch; from maskrcnn.ops import get_ext; print(get_ext() is not None)"],
                               capture_output=True, text=True, cwd=ROOT)
        if probe.stdout.strip() != "True":
            only.discard("twins")
            print("compiled ops not built: 'ours' runs the pure-torch twins (no separate twins run)")
    runs = []
    for mode in ("train", "infer"):
        if "ours" in only:
            runs.append((f"ours {mode}", f"ours_{mode}", sys.executable, {}))
        if "twins" in only and not cuda:
            runs.append((f"ours-twins {mode}", f"ours_{mode}", sys.executable, {"MASKRCNN_FORCE_FALLBACK": "1"}))
        if "tv" in only:
            # our compiled ops are built for this interpreter's torch only; another venv runs the twins
            runs.append((f"torchvision {mode}", f"tv_{mode}", tv_python, {"MASKRCNN_FORCE_FALLBACK": "1"} if args.tv_python else {}))
    if "paste" in only:
        runs.append(("paste 1000 masks", "paste", sys.executable, {}))
    print(f"# bench/model.py  device={args.device} {args.backbone}-FPN batch 1 {args.height}x{args.width} "
          f"setup={args.setup} amp={args.amp} channels_last={args.channels_last} "
          f"warmup={args.warmup} iters={args.iters} threads={args.threads or torch.get_num_threads()}")
    results = {}
    for label, worker, python, env in runs:
        r = _launch(args, worker, python, env)
        results[label] = r
        if "error" in r:
            print(f"{label:24s} FAILED: {r['error']}")
            continue
        med = _median(r["times"])
        extra = ""
        if "detections" in r:
            extra += f"  detections {r['detections']}"
        if "compiled_ops" in r:
            extra += f"  compiled_ops={r['compiled_ops']}"
        if worker == "paste":
            extra += f"  crops {r['crops']} (dense masks would be {r['dense_mb']:.0f} MB)"
        cpu = f"  cpu {_median(r['cpu_times']):.3f} s" if "cpu_times" in r and not cuda else ""
        rate = "it/s" if worker.endswith("train") else "img/s"
        print(f"{label:24s} {med:8.3f} s/img  {1 / med:7.2f} {rate}{cpu}  peak {r['peak_mb']:8.0f} MB "
              f"(base {r['base_mb']:.0f} MB){extra}")
    for mode in ("train", "infer"):
        ours = results.get(f"ours {mode}")
        for other in ("ours-twins", "torchvision"):
            o = results.get(f"{other} {mode}")
            if ours and o and "error" not in ours and "error" not in o:
                ratio = _median(o["times"]) / _median(ours["times"])
                mem = o["peak_mb"] / max(ours["peak_mb"], 1e-9)
                cpu = ""
                if not cuda:  # on a shared machine the process' CPU time is the steadier measure
                    cpu = f" (by CPU time {_median(o['cpu_times']) / _median(ours['cpu_times']):.2f}x)"
                print(f"ratio {mode}: ours is {ratio:.2f}x the speed of {other}{cpu}; "
                      f"{other} peak memory / ours = {mem:.2f}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
