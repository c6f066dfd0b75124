"""``predict.py``'s command line: a folder of images -> ``submission.csv``, with a timing summary.

The run has three parts, each a function: list the images (``list_images``, ``image_ids``: the
checks that need no model), predict them one at a time (``predict_images``: read, predict,
post-process), and write what comes out (``write_predictions``: encode the rows, validate them as
Kaggle would, write atomically).
``main`` wires them to the arguments; ``resolve_test_config`` gathers the test settings from the
checkpoint, a thresholds file and the command line.

Works offline and without a compiler: the ops use the compiled extension when it imports and
their pure-PyTorch twins otherwise (``maskrcnn.ops``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from maskrcnn import cli
from maskrcnn.config import ConfigError, TestConfig, apply_thresholds, override_test_config, parse_overrides
from maskrcnn.data.images import read_image
from maskrcnn.device import resolve_device
from maskrcnn.inference.checkpoint import load_model
from maskrcnn.inference.postprocess import postprocess
from maskrcnn.inference.predictor import Predictor, build_predictor
from maskrcnn.inference.submission import instances_to_rows, save_submission
from maskrcnn.structures import Instances

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
STAGES = ("read", "model", "merge", "postprocess", "encode")
Timing = Dict[str, float]


# ------------------------------------------------------------------------------ images
def list_images(folder: str, limit: int = 0) -> List[str]:
    """Image files directly in ``folder`` (by suffix), sorted by name; the first ``limit`` (0: all)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(
        os.path.join(folder, f) for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(folder, f))
    )
    if not paths:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths[:limit] if limit > 0 else paths


def image_id(path: str) -> str:
    """Kaggle's id of an image file: its name without the suffix."""
    return os.path.splitext(os.path.basename(path))[0]


def image_ids(paths: Sequence[str]) -> List[str]:
    """The ids of ``paths``; ValueError when two files share one (``a.png`` and ``a.tif``)."""
    ids = [image_id(p) for p in paths]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ValueError(f"several images share the id {sorted(dup)[0]!r} (file name without suffix)")
    return ids


# --------------------------------------------------------------------------- predicting
def predict_images(predictor: Predictor, paths: Sequence[str], test_cfg: TestConfig,
                   progress: bool = True) -> Iterator[Tuple[str, Instances, Timing]]:
    """Read, predict and post-process each image in turn.

    Yields:
        ``(image id, final Instances (bool masks, no overlaps), seconds per stage)`` per image, the
        stages being ``read``, ``model``, ``merge``, ``postprocess`` and ``total``.
    """
    from tqdm import tqdm

    ids = image_ids(paths)
    for path, iid in tqdm(list(zip(paths, ids)), desc="predict", unit="img", disable=not progress):
        t0 = time.perf_counter()
        image = read_image(path)
        t1 = time.perf_counter()
        raw = predictor.predict_raw(image)
        t2 = time.perf_counter()
        final = postprocess(raw, test_cfg)
        t3 = time.perf_counter()
        yield iid, final, {"read": t1 - t0, "model": predictor.last_timing.get("model", t2 - t1),
                           "merge": predictor.last_timing.get("merge", 0.0), "postprocess": t3 - t2,
                           "total": t3 - t0}


# ------------------------------------------------------------------------------ writing
def write_predictions(results: Iterable[Tuple[str, Instances, Timing]], out_path: str,
                      order: str = "row") -> List[Timing]:
    """Encode each image's final masks as submission rows, validate them all and write ``out_path``
    (atomically; nothing is written when Kaggle would reject the file).

    Returns:
        the timings of ``results`` with ``encode`` added (and counted in ``total``).
    """
    rows, sizes, timings = [], {}, []
    for iid, final, timing in results:
        t0 = time.perf_counter()
        rows.extend(instances_to_rows(iid, final, order))
        encode = time.perf_counter() - t0
        sizes[iid] = tuple(final.image_size)
        timings.append({**timing, "encode": encode, "total": timing["total"] + encode})
    save_submission(rows, out_path, sizes)
    return timings


def timing_summary(timings: Sequence[Timing]) -> str:
    """Mean / median / max seconds per image for each stage, as a small table."""
    lines = [f"timing over {len(timings)} image(s), seconds per image:",
             f"  {'stage':<12}{'mean':>9}{'median':>9}{'max':>9}"]
    for stage in STAGES + ("total",):
        vals = [t[stage] for t in timings] or [0.0]
        lines.append(f"  {stage:<12}{statistics.fmean(vals):9.3f}{statistics.median(vals):9.3f}{max(vals):9.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
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


def resolve_test_config(args: argparse.Namespace, base: TestConfig) -> TestConfig:
    """``base`` (the first checkpoint's test section) with ``--thresholds``, ``--set`` and the
    ``--tta`` / ``--min-views`` / ``--merge-iou`` options applied, in that order."""
    test_cfg = apply_thresholds(base, args.thresholds) if args.thresholds else base
    if args.set:
        over = parse_overrides(args.set)
        if set(over) - {"test"}:
            raise ConfigError(f"--set only takes test.* keys, got {', '.join(sorted(set(over) - {'test'}))}")
        test_cfg = override_test_config(test_cfg, over.get("test", {}), source="--set")
    cli = {}
    if args.tta is not None:
        cli["tta"] = [s for s in args.tta.split(",") if s.strip()]
    if args.min_views is not None:
        cli["tta_min_views"] = args.min_views
    if args.merge_iou is not None:
        cli["merge_iou"] = args.merge_iou
    return override_test_config(test_cfg, cli, source="command line") if cli else test_cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The exit code of ``predict.py argv`` (user errors: one ``error:`` line and 2, see ``maskrcnn.cli``)."""
    return cli.run(_predict, argv)


def _predict(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device, key="--device")
    models, cfgs = zip(*(load_model(w, device, args.config) for w in args.weights))
    test_cfg = resolve_test_config(args, cfgs[0].test)
    # Merging and post-processing run where the models run; only encoding needs the CPU.
    predictor = build_predictor(list(models), test_cfg, device=device, batch_size=args.batch_size,
                                output_device=device, amp=args.amp)
    paths = list_images(args.images, args.limit)
    print(f"predict: {len(paths)} image(s), {len(models)} model(s) x {len(predictor.views)} view(s) on {device}",
          file=sys.stderr)
    results = predict_images(predictor, paths, test_cfg, progress=not args.no_progress)
    timings = write_predictions(results, args.out, args.order)
    print(timing_summary(timings))
    print(f"wrote {args.out}")
    return 0
