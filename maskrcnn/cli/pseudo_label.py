"""``python -m maskrcnn pseudo_label label|split``: pseudo-label a folder of unlabelled images with a
trained model, or split the training folds into labelled and unlabelled ids (``maskrcnn.pseudo_label``
says what each writes).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional, Sequence

from maskrcnn import cli
from maskrcnn.pseudo_label import (PseudoLabelError, PseudoLabelSet, class_names_of, label_images, open_images,
                                   select_ids)


def build_parser():
    p = cli.ArgumentParser(prog="python -m maskrcnn pseudo_label",
                           description="Pseudo-label unlabelled images for semi-supervised training.")
    sub = p.add_subparsers(dest="command", required=True)
    lab = sub.add_parser("label", help="label a folder of images with a trained model (TTA, ensembles)")
    lab.add_argument("--weights", nargs="+", required=True,
                     help="checkpoint(s) or model zoo name(s), e.g. nuclei; several = an ensemble")
    lab.add_argument("--images", required=True, help="flat folder of images, or a DSB2018 folder")
    lab.add_argument("--out", required=True, help="output folder (pseudo_labels.npz, summary.json)")
    lab.add_argument("--config", default=None, help="YAML config for bare state dicts (or to override the checkpoints')")
    lab.add_argument("--ids", default="", help="json list of the image ids to label (default: all)")
    lab.add_argument("--keep", type=float, default=0.7, help="score from which a detection is a cell")
    lab.add_argument("--ignore", type=float, default=0.3,
                     help="score from which a detection that is not a cell is an ignore region (no loss)")
    lab.add_argument("--agree", type=int, default=0, help="views a cell must be seen in (0: all views)")
    lab.add_argument("--tta", default=None, help="comma-separated views, e.g. hflip,vflip (default: the config's test.tta)")
    lab.add_argument("--merge-iou", type=float, default=None, help="default: test.merge_iou")
    cli.add_set_option(lab, "test.* overrides (mask_thresh, min_area, fill_holes, ...) and the predict-time "
                            "model.* keys of predict.py --set")
    lab.add_argument("--classes", default="", help="comma-separated class names (default: from the config)")
    lab.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    lab.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    lab.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    lab.add_argument("--no-progress", action="store_true")
    lab.add_argument("--strict", action="store_true",
                     help="stop at an image that cannot be processed (default: leave it out, warn, exit code 3)")
    spl = sub.add_parser("split", help="labelled / unlabelled ids of the training folds")
    spl.add_argument("--split-file", required=True, help="the folds json (data.split_file)")
    spl.add_argument("--fold", type=int, default=0, help="the validation fold (left out of both)")
    spl.add_argument("--fraction", type=float, default=0.25, help="share of the training images that keep their labels")
    spl.add_argument("--seed", type=int, default=0)
    spl.add_argument("--labeled", required=True, help="output json of the labelled ids")
    spl.add_argument("--unlabeled", required=True, help="output json of the unlabelled ids")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit code of ``python -m maskrcnn pseudo_label argv`` (user errors: one ``error:`` line, exit 2)."""
    return cli.run(_main, argv)


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    return _split(args) if args.command == "split" else _label(args)


def _split(args) -> int:
    from maskrcnn.data.splits import labeled_subset, write_ids_file

    if not os.path.isfile(args.split_file):
        raise PseudoLabelError(f"--split-file {args.split_file}: no such file")
    try:
        with open(args.split_file) as f:
            doc = json.load(f)
        folds, strata = doc["folds"], doc.get("strata", {})
    except (ValueError, KeyError, TypeError) as e:
        raise PseudoLabelError(f"--split-file {args.split_file}: not a folds file ({type(e).__name__}: {e})") from None
    if not 0.0 < args.fraction < 1.0:
        raise PseudoLabelError(f"--fraction must be in (0, 1), got {args.fraction}")
    if args.fold not in set(folds.values()):
        raise PseudoLabelError(f"--fold {args.fold}: {args.split_file} has folds {sorted(set(folds.values()))}")
    from maskrcnn.fileio import check_not_input, check_output_path

    for flag, out in (("--labeled", args.labeled), ("--unlabeled", args.unlabeled)):
        check_output_path(out, flag)
        check_not_input(out, [args.split_file], flag)
    if os.path.realpath(args.labeled) == os.path.realpath(args.unlabeled):
        raise PseudoLabelError(f"--labeled and --unlabeled are one file: give two ({args.labeled})")
    labeled, unlabeled = labeled_subset(folds, strata, args.fold, args.fraction, args.seed)
    meta = dict(split_file=args.split_file, val_fold=args.fold, fraction=args.fraction, seed=args.seed)
    write_ids_file(args.labeled, labeled, role="labelled", **meta)
    write_ids_file(args.unlabeled, unlabeled, role="unlabelled", **meta)
    print(f"{len(labeled)} labelled ids -> {args.labeled}; {len(unlabeled)} unlabelled ids -> {args.unlabeled}")
    return 0


