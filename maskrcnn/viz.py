"""Overlays: ground truth and predictions drawn as outlines on the image, written as PNG with Pillow.

Outlines are computed on the crops (a pixel of a mask whose 4-neighbourhood leaves the mask),
then scattered into one RGB canvas: no full-image mask per instance. Ground truth is green,
predictions red (a pixel on both outlines is yellow).

Command line::

    python -m maskrcnn.viz --image X.png [--gt train.csv | --gt <dsb id folder>/masks] \\
        [--pred submission.csv] [--order row] --out overlay.png
"""
from __future__ import annotations

import math
import os
import sys
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from maskrcnn import cli
from maskrcnn.structures import Instances, MaskList, Sample

GT_COLOUR = (0, 255, 0)
PRED_COLOUR = (255, 40, 40)
BOTH_COLOUR = (255, 255, 0)


def outline_pixels(masks: MaskList, thickness: int = 1) -> Tensor:
    """``Tensor[H, W] bool``: pixels on the boundary of any mask (soft masks thresholded at 0.5).

    A mask pixel is on the boundary when a pixel within ``thickness - 1`` steps of it (square
    neighbourhood) has a 4-neighbour outside the mask.
    """
    H, W = masks.image_size
    out = torch.zeros((H, W), dtype=torch.bool)
    if len(masks) == 0:
        return out
    m = masks.threshold(0.5)
    c = m.crops.float()[:, None]
    # Erosion with a cross: min over the pixel and its 4 neighbours (outside the crop is background).
    padded = F.pad(c, (1, 1, 1, 1))
    eroded = torch.minimum(torch.minimum(padded[..., 1:-1, 1:-1], padded[..., :-2, 1:-1]),
                           torch.minimum(padded[..., 2:, 1:-1], torch.minimum(padded[..., 1:-1, :-2], padded[..., 1:-1, 2:])))
    edge = (c > 0) & (eroded == 0)
    if thickness > 1:
        k = 2 * (thickness - 1) + 1
        edge = (F.max_pool2d(edge.float(), k, stride=1, padding=thickness - 1) > 0) & (c > 0)
    n, y, x = edge[:, 0].nonzero(as_tuple=True)
    gy = m.origins[n, 1] + y
    gx = m.origins[n, 0] + x
    ok = (gy >= 0) & (gy < H) & (gx >= 0) & (gx < W)
    out[gy[ok], gx[ok]] = True
    return out


def _as_masks(obj) -> Optional[MaskList]:
    if obj is None:
        return None
    if isinstance(obj, Instances):
        return obj.masks
    if isinstance(obj, MaskList):
        return obj
    raise TypeError(f"expected Instances, MaskList or None, got {type(obj).__name__}")


def overlay(image: Tensor, gt=None, pred=None, thickness: int = 1) -> np.ndarray:
    """``uint8[H, W, 3]``: ``image (Tensor[C, H, W])`` with outlines of ``gt`` and ``pred`` (Instances | MaskList | None)."""
    img = image.detach().float().cpu()
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    rgb = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    gm, pm = _as_masks(gt), _as_masks(pred)
    g = outline_pixels(gm.to("cpu"), thickness) if gm is not None else None
    p = outline_pixels(pm.to("cpu"), thickness) if pm is not None else None
    if g is not None:
        rgb[g] = torch.tensor(GT_COLOUR, dtype=torch.uint8)
    if p is not None:
        rgb[p] = torch.tensor(PRED_COLOUR, dtype=torch.uint8)
    if g is not None and p is not None:
        rgb[g & p] = torch.tensor(BOTH_COLOUR, dtype=torch.uint8)
    return rgb.numpy()


def draw_overlay(image: Union[Tensor, str], gt=None, pred=None, path: Optional[str] = None,
                 thickness: int = 1) -> np.ndarray:
    """Draw ``gt`` (green) and ``pred`` (red) outlines on ``image`` (``Tensor[C, H, W]`` or a file) into ``path`` (PNG).

    Returns the ``uint8[H, W, 3]`` overlay (also when ``path`` is None).
    """
    from maskrcnn.data.images import read_image, write_image

    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    out = overlay(image, gt, pred, thickness)
    if path:
        write_image(path, out)
    return out


