"""What COCO AP adds to a validation pass (``train.eval_coco``), side by side with the Kaggle-only pass.

Runs ``maskrcnn.engine.validate.run_validation`` on a config's validation split with a checkpoint,
alternating ``coco=False`` and ``coco=True`` (``--repeats`` times each, the first pair as warm-up
dropped), and prints the median seconds of each and their ratio.

    python -m bench.validation_coco [--config configs/small.yaml] [--weights output/small/model_final.pth] \
        [--repeats 3] [--set train.max_eval_images=20]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from maskrcnn.config import load_config
from maskrcnn.data import build_dataset
from maskrcnn.device import resolve_device
from maskrcnn.engine.validate import run_validation
from maskrcnn.inference.checkpoint import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/small.yaml")
    p.add_argument("--weights", default="output/small/model_final.pth")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", nargs="*", default=[])
    args = p.parse_args()
    cfg = load_config(args.config, args.set)
    device = resolve_device(args.device)
    model, _ = load_model(args.weights, device, cfg)
    ds = build_dataset(cfg.data, split="val")
    times = {False: [], True: []}
    for _ in range(args.repeats + 1):
        for coco in (False, True):
            t0 = time.perf_counter()
            scores = run_validation(model, ds, cfg.test, device, batch_size=cfg.data.batch_size,
                                    max_images=cfg.train.max_eval_images, coco=coco, class_names=ds.class_names)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[coco].append(time.perf_counter() - t0)
    base, with_coco = statistics.median(times[False][1:]), statistics.median(times[True][1:])
    print(f"{scores['val/num_images']} images on {device}, {torch.get_num_threads()} threads; median of {args.repeats}")
    print(f"  Kaggle only      {base:8.3f} s")
    print(f"  Kaggle + COCO    {with_coco:8.3f} s   ({with_coco / base:.2f}x; segm AP {scores['val/segm/AP']:.4f})")


if __name__ == "__main__":
    main()
