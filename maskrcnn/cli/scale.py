"""``python -m maskrcnn scale slide|collection``: the command lines of the Dask paths.

    python -m maskrcnn scale slide --weights W.pth --image big.zarr --out labels.zarr --table cells.csv \
        [--block 512 --overlap 64] [--workers 2 | --scheduler tcp://HOST:8786]
    python -m maskrcnn scale collection --weights W.pth --images DIR|'GLOB'|LIST.txt --out submission.csv \
        [--format csv|dsb|coco|labels|...] [--work-dir DIR] [--workers 2 | --scheduler tcp://HOST:8786]

``collection`` takes every option of ``predict.py`` (same meaning, same outputs). Without
``--scheduler`` a local cluster of ``--workers`` processes (``--threads`` torch threads each) runs
the work and is shut down at the end; with it, the work goes to that cluster (its workers must
import this package and see the same paths: a shared file system).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from typing import Iterator, Optional, Sequence

from maskrcnn import cli
from maskrcnn.errors import UserError

COMMANDS = ("slide", "collection")


class ScaleError(UserError, ValueError):
    """A command-line mistake of ``python -m maskrcnn scale``."""


def _need_extra() -> None:
    missing = []
    for mod in ("distributed", "zarr", "tifffile"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ScaleError(f"the Dask paths need {', '.join(missing)}: pip install --no-build-isolation .[distributed]")


@contextlib.contextmanager
def open_client(scheduler: Optional[str], workers: int, threads: int) -> Iterator:
    """A ``distributed.Client`` of the cluster at ``scheduler``, or of a new local cluster of
    ``workers`` processes with one Dask thread each (closed at the end)."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # the worker processes inherit it
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


def _cluster_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786 (dask-jobqueue, dask-mpi; default: a local cluster)")
    g.add_argument("--workers", type=cli.int_at_least(1), default=2, help="worker processes of the local cluster")
    g.add_argument("--threads", type=cli.int_at_least(1), default=1, help="torch threads per worker process")


