"""Head to head on real nuclei: our Mask R-CNN vs torchvision's maskrcnn_resnet50_fpn, both from scratch.

Both models go through the same ``Trainer`` (same data and augmentation stream, same batch, same
optimiser, schedule, mixed precision, iterations) and the same validation (our post-processing
and the Kaggle metric on the held-back DSB2018 fold). torchvision is a comparison anchor only:
it is imported here and nowhere in the package.

torchvision at "the same settings": weights=None, weights_backbone=None, its own anchors and
heads; detection cap 1000, RPN test post-NMS top-k 1500 and score threshold 0.05 as ours; its
resize is replaced by the same fixed up-scaling our recipe uses (``model.input.scale``), and it
normalises with the same mean/std.

Phases, each writing ``<out>/results.json`` as it ends (a cut-off run keeps what it measured):

1. speed: training step time (forward + backward + optimiser step, a fixed batch of the recipe's
   training crops) and inference time per 520x704 image with 1,000 detections (score threshold 0,
   mask pasting included), for both models, side by side;
2. accuracy: ``--iters`` iterations each (or, with ``--train-seconds``, as many as both fit in
   that much training time, measured from phase 1), then the Kaggle mAP on the validation fold,
   both models validated the same way: one image at a time, float32 (the model's checkpoint is
   ``<out>/<model>/model_final.pth``).

    python -m bench.head_to_head --data .devdata/dsb2018.npz --split-file .devdata/dsb2018_folds.json \
        --device cuda --train-seconds 240 --out output/h2h
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
from torch import nn


from maskrcnn.config import load_config
from maskrcnn.data import build_dataset, build_reader
from maskrcnn.engine.trainer import Trainer, amp_context
from maskrcnn.engine.validate import run_validation
from maskrcnn.model import build_model
from maskrcnn.structures import Instances, MaskList


class TorchvisionMaskRCNN(nn.Module):
    """torchvision's Mask R-CNN behind our model API (list of images, ``Instances`` in and out)."""

    def __init__(self, num_classes: int, scale: float, mean, std, detections: int = 1000, score_thresh: float = 0.05,
                 rpn_post_nms_test: int = 1500):
        super().__init__()
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        self.net = maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes + 1,
            box_detections_per_img=detections, box_score_thresh=score_thresh,
            rpn_post_nms_top_n_test=rpn_post_nms_test, image_mean=list(mean), image_std=list(std),
        )
        self.scale = float(scale)
        self.net.transform.resize = self._resize  # the recipe's fixed up-scaling instead of min/max size

    def _resize(self, image, target=None):
        if self.scale == 1.0:
            return image, target
        image = F.interpolate(image[None], scale_factor=self.scale, mode="bilinear", align_corners=False)[0]
        if target is not None:
            target = dict(target)
            target["boxes"] = target["boxes"] * self.scale
            m = target["masks"][:, None].float()
            target["masks"] = F.interpolate(m, scale_factor=self.scale, mode="nearest")[:, 0].to(torch.uint8)
        return image, target

    def forward(self, images, targets=None):
        images = [im.expand(3, -1, -1) if im.shape[0] == 1 else im for im in images]
        if self.training:
            tv_targets = [
                {"boxes": t.boxes, "labels": t.labels + 1, "masks": t.masks.to_dense().to(torch.uint8)} for t in targets
            ]
            return self.net(images, tv_targets)
        outs = self.net(images)
        results = []
        for im, o in zip(images, outs):
            size = (int(im.shape[-2]), int(im.shape[-1]))
            masks = MaskList.from_dense(o["masks"][:, 0].float(), pad=1) if len(o["boxes"]) else MaskList.empty(size, im.device, torch.float32)
            results.append(Instances(size, o["boxes"].float(), o["labels"] - 1, o["scores"].float(), masks))
        return results


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step_time(model, batch, device, amp: str, steps: int, warmup: int) -> float:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    autocast = amp_context(device, amp)
    images = [s.image.to(device) for s in batch]
    targets = [s.instances.to(device) for s in batch]
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            losses = model(images, targets)
        sum(v.float() for v in losses.values()).backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def inference_time(model, image, device, amp: str, steps: int, warmup: int):
    model.eval()
    autocast = amp_context(device, amp)
    times, dets = [], 0
    for i in range(warmup + steps):
        _sync(device)
        t = time.perf_counter()
        with autocast():
            out = model([image.to(device)])[0]
        binary = out.masks.threshold(0.5)  # the binary masks a submission needs
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
            dets = len(out)
        del binary
    return sorted(times)[len(times) // 2], dets


def build(name, cfg, device, score_thresh=None):
    """``ours``, ``ours-nchw`` (ours with ``model.channels_last`` off) or ``torchvision``."""
    if name in ("ours", "ours-nchw"):
        from dataclasses import replace

        mcfg = cfg.model
        if score_thresh is not None:
            mcfg = replace(mcfg, roi_heads=replace(mcfg.roi_heads, score_thresh=score_thresh))
        if name == "ours-nchw":
            mcfg = replace(mcfg, channels_last=False)
        model = build_model(mcfg)
    else:
        inp = cfg.model.input
        model = TorchvisionMaskRCNN(
            cfg.model.roi_heads.num_classes, inp.scale, inp.pixel_mean, inp.pixel_std,
            detections=cfg.model.roi_heads.detections_per_image,
            score_thresh=cfg.model.roi_heads.score_thresh if score_thresh is None else score_thresh,
            rpn_post_nms_test=cfg.model.rpn.post_nms_topk_test,
        )
    return model.to(device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dsb2018_r50_gn.yaml")
    p.add_argument("--data", required=True, help="DSB2018 cache (.npz) or dataset root")
    p.add_argument("--format", default="cache")
    p.add_argument("--split-file", required=True)
    p.add_argument("--out", default="output/head_to_head")
    p.add_argument("--device", default="cuda")
    p.add_argument("--iters", type=int, default=0, help="training iterations per model")
    p.add_argument("--train-seconds", type=float, default=0, help="size --iters so both trainings fit in this time")
    p.add_argument("--max-iters", type=int, default=3000)
    p.add_argument("--speed-steps", type=int, default=10)
    p.add_argument("--models", default="ours,torchvision", help="comma-separated: ours, ours-nchw, torchvision")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-speed", action="store_true", help="accuracy only (needs --iters)")
    p.add_argument("--infer-size", type=int, nargs=2, default=(520, 704), metavar=("H", "W"))
    p.add_argument("--set", nargs="*", default=[], dest="overrides")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    base = [f"data.format={args.format}", f"data.root={args.data}", f"data.split_file={args.split_file}"]
    cfg = load_config(args.config, base + list(args.overrides))
    os.makedirs(args.out, exist_ok=True)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "config": args.config, "overrides": args.overrides, "models": {}}
    path = os.path.join(args.out, "results.json")

    def save():
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, path)

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    reader = build_reader(cfg.data)
    train_ds = build_dataset(cfg.data, split="train", augment=True, seed=cfg.train.seed, reader=reader)
    val_ds = build_dataset(cfg.data, split="val", reader=reader)
    batch = [train_ds[i] for i in range(cfg.data.batch_size)]
    # A 520x704 inference image (the Sartorius size) cut from a validation image, padded if small.
    ih, iw = args.infer_size
    img = val_ds[0].image
    img = F.pad(img, (0, max(0, iw - img.shape[-1]), 0, max(0, ih - img.shape[-2])))[:, :ih, :iw]
    print(f"device {results['device']}, torch {torch.__version__}; train {len(train_ds)} / val {len(val_ds)} images", flush=True)

    # ---------------------------------------------------------------- speed
    for name in [] if args.skip_speed else names:
        torch.manual_seed(0)
        model = build(name, cfg, device)
        t_train = train_step_time(model, batch, device, cfg.solver.amp, args.speed_steps, 3)
        del model
        model = build(name, cfg, device, score_thresh=0.0)
        t_inf, dets = inference_time(model, img, device, cfg.solver.amp, args.speed_steps, 2)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        results["models"][name] = {
            "train_step_s": t_train, "train_it_per_s": 1.0 / t_train, "batch": cfg.data.batch_size,
            "infer_s_per_image": t_inf, "infer_img_per_s": 1.0 / t_inf, "infer_detections": dets, "peak_mem_gib": peak,
        }
        print(f"[speed] {name}: train {1 / t_train:.2f} it/s (batch {cfg.data.batch_size}), "
              f"inference {1 / t_inf:.2f} img/s at {ih}x{iw} with {dets} detections", flush=True)
        save()
    if "torchvision" in names and not args.skip_speed:
        b = results["models"]["torchvision"]
        results["speed_ratio"] = {}
        for n in names:
            if n == "torchvision":
                continue
            a = results["models"][n]
            r = {"train": a["train_it_per_s"] / b["train_it_per_s"], "inference": a["infer_img_per_s"] / b["infer_img_per_s"]}
            results["speed_ratio"][n] = r
            print(f"[speed] {n} / torchvision: training {r['train']:.2f}x, inference {r['inference']:.2f}x", flush=True)
        save()
    if args.skip_accuracy:
        return results

    # ------------------------------------------------------------- accuracy
    iters = args.iters
    if iters <= 0:
        if args.train_seconds <= 0:
            raise SystemExit("give --iters or --train-seconds")
        per_iter = sum(results["models"][n]["train_step_s"] for n in names)
        iters = int(args.train_seconds / (per_iter * 1.15))  # 15% for data loading and logging
        iters = max(20, min(iters, args.max_iters))
    results["iters"] = iters
    warmup = max(1, min(cfg.solver.warmup_iters, iters // 10))
    for name in names:
        run_cfg = load_config(args.config, base + list(args.overrides) + [
            f"solver.max_iter={iters}", f"solver.warmup_iters={warmup}", f"solver.steps=[{int(iters * 0.8)}]",
            f"train.output_dir={os.path.join(args.out, name)}", "train.eval_period=0",
            f"train.checkpoint_period={iters}", f"train.log_period={max(1, iters // 10)}",
        ])
        torch.manual_seed(run_cfg.train.seed)
        model = build(name, run_cfg, device)
        t = time.perf_counter()
        trainer = Trainer(run_cfg, model=model, train_dataset=train_ds, val_dataset=val_ds, device=device, progress=False,
                          overwrite=True)  # a rerun with the same --out replaces its runs
        trainer.train()
        wall = time.perf_counter() - t
        # One validation protocol for both: one image at a time, float32, our post-processing and
        # the Kaggle metric (what evaluate.py does). The Trainer's own validation batches images
        # and autocasts, which is not the same for a BatchNorm and a GroupNorm model.
        t = time.perf_counter()
        val = run_validation(model, val_ds, run_cfg.test, device, batch_size=1, autocast=None,
                             max_images=run_cfg.train.max_eval_images)
        val_wall = time.perf_counter() - t
        results["models"].setdefault(name, {}).update({
            "iters": iters, "train_wall_s": wall, "val_wall_s": val_wall, "val_mAP": val.get("val/mAP"),
            "val_protocol": "one image at a time, float32",
            "val": {k: v for k, v in val.items()},
        })
        print(f"[accuracy] {name}: {iters} iterations in {wall:.0f} s, Kaggle mAP on {val.get('val/num_images')} validation images "
              f"= {val.get('val/mAP')}", flush=True)
        del model, trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save()
    return results


if __name__ == "__main__":
    main()