def save_grid(samples: Sequence[Sample], path: str, preds: Optional[Sequence] = None, ncols: int = 4,
              pad: int = 4) -> np.ndarray:
    """A grid of overlays of a few samples (ground truth, and ``preds[i]`` when given) into ``path``."""
    from maskrcnn.data.images import write_image

    if not samples:
        raise ValueError("save_grid needs at least one sample")
    tiles = [overlay(s.image, s.instances, None if preds is None else preds[i]) for i, s in enumerate(samples)]
    ncols = max(1, min(ncols, len(tiles)))
    nrows = math.ceil(len(tiles) / ncols)
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    grid = np.full((nrows * (th + pad) + pad, ncols * (tw + pad) + pad, 3), 255, dtype=np.uint8)
    for k, t in enumerate(tiles):  # one paste per tile
        r, c = divmod(k, ncols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        grid[y:y + t.shape[0], x:x + t.shape[1]] = t
    write_image(path, grid)
    return grid


def _masks_from_csv(path: str, image_id: str, size, order: str, column: str) -> MaskList:
    import csv

    from maskrcnn.data.rle import decode_crops

    rles, lines = [], []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if "id" not in header or column not in header:
            alt = "predicted" if column == "annotation" else "annotation"
            if alt not in header:
                raise ValueError(f"{path}: needs columns id and {column} (or {alt}); the header is {header}")
            column = alt
        ci, ca = header.index("id"), header.index(column)
        for line, row in enumerate(reader, start=2):
            if row and row[ci] == image_id and row[ca].strip():
                rles.append(row[ca])
                lines.append(line)
    return decode_crops(rles, size[0], size[1], order, source=path, rows=lines)


def _load_masks(spec: str, image_id: str, size, order: str, column: str) -> MaskList:
    if os.path.isdir(spec):
        from maskrcnn.data.dsb2018 import read_mask_crops

        files = sorted(os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(".png"))
        return read_mask_crops(files, size)
    return _masks_from_csv(spec, image_id, size, order, column)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The exit code of ``python -m maskrcnn.viz argv`` (user errors: one ``error:`` line and 2)."""
    return cli.run(_viz, argv)


def _viz(argv: Sequence[str]) -> None:
    from maskrcnn.data.images import read_image

    p = cli.ArgumentParser(prog="python -m maskrcnn.viz",
                           description="Draw ground-truth (green) and predicted (red) outlines on an image.")
    p.add_argument("--image", required=True)
    p.add_argument("--gt", default="", help="labels csv (id, annotation) or a folder of mask PNGs")
    p.add_argument("--pred", default="", help="submission csv (id, predicted) or a folder of mask PNGs")
    p.add_argument("--id", default="", help="image id in the csv files (default: the image's file stem)")
    p.add_argument("--order", default="row", choices=["row", "col"], help="RLE pixel order")
    p.add_argument("--thickness", type=int, default=1)
    p.add_argument("--out", default="", help="output PNG (default: <image stem>_overlay.png)")
    args = p.parse_args(argv)
    image = read_image(args.image)
    size = (int(image.shape[1]), int(image.shape[2]))
    image_id = args.id or os.path.splitext(os.path.basename(args.image))[0]
    gt = _load_masks(args.gt, image_id, size, args.order, "annotation") if args.gt else None
    pred = _load_masks(args.pred, image_id, size, args.order, "predicted") if args.pred else None
    out = args.out or f"{os.path.splitext(os.path.basename(args.image))[0]}_overlay.png"
    draw_overlay(image, gt, pred, out, args.thickness)
    print(f"wrote {out} (gt {0 if gt is None else len(gt)} objects, pred {0 if pred is None else len(pred)} objects)")


if __name__ == "__main__":
    sys.exit(main())