def _test_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", nargs="+", required=True,
                   help="checkpoint(s) or model zoo name(s), e.g. nuclei (MODEL_ZOO.md); several = an ensemble")
    p.add_argument("--config", default=None, help="YAML config for bare state dicts")
    p.add_argument("--tta", default=None, help="comma-separated views (default: the checkpoint's test.tta)")
    p.add_argument("--thresholds", default=None, help="YAML of test.* fields overriding the config "
                   "(default: A.thresholds.yaml beside the first weights A.pth, when there is one)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="test.* overrides")
    p.add_argument("--min-views", type=cli.int_at_least(1), default=None, help="default: test.tta_min_views")
    p.add_argument("--merge-iou", type=float, default=None, help="default: test.merge_iou")
    p.add_argument("--device", default="cpu", help="where the workers run the model: cpu | cuda | auto")
    p.add_argument("--batch-size", type=cli.int_at_least(1), default=1, help="views per model call")
    p.add_argument("--no-progress", action="store_true", help="a line every 30 s instead of a progress bar")


def build_slide_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m maskrcnn scale slide",
                           description="Cell masks of one large image (zarr, OME-Zarr, TIFF) on a Dask cluster: "
                                       "a zarr label image and a per-cell CSV.")
    _test_options(p)
    p.add_argument("--image", required=True, help="zarr array, OME-Zarr group or (pyramidal) TIFF")
    p.add_argument("--out", required=True, help="label image to write (a zarr folder, uint32)")
    p.add_argument("--table", required=True, help="per-cell CSV to write (id, box, centroid, area, score, class)")
    p.add_argument("--block", type=cli.int_at_least(64), default=512, help="block side in pixels (one model call)")
    p.add_argument("--overlap", type=cli.int_at_least(0), default=64,
                   help="pixels neighbouring blocks share: at least the largest cell, at most half a block")
    p.add_argument("--chunk", type=cli.int_at_least(16), default=1024, help="chunk side of the label image")
    p.add_argument("--skip-contrast", type=float, default=0.1,
                   help="skip blocks whose intensity span is below this share of the slide's (0: predict all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _cluster_options(p)
    return p


def build_collection_parser() -> argparse.ArgumentParser:
    from maskrcnn.cli.predict import build_parser

    p = build_parser()
    p.prog = "python -m maskrcnn scale collection"
    p.description = ("predict.py on a Dask cluster: a folder, glob pattern or list file of images; resumable; "
                     "the same outputs as predict.py.")
    for a in p._actions:  # --images takes more here than in predict.py
        if a.dest == "images":
            a.help = "a folder (as predict.py), a quoted glob pattern, or a .txt list of image paths"
    p.add_argument("--work-dir", default=None, help="where the per-image parts go (default: OUT.parts); "
                   "a rerun skips the images done there")
    p.add_argument("--images-per-task", type=cli.int_at_least(1), default=4, help="images per Dask task")
    p.add_argument("--overwrite", action="store_true", help="drop the parts of an earlier run in --work-dir")
    _cluster_options(p)
    return p


def _spec(args, cfgs, tile: bool):
    """The ``ModelSpec`` of the command line and the checkpoints' configs ``cfgs`` (test settings
    resolved and checked against each checkpoint's classes, as ``predict.py`` does)."""
    from maskrcnn.config import check_class_counts
    from maskrcnn.inference.predict_run import AMP_CHOICES, resolve_test_config
    from maskrcnn.scale.workers import ModelSpec

    if not tile:
        args.tile = args.tile_overlap = None
    test = resolve_test_config(args, cfgs[0].test)
    for w, c in zip(args.weights, cfgs):
        check_class_counts(test, c.model.roi_heads.num_classes, source=w)
    return ModelSpec(tuple(args.weights), args.config, test, args.device, args.batch_size,
                     AMP_CHOICES[getattr(args, "amp", "none")], args.threads)


def _load_first(args):
    """The first checkpoint's config (every checkpoint is read and checked, as ``predict.py`` does)."""
    from maskrcnn.inference.checkpoint import load_model

    return [load_model(w, "cpu", args.config)[1] for w in args.weights]


def slide_main(argv: Sequence[str]) -> int:
    args = build_slide_parser().parse_args(argv)
    _need_extra()
    from maskrcnn.fileio import check_not_input, check_output_path
    from maskrcnn.inference.predict_run import check_same_classes, resolve_weight_files
    from maskrcnn.scale.slide import plan_blocks, run_slide
    from maskrcnn.scale.sources import open_source

    source = open_source(args.image)
    if os.path.exists(args.out) and not args.overwrite:
        raise ScaleError(f"--out {args.out} exists: give another path or --overwrite")
    check_output_path(args.table, "--table")
    inputs = [args.image, *args.weights, args.config, args.thresholds]
    check_not_input(args.out, inputs, "--out", folder=True)
    check_not_input(args.table, inputs + [args.out], "--table")
    try:
        plan_blocks(source, args.block, args.overlap)
    except ValueError as e:
        raise ScaleError(str(e)) from None
    note = resolve_weight_files(args)  # zoo names -> files, thresholds beside the weights (as predict.py)
    cfgs = _load_first(args)
    spec = _spec(args, cfgs, tile=False)
    check_same_classes(args.weights, cfgs)
    mode = "lines" if args.no_progress else "bar"
    if note:
        print(note, file=sys.stderr)
    print(f"slide: {args.image} {source.shape[1]}x{source.shape[2]} px, {source.shape[0]} channel(s), {source.dtype}",
          file=sys.stderr)
    with open_client(args.scheduler, args.workers, args.threads) as client:
        stats = run_slide(client, source, spec, args.out, args.table, args.block, args.overlap, args.chunk,
                          args.skip_contrast, mode)
    print(f"{stats['blocks']} blocks ({stats['skipped']} skipped as background), {stats['cells']} cells; "
          f"{stats['predict_s']:.2f} s per predicted block, {stats['finish_s']:.2f} s per block to join; "
          f"{stats['wall_s']:.1f} s")
    print(f"wrote {args.out} and {args.table}")
    return 0


def collection_main(argv: Sequence[str]) -> int:
    from maskrcnn.config import TestConfig
    from maskrcnn.inference.outputs import DEFAULT_OUT, FOLDER_FORMATS, build_writer, model_class_names
    from maskrcnn.inference.predict_run import (auto_tiling, check_same_classes, finish_run, image_ids,
                                                load_models, resolve_test_config, resolve_weight_files)
    from maskrcnn.inference.predictor import check_min_views
    from maskrcnn.inference.tta import parse_tta
    from maskrcnn.fileio import check_not_input, check_output_path
    from maskrcnn.scale.collection import (assemble, claim_work_dir, list_inputs, manifest, part_path,
                                           run_collection)

    args = build_collection_parser().parse_args(argv)
    _need_extra()
    args.out = DEFAULT_OUT[args.format] if args.out is None else args.out
    folder = args.format in FOLDER_FORMATS
    # a folder format: the file to check is one inside it
    check_output_path(os.path.join(args.out, "label.png") if folder and args.out else args.out, "--out")
    paths = list_inputs(args.images, args.limit)
    ids = image_ids(paths)
    check_not_input(args.out, [args.images, *paths, *args.weights, args.config, args.thresholds, args.coco_gt],
                    "--out", folder=folder)
    early = resolve_test_config(args, TestConfig())  # the command line's settings, checked before any model
    given = args.thresholds
    note = resolve_weight_files(args)  # zoo names -> files, thresholds beside the weights (as predict.py)
    if args.thresholds and not given:
        resolve_test_config(args, TestConfig())
    if args.tta is not None and args.min_views is not None:
        check_min_views(args.min_views, len(args.weights), len(parse_tta(early.tta)))
    _, cfgs, _ = load_models(args, "cpu")  # as predict.py: --set model.*, --normalize, --diameter, --scale
    spec = _spec(args, cfgs, tile=True)
    check_same_classes(args.weights, cfgs)
    keys = ("weights", "config", "set", "normalize", "diameter", "scale")
    spec = dataclasses.replace(spec, auto_tile=tuple(auto_tiling(args, spec.test, cfgs[0])),
                               load_args=tuple((k, tuple(v) if isinstance(v, list) else v)
                                               for k, v in sorted(vars(args).items()) if k in keys))
    writer = build_writer(args.format, args.out, args.order, paths, ids, coco_gt=args.coco_gt,
                          class_names=model_class_names(cfgs[0].data), num_classes=cfgs[0].model.roi_heads.num_classes)
    work_dir = args.work_dir or args.out.rstrip("/") + ".parts"
    claim_work_dir(work_dir, manifest(spec, {}), overwrite=args.overwrite)
    mode = "lines" if args.no_progress else "bar"
    if note:
        print(note, file=sys.stderr)
    if all(os.path.exists(part_path(work_dir, i)) for i in ids):  # all done: only the assembly is left
        stats = {"images": len(ids), "already_done": len(ids), "predicted": 0}
    else:
        with open_client(args.scheduler, args.workers, args.threads) as client:
            stats = run_collection(client, spec, paths, ids, work_dir, args.images_per_task, mode)
    print(f"collection: {stats['images']} image(s), {stats['already_done']} done before, {stats['predicted']} predicted "
          f"now; parts in {work_dir}", file=sys.stderr)
    timings = assemble(work_dir, ids, writer, mode)
    if args.strict and any("skipped" in t for t in timings):
        bad = next(t for t in timings if "skipped" in t)
        raise ScaleError(f"--strict: an image could not be read: {bad['skipped']}")
    for t in timings:  # each capped image's warning, as predict.py prints it (made on the worker)
        if t.get("cap_warning"):
            print(t["cap_warning"], file=sys.stderr)
    return finish_run(timings, writer)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The exit code of ``python -m maskrcnn scale argv`` (``maskrcnn.cli`` conventions)."""
    return cli.run(_main, argv)


def _main(argv: Sequence[str]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m maskrcnn scale {slide,collection} ...\n\n"
              "  slide       one large image (zarr, OME-Zarr, TIFF) -> a zarr label image and a per-cell CSV\n"
              "  collection  predict.py on a Dask cluster: folder, glob or list file; resumable\n\n"
              "python -m maskrcnn scale COMMAND --help shows its options.")
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        raise ScaleError(f"unknown command {argv[0]!r}: choose one of {', '.join(COMMANDS)}")
    return (slide_main if argv[0] == "slide" else collection_main)(argv[1:])
