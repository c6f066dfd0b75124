"""Evaluation front end.

    python evaluate.py score --submission S.csv --labels train.csv [--order row|col] [--allow-invalid]
    python evaluate.py ablate ABLATION.yaml
    python evaluate.py tune CONFIG.yaml ... (see `python evaluate.py tune -h`)
    python evaluate.py labels --config CFG.yaml --split val --out labels.csv [--order row|col]

`score` prints per-class scores (when the label file has cell_type) and, last, `mAP <value>`.
It exits 1 when the submission would be rejected by Kaggle (overlapping masks, unsorted or
non-positive pairs, malformed RLE, unknown ids), unless --allow-invalid.
"""
from __future__ import annotations

import argparse
import sys

from maskrcnn import cli


def _score(args) -> int:
    from maskrcnn.evaluation.score import format_report, score_files

    result = score_files(args.submission, args.labels, order=args.order)
    if result.errors:
        shown = result.errors[: args.max_errors]
        for e in shown:
            print(("warning: " if args.allow_invalid else "error: ") + e, file=sys.stderr)
        if len(result.errors) > len(shown):
            print(f"... and {len(result.errors) - len(shown)} more", file=sys.stderr)
        print(f"{len(result.errors)} problem(s): Kaggle would reject this submission", file=sys.stderr)
        if not args.allow_invalid:
            return 1
    for line in format_report(result):
        print(line)
    return 0


def _ablate(args) -> int:
    from maskrcnn.evaluation.ablation import run_ablation_file

    run_ablation_file(args.spec, device=args.device, max_images=args.max_images)
    return 0


def _tune(args) -> int:
    from maskrcnn.evaluation.tuning import main_tune

    return main_tune(args)


def _labels(args) -> int:
    from maskrcnn.evaluation.ablation import write_split_labels

    n = write_split_labels(args.config, args.split, args.out, order=args.order, overrides=args.set)
    print(f"wrote {n} images to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="evaluate.py", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score a submission CSV against a label CSV")
    s.add_argument("--submission", required=True)
    s.add_argument("--labels", required=True, help="id,annotation,width,height[,cell_type] (or DSB2018 ImageId,EncodedPixels,Height,Width)")
    s.add_argument("--order", choices=("row", "col"), default="row", help="RLE pixel order (DSB2018 files: col)")
    s.add_argument("--allow-invalid", action="store_true", help="report Kaggle's rejections but score anyway")
    s.add_argument("--max-errors", type=int, default=50, help="print at most this many problems")
    s.set_defaults(func=_score)

    a = sub.add_parser("ablate", help="run the variants of an ablation YAML and write the tables")
    a.add_argument("spec")
    a.add_argument("--device", default=None, help="override the spec's device (cpu, cuda)")
    a.add_argument("--max-images", type=int, default=None, help="override the spec's max_images")
    a.set_defaults(func=_ablate)

    from maskrcnn.evaluation.tuning import add_tune_arguments

    t = sub.add_parser("tune", help="sweep score/mask thresholds and min area per class on cached predictions")
    add_tune_arguments(t)
    t.set_defaults(func=_tune)

    lb = sub.add_parser("labels", help="write the ground truth of a dataset split as a label CSV")
    lb.add_argument("--config", required=True)
    lb.add_argument("--split", default="val", choices=("train", "val", "all"))
    lb.add_argument("--out", required=True)
    lb.add_argument("--order", choices=("row", "col"), default="row")
    lb.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    lb.set_defaults(func=_labels)
    return p


def _evaluate(argv) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def main(argv=None) -> int:
    """The exit code of ``evaluate.py argv`` (user errors: one ``error:`` line and 2, see ``maskrcnn.cli``)."""
    return cli.run(_evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
