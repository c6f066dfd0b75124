"""predict.py end to end with a randomly initialised model: per-image seconds by stage.

Writes synthetic 520 x 704 images (``maskrcnn.data.synthetic``, Sartorius layout) and a checkpoint
of a random-init model built from ``--config`` with the detection score threshold at 0, so every
view returns up to ``detections_per_image`` (1000) instances: the merge and post-processing then
work at the Sartorius cap. Random boxes are larger than cells, so crops (and merge cost) are a
pessimistic bound. Runs ``predict.py``'s main once without TTA and once with ``--tta``.

    nice python -m bench.bench_predict --device cuda --images 4 --tta d4
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


from maskrcnn.config import load_config, to_dict
from maskrcnn.cli.predict import main as predict_main
from maskrcnn.cli.synthetic import main as write_synthetic
from maskrcnn.model import build_model


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "sartorius_r50.yaml"))
    p.add_argument("--set", nargs="*", default=[], help="extra config overrides")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--height", type=int, default=520)
    p.add_argument("--width", type=int, default=704)
    p.add_argument("--tta", default="d4")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    overrides = ["model.backbone.weights=", "model.roi_heads.score_thresh=0.0", "test.score_thresh=[0.05]",
                 "test.min_area=[0]"] + list(args.set)
    cfg = load_config(args.config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, load_weights=False, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        ck = os.path.join(tmp, "random.pth")
        torch.save({"model": model.state_dict(), "config": to_dict(cfg), "iteration": 0}, ck)
        write_synthetic(["--out", tmp, "--num-images", str(args.images), "--height", str(args.height),
                         "--width", str(args.width), "--cells", "300", "600"])
        images = os.path.join(tmp, "train")
        for tta in ("", args.tta):
            print(f"\n=== {args.config} (random init), tta={tta or 'none'}, device {args.device}")
            t0 = time.perf_counter()
            predict_main(["--weights", ck, "--images", images, "--out", os.path.join(tmp, "submission.csv"),
                          "--tta", tta, "--device", args.device, "--no-progress"])
            print(f"wall {time.perf_counter() - t0:.1f} s for {args.images} images (incl. model load)")
            if torch.cuda.is_available() and str(args.device) != "cpu":
                print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
                torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
