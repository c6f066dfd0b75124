"""``python -m maskrcnn viz``: ground-truth and predicted outlines drawn on one image or a folder of
images (``maskrcnn.viz`` draws them and reads the masks).
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence, Tuple

from maskrcnn import cli
from maskrcnn.errors import UserError
from maskrcnn.viz import DEFAULT_PALETTE, PALETTES, MaskSource, caption_text, draw_overlay


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The exit code of ``python -m maskrcnn viz argv`` (user errors: one ``error:`` line and 2)."""
    return cli.run(_viz, argv)


def build_parser():
    p = cli.ArgumentParser(prog="python -m maskrcnn viz",
                           description="Draw ground-truth and predicted outlines on images (one image, or a folder "
                                       "with --images), with a caption: id, counts, the image's Kaggle score.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="one image file")
    src.add_argument("--images", help="a folder of images (flat, or DSB2018 <id>/images/<id>.png): one overlay "
                     "<id>.png per image in the --out folder")
    p.add_argument("--gt", default="", help="labels CSV (id,annotation or ImageId,EncodedPixels), a DSB2018 folder "
                   "(<id>/masks/), a folder of label images <id>.png or <id>.tif, or with --image a folder of that "
                   "image's mask PNGs")
    p.add_argument("--pred", default="", help="submission CSV (id,predicted or ImageId,EncodedPixels), or a folder of "
                   "label images <id>.png or <id>.tif (predict.py --format labels, labels-tif)")
    p.add_argument("--id", default="", help="--image: its id in the csv files (default: the image's file stem)")
    p.add_argument("--order", default="auto", choices=["auto", "row", "col"],
                   help="RLE pixel order of the CSVs; auto: col for DSB2018 headers, row otherwise")
    p.add_argument("--thickness", type=cli.int_at_least(1), default=1, help="outline width in pixels")
    p.add_argument("--palette", default=DEFAULT_PALETTE, choices=list(PALETTES),
                   help="okabe-ito: colour-blind safe (GT sky blue, pred vermillion, both yellow); "
                        "classic: green, red, yellow")
    p.add_argument("--no-caption", action="store_true", help="the overlay only, without the caption band")
    p.add_argument("--limit", type=int, default=0, help="--images: only the first N images (0: all)")
    p.add_argument("--no-progress", action="store_true", help="--images: a line every 30 s instead of a progress bar")
    p.add_argument("--out", default=None, help="output PNG (default: <image stem>_overlay.png); with --images a "
                   "folder (default: overlays)")
    return p


def _draw_one(path: str, image_id: str, gt_src: Optional[MaskSource], pred_src: Optional[MaskSource], out: str,
              args) -> Tuple[int, int]:
    from maskrcnn.formats.image_files import read_image

    image = read_image(path)
    size = (int(image.shape[1]), int(image.shape[2]))
    gt = gt_src.masks(image_id, size) if gt_src else None
    pred = pred_src.masks(image_id, size) if pred_src else None
    caption = None if args.no_caption else caption_text(image_id, gt, pred)
    draw_overlay(image, gt, pred, out, args.thickness, args.palette, caption)
    return (-1 if gt is None else len(gt)), (-1 if pred is None else len(pred))


def _viz(argv: Sequence[str]) -> None:
    args = build_parser().parse_args(argv)
    gt_src = MaskSource(args.gt, args.order) if args.gt else None
    pred_src = MaskSource(args.pred, args.order) if args.pred else None
    from maskrcnn.fileio import check_not_input, check_output_path

    inputs = [args.image or args.images, args.gt, args.pred]
    if args.image:
        image_id = args.id or os.path.splitext(os.path.basename(args.image))[0]
        out = f"{os.path.splitext(os.path.basename(args.image))[0]}_overlay.png" if args.out is None else args.out
        check_output_path(out, "--out")
        check_not_input(out, inputs, "--out")
        n_gt, n_pred = _draw_one(args.image, image_id, gt_src, pred_src, out, args)
        print(f"wrote {out} (gt {max(n_gt, 0)} objects, pred {max(n_pred, 0)} objects)")
        return
    from maskrcnn.data.image_folders import list_image_files
    from maskrcnn.progress import track

    if args.id:
        raise UserError("--id names one image: use it with --image, not --images")
    paths = list_image_files(args.images)
    paths = paths[:args.limit] if args.limit > 0 else paths
    out_dir = "overlays" if args.out is None else args.out
    if not out_dir:
        raise UserError("--out: an empty folder name")
    if os.path.isfile(out_dir):
        raise UserError(f"--images writes a folder of overlays, but --out is a file ({out_dir})")
    check_not_input(out_dir, inputs, "--out", folder=True)
    for src in (gt_src, pred_src):
        if src is not None:
            src.strict = False
    for path in track(paths, "overlays", mode="lines" if args.no_progress else "bar"):
        image_id = os.path.splitext(os.path.basename(path))[0]
        _draw_one(path, image_id, gt_src, pred_src, os.path.join(out_dir, image_id + ".png"), args)
    for flag, src in (("--gt", gt_src), ("--pred", pred_src)):
        if src is not None and src.missing:
            shown = ", ".join(src.missing[:5]) + (f", ... ({len(src.missing)} in all)" if len(src.missing) > 5 else "")
            print(f"warning: {len(src.missing)} image(s) not in the {flag} file, drawn without its masks: {shown} "
                  f"({src.spec})", file=sys.stderr)
    print(f"wrote {len(paths)} overlays to {out_dir}/")

