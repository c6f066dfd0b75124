"""Write a dataset as one compact ``.npz`` cache (``maskrcnn.formats.dataset_cache``)::

    python -m maskrcnn make_cache --format dsb2018 --root ../shared/data/dsb2018/stage1_train --out dsb2018.npz
"""
from __future__ import annotations

import os
import time
from typing import Optional, Sequence

from maskrcnn import cli
from maskrcnn.config import DataConfig
from maskrcnn.formats.dataset_cache import IMAGE_CODECS, write_cache
from maskrcnn.data.loader import build_reader
from maskrcnn.fileio import check_not_input, check_output_path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The exit code of ``python -m maskrcnn make_cache argv`` (user errors: one ``error:`` line and 2)."""
    return cli.run(_make_cache, argv)


def _make_cache(argv: Sequence[str]) -> None:
    p = cli.ArgumentParser(prog="python -m maskrcnn make_cache",
                           description="Write a compact single-file cache (.npz) of a dataset.")
    p.add_argument("--format", required=True, choices=["dsb2018", "sartorius", "coco", "label_folders", "synthetic", "cache"],
                   help="the dataset's layout (as data.format)")
    p.add_argument("--root", default="", help="dataset folder (as data.root)")
    p.add_argument("--ann-file", default="", help="annotation file (as data.ann_file; coco, sartorius)")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--image-codec", default="webp", choices=IMAGE_CODECS, help="lossless codec for 8-bit images")
    p.add_argument("--workers", type=cli.int_at_least(0), default=min(8, os.cpu_count() or 1),
                   help="processes encoding images (default: the CPUs, at most 8; 0: in this process)")
    args = p.parse_args(argv)
    check_output_path(args.out, "--out")  # before reading the whole dataset
    check_not_input(args.out, [args.root, args.ann_file], "--out")
    reader = build_reader(DataConfig(format=args.format, root=args.root, ann_file=args.ann_file))
    t = time.time()
    summary = write_cache(reader, args.out, image_codec=args.image_codec, progress=True, workers=args.workers)
    print(f"wrote {args.out}: {summary['images']} images, {summary['instances']} instances, "
          f"{summary['file_bytes'] / 1e6:.2f} MB (images {summary['image_bytes'] / 1e6:.2f} MB) "
          f"in {time.time() - t:.0f} s")

