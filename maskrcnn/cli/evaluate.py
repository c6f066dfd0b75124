"""Evaluation front end: score submissions, COCO AP, ablations, threshold tuning, label files.

    python evaluate.py score --submission submission.csv --labels train.csv [--order auto|row|col]
        [--labels-order auto|row|col] [--allow-invalid]
    python evaluate.py coco --predictions results.json --labels coco.json [--iou-types segm bbox]
    python evaluate.py ablate configs/ablation_example.yaml [--device cpu] [--max-images N]
    python evaluate.py tune --predictions output/ablation_example/cache/<hash> --out tuned.yaml \
        [--labels labels.csv] [--config CONFIG.yaml] [--classes A B C]
    python evaluate.py labels --config configs/small.yaml --split val --out labels.csv [--order row|col]
    python evaluate.py crossval configs/dsb2018_cpu.yaml [--folds 0,1,2,3,4] [--out DIR] [--set key=value ...]

`score` prints per-class scores (when the label file has cell_type) and, last, `mAP <value>`;
a warning when the submission scores far better in the other pixel order (`try --order col`).
It exits 1 when the submission would be rejected by Kaggle (overlapping masks, unsorted or
non-positive pairs, malformed RLE, unknown ids), unless --allow-invalid. Both competitions'
files are read: Sartorius `id,predicted` / `id,annotation,...` (row-major RLE) and DSB2018
`ImageId,EncodedPixels[,Height,Width]` (column-major); `--order auto` follows the header.

`coco` prints COCO mask (segm) and box AP of a COCO results json (`predict.py --format coco`,
detectron2's `coco_instances_results.json`) at 1000 detections per image.

`ablate` runs an ablation YAML (paths in it are relative to the file; see
`maskrcnn/evaluation/ablation.py`): each variant's raw predictions are cached, scored with the
Kaggle metric and tabulated (ablation.md, ablation.csv); it prints the `tune` command for a cache.

`crossval` trains the config on each fold (DIR/fold<k>; finished runs are reused, interrupted
ones resume) and writes crossval.md/.json: each fold's held-out Kaggle mAP overall, per imaging
domain, domain-weighted (each domain counted once) and at IoU 0.75-0.95, with mean and spread
(`maskrcnn/evaluation/crossval.py`).

`tune` sweeps score threshold, mask threshold and minimum area per class on a cache and writes
`tuned.yaml` for `predict.py --thresholds`; class names and the label file come from the cache.

The command line of ``evaluate.py`` (a checkout) and ``maskrcnn-evaluate`` (an installed package).
"""
from __future__ import annotations

import argparse
import sys

from maskrcnn import cli


def _score(args) -> int:
    from maskrcnn.evaluation.score import format_report, order_hint, score_files
    from maskrcnn.formats.kaggle_csv import order_for

    if args.labels_order is None:  # one order for both files (auto: by their headers)
        order = labels_order = order_for([args.submission, args.labels], args.order)
    else:
        order = order_for([args.submission], args.order)
        labels_order = order_for([args.labels], args.labels_order)
    result = score_files(args.submission, args.labels, order=order, labels_order=labels_order)
    if result.errors:
        shown = result.errors[: args.max_errors]
        for e in shown:
            print(("warning: " if args.allow_invalid else "error: ") + e, file=sys.stderr)
        if len(result.errors) > len(shown):
            print(f"... and {len(result.errors) - len(shown)} more", file=sys.stderr)
        print(f"{len(result.errors)} problem(s): Kaggle would reject this submission", file=sys.stderr)
        if not args.allow_invalid:
            return 1
    hint = order_hint(result, args.submission, args.labels, order, labels_order)
    if hint:
        print(f"warning: {hint}", file=sys.stderr)
    for line in format_report(result):
        print(line)
    return 0


def _coco(args) -> int:
    from maskrcnn.evaluation.coco_ap import evaluate_coco_files, format_coco_report

    summary = evaluate_coco_files(args.predictions, args.labels, iou_types=args.iou_types)
    for line in format_coco_report(summary):
        print(line)
    return 0


def _ablate(args) -> int:
    from maskrcnn.evaluation.ablation import run_ablation_file

    run_ablation_file(args.spec, device=args.device, max_images=args.max_images,
                      progress="lines" if args.no_progress else "bar")
    return 0


def _tune(args) -> int:
    from maskrcnn.evaluation.tuning import main_tune
    from maskrcnn.fileio import check_not_input, check_output_path

    check_output_path(args.out, "--out")  # before the sweep
    check_not_input(args.out, [args.predictions, args.labels, args.config], "--out")
    return main_tune(args)


def _labels(args) -> int:
    from maskrcnn.evaluation.ablation import write_split_labels
    from maskrcnn.config import load_config
    from maskrcnn.fileio import check_not_input, check_output_path

    check_output_path(args.out, "--out")  # before reading the split
    data = load_config(args.config, args.set).data
    check_not_input(args.out, [args.config, data.root, data.ann_file, data.cache_file, data.split_file], "--out")

    n = write_split_labels(args.config, args.split, args.out, order=args.order, overrides=args.set)
    print(f"wrote {n} images to {args.out}")
    return 0


def _folds(text: str):
    try:
        folds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated fold numbers, e.g. 0,1,2,3,4, got {text!r}") from None
    if not folds or len(set(folds)) != len(folds):
        raise argparse.ArgumentTypeError(f"distinct fold numbers, e.g. 0,1,2,3,4, got {text!r}")
    return folds


