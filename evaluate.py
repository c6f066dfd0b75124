"""Evaluation front end: score submissions, COCO AP, ablations, threshold tuning, label files
(``maskrcnn.cli.evaluate``; installed as ``maskrcnn-evaluate``).

    python evaluate.py score --submission submission.csv --labels train.csv
    python evaluate.py --help
"""
import sys

from maskrcnn.cli.evaluate import build_parser, main  # noqa: F401 (tests and callers use them)

if __name__ == "__main__":
    sys.exit(main())
