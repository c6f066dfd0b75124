"""Write a synthetic cell dataset in a real layout (``maskrcnn.data.synthetic``)::

    python -m maskrcnn synthetic --out DIR [--layout sartorius|dsb2018|coco] [--num-images 48]
"""
from __future__ import annotations

from typing import Optional, Sequence

from maskrcnn import cli
from maskrcnn.data.synthetic import SyntheticCells, write_layout


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The exit code of ``python -m maskrcnn synthetic argv`` (user errors: one ``error:`` line and 2)."""
    return cli.run(_write_synthetic, argv)


def _write_synthetic(argv: Sequence[str]) -> None:
    p = cli.ArgumentParser(prog="python -m maskrcnn synthetic",
                           description="Write a synthetic cell dataset in a real layout.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-images", type=cli.int_at_least(1), default=48, help="how many images")
    p.add_argument("--layout", default="sartorius", choices=["sartorius", "dsb2018", "coco"],
                   help="sartorius: train/<id>.png + train.csv; dsb2018: <id>/images, <id>/masks; coco: images/ + "
                        "annotations.json")
    p.add_argument("--height", type=cli.int_at_least(32), default=128, help="image height in pixels")
    p.add_argument("--width", type=cli.int_at_least(32), default=160, help="image width in pixels")
    p.add_argument("--cells", type=cli.int_at_least(0), nargs=2, default=(6, 24), metavar=("MIN", "MAX"),
                   help="cells per image")
    p.add_argument("--seed", type=int, default=0, help="another seed, other images")
    args = p.parse_args(argv)
    if args.cells[0] > args.cells[1]:
        p.error(f"argument --cells: MIN {args.cells[0]} is above MAX {args.cells[1]}")
    if not args.out:
        p.error("argument --out: an empty folder name")
    ds = SyntheticCells(args.num_images, args.height, args.width, tuple(args.cells), args.seed)
    write_layout(ds, args.out, args.layout)
    print(f"wrote {len(ds)} synthetic images to {args.out} ({args.layout} layout)")

