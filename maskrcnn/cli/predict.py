"""``predict.py``'s command line (also ``maskrcnn-predict``): its arguments; the run itself is
``maskrcnn.inference.predict_run`` (list, check, predict, write; see its docstring)."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from maskrcnn import cli
from maskrcnn.config import PREDICT_MODEL_KEYS
from maskrcnn.inference.input_control import NORMALIZE_CHOICES
from maskrcnn.inference.outputs import DEFAULT_OUT, FORMATS
from maskrcnn.inference.predict_run import AMP_CHOICES, run_predict


def _input_output_options(p: argparse.ArgumentParser) -> None:
    """--weights, --images, --format, --out, --coco-gt, --config."""
    p.add_argument("--weights", nargs="+", required=True,
                   help="checkpoint(s) or model zoo name(s), e.g. nuclei (MODEL_ZOO.md); several = an ensemble")
    p.add_argument("--images", required=True, help="folder of .png/.tif images (ids = file names), or a DSB2018 "
                   "folder of <id>/images/<id>.png")
    p.add_argument("--format", choices=FORMATS, default="csv",
                   help="csv: Kaggle submission id,predicted; dsb: DSB2018 submission ImageId,EncodedPixels "
                        "(column-major); coco: COCO results json; labels: a folder of 16-bit label PNGs <id>.png; "
                        "labels-tif: 16-bit label TIFFs <id>.tif; geojson: outlines <id>.geojson (QuPath); "
                        "imagej-roi: <id>.zip of ImageJ polygon ROIs (Fiji)")
    p.add_argument("--out", default=None, help="file to write, a folder for --format labels, labels-tif, geojson, "
                   f"imagej-roi (default: {DEFAULT_OUT['csv']}; coco: {DEFAULT_OUT['coco']}; labels, labels-tif: "
                   f"{DEFAULT_OUT['labels']}/; geojson: {DEFAULT_OUT['geojson']}/; imagej-roi: {DEFAULT_OUT['imagej-roi']}/)")
    p.add_argument("--coco-gt", default=None, metavar="COCO.json",
                   help="--format coco: take image ids (by file name) and category ids from this COCO json "
                        "(default: image ids 1..N in input order, category_id = class + 1)")
    p.add_argument("--config", default=None, help="YAML config for bare state dicts (or to override the checkpoints')")


def _test_options(p: argparse.ArgumentParser) -> None:
    """--tta, --thresholds, --set, --normalize, --diameter | --scale, --min-views, --merge-iou."""
    p.add_argument("--tta", default=None, help="comma-separated views, e.g. hflip,vflip,rot90,scale=1.25 or d4; "
                   "none: no TTA (default: test.tta of the first checkpoint's config)")
    p.add_argument("--thresholds", default=None, help="YAML of test.* fields (tuned thresholds) overriding the config "
                   "(default: A.thresholds.yaml beside the first weights A.pth, when there is one)")
    cli.add_set_option(p, "test.* overrides, e.g. test.min_area=[75,150,75] test.fill_holes=true, and the model "
                       "keys that act only at inference: " + ", ".join(PREDICT_MODEL_KEYS)
                       + " (e.g. the detection caps: model.roi_heads.detections_per_image=3000)")
    p.add_argument("--normalize", choices=NORMALIZE_CHOICES, default="model",
                   help="intensity normalisation: model = as the model was trained (and 16-bit images "
                        "percentile-normalised for a model trained on 8-bit data); percentile = every image by its "
                        "model.input.percentile_low/high; none = as read (8-bit / 255, 16-bit / 65535)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--diameter", type=float, default=None, metavar="PIXELS",
                      help="typical object diameter in your images: resized so it matches the objects the model "
                           "learnt (model.input.object_diameter; scale x object_diameter / PIXELS)")
    size.add_argument("--scale", type=float, default=None, metavar="FACTOR",
                      help="resize the images by FACTOR x the model's model.input.scale (0.5: objects twice "
                           "as large as the training data's)")
    p.add_argument("--min-views", type=cli.int_at_least(1), default=None, help="default: test.tta_min_views")
    p.add_argument("--merge-iou", type=float, default=None, help="default: test.merge_iou")


def _tiling_options(p: argparse.ArgumentParser) -> None:
    """--tile | --no-tile, --tile-overlap."""
    tiling = p.add_mutually_exclusive_group()
    tiling.add_argument("--tile", type=int, default=None, metavar="PIXELS",
                        help="predict images larger than this in overlapping tiles of this size, stitched "
                             "(test.tile_size; 0: whole images, as --no-tile). Default (test.tile_size 0): "
                             "automatic, from the model's config: tiles of max(2 x training crop, 1024 / "
                             "model.input.scale) px for images longer than 3 tiles, and for smaller ones "
                             "longer than a tile whose whole-image prediction reached a detection cap")
    tiling.add_argument("--no-tile", action="store_true", help="never tile: every image whole (no automatic tiling)")
    p.add_argument("--tile-overlap", type=int, default=None, metavar="PIXELS",
                   help="pixels neighbouring tiles share, at least the largest cell's size (default: test.tile_overlap)")


def _run_options(p: argparse.ArgumentParser) -> None:
    """--order, --device, --batch-size, --amp, --limit, --strict, --no-progress."""
    p.add_argument("--order", choices=("row", "col"), default=None,
                   help="RLE pixel order of --format csv (default: row, as Sartorius; dsb is always col)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=cli.int_at_least(1), default=1, help="views per model call")
    p.add_argument("--amp", choices=AMP_CHOICES, default="none", help="autocast the models (GPU)")
    p.add_argument("--limit", type=cli.int_at_least(0), default=0, help="only the first N images (0: all)")
    p.add_argument("--strict", action="store_true",
                   help="stop at an image that cannot be read (default: an empty row, a warning, exit code 3)")
    p.add_argument("--no-progress", action="store_true",
                   help="a line every 30 s (images done, rate, ETA) instead of a progress bar (the default "
                        "when stderr is not a terminal: logs, kernels)")


def build_parser() -> argparse.ArgumentParser:
    """predict.py's parser (also the base of ``python -m maskrcnn scale collection``'s, and what
    ``maskrcnn.load_model`` parses its arguments with)."""
    p = cli.ArgumentParser(
        prog=cli.program("predict.py"),
        description="Predict cell instance masks for a folder of images and write a Kaggle submission.csv "
                    "(or DSB2018 CSV, COCO results json, 16-bit label images: --format).",
    )
    _input_output_options(p)
    _test_options(p)
    _tiling_options(p)
    _run_options(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The exit code of ``predict.py argv`` (user errors: one ``error:`` line and 2, see ``maskrcnn.cli``;
    3 when the submission was written but some images could not be read)."""
    return cli.run(lambda args: run_predict(build_parser().parse_args(args)), argv)