def _crossval(args) -> int:
    import os

    from maskrcnn.config import load_config, reject_repeated_keys
    from maskrcnn.errors import UserError
    from maskrcnn.evaluation.crossval import final_validation, fold_dir, format_table, summarize, write_report
    from maskrcnn.fileio import check_not_input

    reject_repeated_keys(args.set)
    cfg = load_config(args.config, args.set)
    bad = [k for k in args.folds if not 0 <= k < cfg.data.num_folds]
    if bad:
        raise UserError(f"--folds: {bad} outside 0..{cfg.data.num_folds - 1} (data.num_folds is {cfg.data.num_folds})")
    out = args.out or os.path.join("output", "crossval", os.path.splitext(os.path.basename(args.config))[0])
    d = cfg.data
    check_not_input(out, [args.config, d.root, d.ann_file, d.cache_file, d.split_file], "--out")
    records = {}
    for k in args.folds:
        run = fold_dir(out, k)
        rec = final_validation(run)
        if rec is None or int(rec.get("iteration", 0)) < cfg.solver.max_iter:
            if args.no_train:
                raise UserError(f"fold {k}: no finished run in {run} (drop --no-train to train it)")
            from maskrcnn.cli.train import main_train

            print(f"fold {k}: training -> {run}", flush=True)
            fold_cfg = load_config(args.config, args.set + [f"data.fold={k}", f"train.output_dir={run}"])
            resume = os.path.exists(os.path.join(run, "last_checkpoint"))
            rc = main_train(fold_cfg, resume=resume, progress=not args.no_progress)
            if rc:
                return rc
            rec = final_validation(run)
            if rec is None:
                raise UserError(f"fold {k}: the run in {run} wrote no validation (train.eval_period is 0?)")
        records[k] = rec
    summary = summarize(records)
    title = f"{args.config} " + " ".join(args.set) + f": folds {','.join(map(str, args.folds))}"
    print(format_table(summary, title.strip()), end="")
    for path in write_report(out, summary, title.strip()):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog=cli.program("evaluate.py"), description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score a submission CSV against a label CSV")
    s.add_argument("--submission", required=True, help="id,predicted (Sartorius) or ImageId,EncodedPixels (DSB2018)")
    s.add_argument("--labels", required=True, help="id,annotation,width,height[,cell_type] (or DSB2018 ImageId,EncodedPixels,Height,Width)")
    s.add_argument("--order", choices=("auto", "row", "col"), default="auto",
                   help="RLE pixel order; auto: col for DSB2018 headers (ImageId,EncodedPixels), row otherwise")
    s.add_argument("--labels-order", choices=("auto", "row", "col"), default=None,
                   help="RLE pixel order of the label file (default: the same as --order)")
    s.add_argument("--allow-invalid", action="store_true", help="report Kaggle's rejections but score anyway")
    s.add_argument("--max-errors", type=cli.int_at_least(0), default=50, help="print at most this many problems")
    s.set_defaults(func=_score)

    c = sub.add_parser("coco", help="COCO mask and box AP of a COCO results json against a COCO json (pycocotools)")
    c.add_argument("--predictions", required=True, metavar="RESULTS.json",
                   help="COCO results: a list of {image_id, category_id, score, segmentation (RLE), bbox}, "
                        "e.g. from predict.py --format coco --coco-gt COCO.json")
    c.add_argument("--labels", required=True, metavar="COCO.json", help="COCO ground truth (images, annotations, categories)")
    c.add_argument("--iou-types", nargs="+", choices=("segm", "bbox"), default=["segm", "bbox"],
                   help="segm: mask AP; bbox: box AP")
    c.set_defaults(func=_coco)

    a = sub.add_parser("ablate", help="run the variants of an ablation YAML and write the tables")
    a.add_argument("spec", metavar="ABLATION.yaml", help="config, output_dir, variants (e.g. configs/ablation_example.yaml)")
    a.add_argument("--device", default=None, help="override the spec's device (cpu, cuda)")
    a.add_argument("--max-images", type=int, default=None, help="override the spec's max_images")
    a.add_argument("--no-progress", action="store_true", help="a line every 30 s instead of a progress bar")
    a.set_defaults(func=_ablate)

    from maskrcnn.evaluation.tuning import add_tune_arguments

    t = sub.add_parser("tune", help="sweep score/mask thresholds and min area per class on cached predictions")
    add_tune_arguments(t)
    t.set_defaults(func=_tune)

    cv = sub.add_parser("crossval", help="train a config on each fold and report mean and spread per imaging domain")
    cv.add_argument("config", help="YAML config (its data section gives the dataset and num_folds)")
    cv.add_argument("--folds", type=_folds, default=[0, 1, 2, 3, 4], help="comma-separated folds (default: 0,1,2,3,4)")
    cv.add_argument("--out", default=None, help="root of the runs DIR/fold<k> and the report (default: output/crossval/<config name>)")
    cv.add_argument("--no-train", action="store_true", help="only summarise finished runs; a missing one is an error")
    cv.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    cli.add_set_option(cv, "config overrides for every fold, e.g. model.input.invert_bright=true")
    cv.set_defaults(func=_crossval)

    lb = sub.add_parser("labels", help="write the ground truth of a dataset split as a label CSV")
    lb.add_argument("--config", required=True, help="YAML config: its data section names the dataset and split")
    lb.add_argument("--split", default="val", choices=("train", "val", "all"), help="the fold, as training splits it")
    lb.add_argument("--out", required=True, help="label CSV to write (id,annotation,width,height,cell_type)")
    lb.add_argument("--order", choices=("row", "col"), default="row",
                    help="RLE pixel order; col writes DSB2018 column names (ImageId,EncodedPixels,Height,Width)")
    cli.add_set_option(lb, "config overrides key=value")
    lb.set_defaults(func=_labels)
    return p


def _evaluate(argv) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def main(argv=None) -> int:
    """The exit code of ``evaluate.py argv`` (user errors: one ``error:`` line and 2, see ``maskrcnn.cli``)."""
    return cli.run(_evaluate, argv)

