"""``predict.py``'s logic: a folder of images -> ``submission.csv``, with a timing summary.

Works offline and without a compiler: the ops use the compiled extension when it imports and
their pure-PyTorch twins otherwise (``maskrcnn.ops``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence

from maskrcnn.config import TestConfig, apply_thresholds, override_test_config, parse_overrides
from maskrcnn.data.images import read_image
from maskrcnn.inference.postprocess import postprocess
from maskrcnn.device import resolve_device
from maskrcnn.inference.checkpoint import load_model
from maskrcnn.inference.predictor import Predictor, build_predictor
from maskrcnn.inference.submission import instances_to_rows, save_submission

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
STAGES = ("read", "model", "merge", "postprocess", "encode")


def list_images(folder: str) -> List[str]:
    """Image files directly in ``folder`` (by suffix), sorted by name."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(
        os.path.join(folder, f) for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(folder, f))
    )
    if not paths:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def image_id(path: str) -> str:
    """Kaggle's id of an image file: its name without the suffix."""
    return os.path.splitext(os.path.basename(path))[0]


def predict_images(predictor: Predictor, paths: Sequence[str], test_cfg: TestConfig, out_path: str,
                   order: str = "row", progress: bool = True) -> List[Dict[str, float]]:
    """Predict, post-process and encode every image in ``paths``; write ``out_path`` (validated, atomic).

    Returns:
        one dict of seconds per image, keyed by ``STAGES`` and ``"total"``.
    """
    from tqdm import tqdm

    ids = [image_id(p) for p in paths]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ValueError(f"several images share the id {sorted(dup)[0]!r} (file name without suffix)")
    rows = []
    sizes = {}
    timings: List[Dict[str, float]] = []
    for path, iid in tqdm(list(zip(paths, ids)), desc="predict", unit="img", disable=not progress):
        t0 = time.perf_counter()
        image = read_image(path)
        t1 = time.perf_counter()
        raw = predictor.predict_raw(image)
        t2 = time.perf_counter()
        final = postprocess(raw, test_cfg)
        t3 = time.perf_counter()
        rows.extend(instances_to_rows(iid, final, order))
        t4 = time.perf_counter()
        sizes[iid] = (int(image.shape[-2]), int(image.shape[-1]))
        timings.append({"read": t1 - t0, "model": predictor.last_timing.get("model", t2 - t1),
                        "merge": predictor.last_timing.get("merge", 0.0), "postprocess": t3 - t2,
                        "encode": t4 - t3, "total": t4 - t0})
    save_submission(rows, out_path, sizes)
    return timings


def timing_summary(timings: Sequence[Dict[str, float]]) -> str:
    """Mean / median / max seconds per image for each stage, as a small table."""
    lines = [f"timing over {len(timings)} image(s), seconds per image:",
             f"  {'stage':<12}{'mean':>9}{'median':>9}{'max':>9}"]
    for stage in STAGES + ("total",):
        vals = [t[stage] for t in timings] or [0.0]
        lines.append(f"  {stage:<12}{statistics.fmean(vals):9.3f}{statistics.median(vals):9.3f}{max(vals):9.3f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predict.py",
        description="Predict cell instance masks for a folder of images and write a Kaggle submission.csv.",
    )
    p.add_argument("--weights", nargs="+", required=True, help="checkpoint(s); several = an ensemble")
    p.add_argument("--images", required=True, help="folder of .png/.tif images (ids = file names)")
    p.add_argument("--out", default="submission.csv")
    p.add_argument("--config", default=None, help="YAML config for bare state dicts (or to override the checkpoints')")
    p.add_argument("--tta", default=None, help="comma-separated views, e.g. hflip,vflip,rot90,scale=1.25 or d4 "
                   "(default: test.tta of the first checkpoint's config)")
    p.add_argument("--thresholds", default=None, help="YAML of test.* fields (tuned thresholds) overriding the config")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="test.* overrides, e.g. test.min_area=[75,150,75] test.fill_holes=true")
    p.add_argument("--min-views", type=int, default=None, help="default: test.tta_min_views")
    p.add_argument("--merge-iou", type=float, default=None, help="default: test.merge_iou")
    p.add_argument("--order", choices=("row", "col"), default="row", help="RLE pixel order (Sartorius: row)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=1, help="views per model call")
    p.add_argument("--amp", choices=("", "bf16", "fp16"), default="", help="autocast the models (GPU)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    models, cfgs = [], []
    for w in args.weights:
        m, c = load_model(w, device, args.config)
        models.append(m)
        cfgs.append(c)
    test_cfg = cfgs[0].test
    if args.thresholds:
        test_cfg = apply_thresholds(test_cfg, args.thresholds)
    if args.set:
        over = parse_overrides(args.set)
        if set(over) - {"test"}:
            raise SystemExit(f"--set only takes test.* keys, got {', '.join(sorted(set(over) - {'test'}))}")
        test_cfg = override_test_config(test_cfg, over.get("test", {}), source="--set")
    cli = {}
    if args.tta is not None:
        cli["tta"] = [s for s in args.tta.split(",") if s.strip()]
    if args.min_views is not None:
        cli["tta_min_views"] = args.min_views
    if args.merge_iou is not None:
        cli["merge_iou"] = args.merge_iou
    if cli:
        test_cfg = override_test_config(test_cfg, cli, source="command line")
    # Merging and post-processing run where the models run; only encoding needs the CPU.
    predictor = build_predictor(models, test_cfg, device=device, batch_size=args.batch_size, output_device=device,
                                amp=args.amp)
    paths = list_images(args.images)
    if args.limit > 0:
        paths = paths[: args.limit]
    print(f"predict: {len(paths)} image(s), {len(models)} model(s) x {len(predictor.views)} view(s) on {device}",
          file=sys.stderr)
    timings = predict_images(predictor, paths, test_cfg, args.out, args.order, progress=not args.no_progress)
    print(timing_summary(timings))
    print(f"wrote {args.out}")
    return 0
