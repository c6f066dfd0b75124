"""Evaluation front end: score submissions, COCO AP, ablations, threshold tuning, label files.

    python evaluate.py score --submission submission.csv --labels train.csv [--order auto|row|col]
        [--labels-order auto|row|col] [--allow-invalid]
    python evaluate.py coco --predictions results.json --labels coco.json [--iou-types segm bbox]
    python evaluate.py ablate configs/ablation_example.yaml [--device cpu] [--max-images N]
    python evaluate.py tune --predictions output/ablation_example/cache/<hash> --out tuned.yaml \
        [--labels labels.csv] [--config CONFIG.yaml] [--classes A B C]
    python evaluate.py labels --config configs/small.yaml --split val --out labels.csv [--order row|col]

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