def _teacher(args, device):
    """The ``--weights`` models as one predictor over the test views (each image whole, no tiling),
    with the first checkpoint's config, the test settings and the views a cell must be seen in."""
    from maskrcnn.inference.checkpoint import load_model
    from maskrcnn.inference.predict_run import check_same_classes, model_overrides, resolve_test_config
    from maskrcnn.inference.predictor import build_predictor
    from maskrcnn.inference.pseudo_selection import check_thresholds

    models, cfgs = zip(*(load_model(w, device, args.config, overrides=model_overrides(args)) for w in args.weights))
    check_same_classes(args.weights, cfgs)
    # resolve_test_config's other options (no tiling here: each image is predicted whole, in every view)
    args.min_views, args.thresholds, args.tile, args.tile_overlap = None, None, None, None
    test_cfg = resolve_test_config(args, cfgs[0].test)
    predictor = build_predictor(list(models), test_cfg, device=device, output_device=device)
    agree = args.agree or predictor.num_views
    try:
        check_thresholds(args.keep, args.ignore, agree, predictor.num_views)
    except ValueError as e:
        raise PseudoLabelError(f"--keep/--ignore/--agree: {e}") from None
    return cfgs[0], predictor, test_cfg, agree


def _label(args) -> int:
    import torch

    from maskrcnn.data.pseudo_mix import PSEUDO_FILE
    from maskrcnn.device import resolve_device
    from maskrcnn.fileio import check_not_input, check_output_path

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, key="--device")
    check_output_path(os.path.join(args.out, PSEUDO_FILE) if args.out else "", "--out")
    check_not_input(args.out, [args.images, *args.weights, args.config, args.ids], "--out", folder=True)
    reader_probe = open_images(args.images, 3)  # fails early, before the models load
    cfg, predictor, test_cfg, agree = _teacher(args, device)
    names = class_names_of(cfg, args.classes)
    channels = cfg.model.input.in_channels
    reader = reader_probe if getattr(reader_probe, "channels", 3) == channels else open_images(args.images, channels)
    indices = select_ids(reader, args.ids)
    if args.limit > 0:
        indices = indices[: args.limit]
    print(f"pseudo_label: {len(indices)} image(s), {len(predictor.models)} model(s) x {len(predictor.views)} view(s) "
          f"on {device}; cells: score >= {args.keep} in >= {agree} view(s); ignore regions: score >= {args.ignore}",
          file=sys.stderr)
    t0 = time.time()
    indices, labels, types, totals, empty, skipped = label_images(reader, indices, predictor, test_cfg, args, agree)
    if totals["cells"] == 0:
        raise PseudoLabelError(f"no detection of the {len(indices)} images reached --keep {args.keep} in {agree} "
                               f"view(s): nothing written (lower --keep or --agree, or check --weights)")
    dataset = PseudoLabelSet(reader, indices, labels, names, types)
    settings = {"keep": args.keep, "ignore": args.ignore, "agree": agree, "views": predictor.num_views,
                "tta": list(test_cfg.tta), "merge_iou": test_cfg.merge_iou, "weights": list(args.weights),
                "images_dir": args.images, "ids": args.ids, "class_names": list(names)}
    return _write(args.out, dataset, totals, empty, skipped, settings, t0)


def _write(out: str, dataset, totals, empty: int, skipped, settings, t0: float) -> int:
    """Write the pseudo-labels and their summary into ``out``; say what was written (exit code 3
    when some images were left out)."""
    from maskrcnn.formats.dataset_cache import write_cache
    from maskrcnn.data.pseudo_mix import PSEUDO_FILE, SUMMARY_FILE
    from maskrcnn.fileio import atomic_json

    out_file = os.path.join(out, PSEUDO_FILE)
    os.makedirs(out, exist_ok=True)
    info = write_cache(dataset, out_file)
    summary = {
        "images": len(dataset), "cells": totals["cells"], "ignored_regions": totals["ignored"],
        "dropped_below_ignore": totals["background"], "images_without_cells": int(empty),
        **{k: settings[k] for k in ("keep", "ignore", "agree", "views", "tta", "merge_iou", "weights", "images_dir",
                                    "ids", "class_names")},
        "file": out_file, "file_bytes": info["file_bytes"], "seconds": round(time.time() - t0, 1), "skipped": skipped,
    }
    atomic_json(summary, os.path.join(out, SUMMARY_FILE))
    print(f"pseudo-labelled {len(dataset)} images: {totals['cells']} cells, {totals['ignored']} ignore regions "
          f"({empty} images without cells) -> {out_file}")
    if skipped:
        print(f"pseudo_label: {len(skipped)} image(s) could not be processed and are not in {out_file} (exit code 3; "
              "--strict stops at the first one instead):\n" + "\n".join(f"  {r}" for r in skipped[:10])
              + (f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""), file=sys.stderr)
        return 3
    return 0
