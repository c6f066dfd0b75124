"""Overlays: ground truth and predictions drawn as outlines on the image, written as PNG with Pillow.

Outlines are computed on the crops (a pixel of a mask whose 4-neighbourhood leaves the mask),
then scattered into one RGB canvas: no full-image mask per instance. Colours come from a palette:
``okabe-ito`` (default; Okabe & Ito's colour-blind-safe set: ground truth sky blue, predictions
vermillion, a pixel on both outlines yellow; the three differ in lightness too, so they stay apart
under every common colour-vision deficiency) or ``classic`` (green, red, yellow). A caption band
under the image names the image, counts the ground-truth and predicted objects and, when both are
given, gives the image's Kaggle score (``maskrcnn.evaluation.kaggle.image_score``), with a legend.

Command line (``maskrcnn.cli.viz``)::

    python -m maskrcnn viz --image X.png [--gt train.csv | --gt <dsb id folder>/masks] \\
        [--pred submission.csv] [--order auto] --out overlay.png
    python -m maskrcnn viz --images DIR --out OUT_DIR [--gt labels.csv | --gt DSB_FOLDER] \\
        [--pred submission.csv | --pred LABEL_IMAGE_FOLDER]          # one <id>.png per image

CSV files may be Sartorius (``id,annotation`` / ``id,predicted``, row-major RLE) or DSB2018
(``ImageId,EncodedPixels``, column-major); ``--order auto`` takes the order from the header.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from maskrcnn.errors import UserError
from maskrcnn.formats.kaggle_csv import ImageTruth, KaggleCsvError, order_for, read_mask_csv
from maskrcnn.structures import Instances, MaskList, Sample

# Okabe & Ito (2008), "Color Universal Design": sky blue, vermillion, yellow.
PALETTES = {
    "okabe-ito": {"gt": (86, 180, 233), "pred": (213, 94, 0), "both": (240, 228, 66)},
    "classic": {"gt": (0, 255, 0), "pred": (255, 40, 40), "both": (255, 255, 0)},
}
DEFAULT_PALETTE = "okabe-ito"
GT_COLOUR = PALETTES[DEFAULT_PALETTE]["gt"]
PRED_COLOUR = PALETTES[DEFAULT_PALETTE]["pred"]
BOTH_COLOUR = PALETTES[DEFAULT_PALETTE]["both"]


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


def _palette(name: str) -> Dict[str, Tuple[int, int, int]]:
    if name not in PALETTES:
        raise ValueError(f"unknown palette {name!r}; choose one of {', '.join(PALETTES)}")
    return PALETTES[name]


def overlay(image: Tensor, gt=None, pred=None, thickness: int = 1, palette: str = DEFAULT_PALETTE) -> np.ndarray:
    """``uint8[H, W, 3]``: ``image (Tensor[C, H, W])`` with outlines of ``gt`` and ``pred`` (Instances | MaskList | None)."""
    colours = _palette(palette)
    img = image.detach().float().cpu()
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    rgb = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    gm, pm = _as_masks(gt), _as_masks(pred)
    g = outline_pixels(gm.to("cpu"), thickness) if gm is not None else None
    p = outline_pixels(pm.to("cpu"), thickness) if pm is not None else None
    if g is not None:
        rgb[g] = torch.tensor(colours["gt"], dtype=torch.uint8)
    if p is not None:
        rgb[p] = torch.tensor(colours["pred"], dtype=torch.uint8)
    if g is not None and p is not None:
        rgb[g & p] = torch.tensor(colours["both"], dtype=torch.uint8)
    return rgb.numpy()


def caption_text(image_id: str, gt=None, pred=None) -> str:
    """``<id>  GT n  pred m  score s``: the counts of what is given, and the image's Kaggle score
    (mean precision over IoU 0.50..0.95) when both are."""
    parts = [str(image_id)]
    gm, pm = _as_masks(gt), _as_masks(pred)
    if gm is not None:
        parts.append(f"GT {len(gm)}")
    if pm is not None:
        parts.append(f"pred {len(pm)}")
    if gm is not None and pm is not None:
        from maskrcnn.evaluation.kaggle import image_score

        parts.append(f"score {image_score(pm.to('cpu'), gm.to('cpu')):.3f}")
    return "   ".join(parts)


def _caption_font(width: int):
    from PIL import ImageFont

    size = int(min(max(width / 32, 11), 20))
    try:
        return ImageFont.load_default(size=size), size
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default(), 11


def _fit(word: str, width: float, draw, font) -> str:
    """``word``, or its start and end around an ellipsis when it is wider than ``width`` pixels
    (DSB2018 ids are 64 hex digits)."""
    if draw.textlength(word, font=font) <= width:
        return word
    keep = len(word)
    while keep > 2:
        keep -= 1
        short = word[: (keep + 1) // 2] + "..." + word[len(word) - keep // 2:]
        if draw.textlength(short, font=font) <= width:
            return short
    return word[:1] + "..."


def add_caption(rgb: np.ndarray, text: str, legend: Sequence[Tuple[str, Tuple[int, int, int]]] = ()) -> np.ndarray:
    """``rgb`` (``uint8[H, W, 3]``) with a dark band below holding ``text`` (white) and a legend (a
    swatch of each colour and its name); the band wraps to as many lines as the image's width
    needs (the image itself is unchanged)."""
    from PIL import Image, ImageDraw

    H, W = rgb.shape[:2]
    font, size = _caption_font(W)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, gap, swatch = max(3, size // 3), size, size
    items = [(_fit(w, W - 2 * pad, probe, font), None) for w in text.split("   ")]
    items += [(name, colour) for name, colour in legend]
    widths = [probe.textlength(w, font=font) + (swatch + pad if c is not None else 0) for w, c in items]
    lines: List[List[int]] = [[]]
    x = pad
    n_text = len(items) - len(legend)
    for k, wl in enumerate(widths):  # greedy wrap of a handful of words; the legend starts a line
        if lines[-1] and (x + wl > W - pad or k == n_text):
            lines.append([])
            x = pad
        lines[-1].append(k)
        x += wl + gap
    line_h = size + pad
    band = Image.new("RGB", (W, len(lines) * line_h + pad), (32, 32, 32))
    d = ImageDraw.Draw(band)
    for row, idx in enumerate(lines):
        x, y = pad, pad + row * line_h
        for k in idx:
            word, colour = items[k]
            if colour is not None:
                d.rectangle((x, y + 1, x + swatch - 2, y + swatch - 1), fill=tuple(colour))
                x += swatch + pad
            d.text((x, y), word, fill=(255, 255, 255), font=font)
            x += probe.textlength(word, font=font) + gap
    return np.concatenate([rgb, np.asarray(band)], axis=0)


def draw_overlay(image: Union[Tensor, str], gt=None, pred=None, path: Optional[str] = None,
                 thickness: int = 1, palette: str = DEFAULT_PALETTE, caption: Optional[str] = None) -> np.ndarray:
    """Draw ``gt`` and ``pred`` outlines (colours of ``palette``) on ``image`` (``Tensor[C, H, W]``
    or a file) into ``path`` (PNG); ``caption`` (e.g. ``caption_text``) adds a band below with a legend.

    Returns the ``uint8`` overlay: ``[H, W, 3]``, or taller with a caption (also when ``path`` is None).
    """
    from maskrcnn.formats.image_files import read_image, write_image

    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    out = overlay(image, gt, pred, thickness, palette)
    if caption is not None:
        colours = _palette(palette)
        legend = [(name, colours[key]) for name, key, given in (("GT", "gt", gt), ("pred", "pred", pred),
                                                                ("both", "both", gt is not None and pred is not None))
                  if given is not None and given is not False]
        out = add_caption(out, caption, legend)
    if path:
        write_image(path, out)
    return out


def save_grid(samples: Sequence[Sample], path: str, preds: Optional[Sequence] = None, ncols: int = 4,
              pad: int = 4) -> np.ndarray:
    """A grid of overlays of a few samples (ground truth, and ``preds[i]`` when given) into ``path``."""
    from maskrcnn.formats.image_files import write_image

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


class MaskSource:
    """The masks of images by id, from what ``--gt`` / ``--pred`` name:

    - a Kaggle CSV file, label file or submission (``maskrcnn.formats.kaggle_csv.read_mask_csv``, read once; RLE order: ``order``, or with ``auto`` the file's
      competition: DSB2018 headers column-major, Sartorius row-major);
    - a DSB2018 folder holding ``<id>/masks/*.png``;
    - a folder of label images ``<id>.png`` (``predict.py --format labels``);
    - for one image (``--image``): a folder of its binary mask PNGs (DSB's ``<id>/masks``).
    """

    def __init__(self, spec: str, order: str = "auto"):
        self.spec = spec
        self.is_csv = os.path.isfile(spec)
        if not self.is_csv and not os.path.isdir(spec):
            raise FileNotFoundError(f"--gt/--pred: no such file or folder: {spec}")
        self._rows: Optional[Dict[str, ImageTruth]] = None
        self.strict = True  # an image id the CSV does not hold is an error (else: no masks, listed in missing)
        self.missing: List[str] = []
        self.order = order
        if self.is_csv and order == "auto":
            self.order = order_for([spec], "auto")

    def masks(self, image_id: str, size: Tuple[int, int]) -> MaskList:
        from maskrcnn.formats.dsb_layout import mask_folder, read_mask_crops

        if self.is_csv:
            return self._csv_masks(image_id, size)
        dsb = mask_folder(self.spec, image_id)
        if os.path.isdir(dsb):
            return read_mask_crops(_png_files(dsb), size)
        for suffix in (".png", ".tif", ".tiff"):  # label images: predict.py --format labels / labels-tif
            label_image = os.path.join(self.spec, image_id + suffix)
            if os.path.isfile(label_image):
                from maskrcnn.formats.label_images import read_label_image

                return read_label_image(label_image)
        files = _png_files(self.spec)  # one image's mask PNGs
        if not files:
            raise UserError(f"no mask PNGs in the folder, nor {image_id}/masks/ or {image_id}.png ({self.spec})")
        return read_mask_crops(files, size)

    def _csv_masks(self, image_id: str, size: Tuple[int, int]) -> MaskList:
        """Masks of ``image_id`` in the CSV; KaggleCsvError for an id the file does not hold (viz would
        draw nothing and look fine) or a declared size other than the image's."""
        from maskrcnn.formats.rle import decode_crops

        if self._rows is None:
            self._rows = read_mask_csv(self.spec)
        rows = self._rows.get(image_id)
        if rows is None and not self.strict:  # a folder's image without objects in a label CSV
            self.missing.append(image_id)
            rows = ImageTruth(image_id, 0, 0)
        if rows is None:
            ids = list(self._rows)[:3]
            raise KaggleCsvError(f"image id {image_id!r} is not in the file (ids there: "
                                 f"{', '.join(map(repr, ids)) or 'none'}{', ...' if len(self._rows) > 3 else ''}; "
                                 f"pass --id) ({self.spec})")
        if rows.height and (rows.height, rows.width) != tuple(size):  # a label file's declared size
            raise KaggleCsvError(f"line {rows.first_line}: image {image_id!r} is "
                                 f"{rows.height}x{rows.width} (HxW) here but the image is {size[0]}x{size[1]} "
                                 f"({self.spec})")
        return decode_crops(rows.rles, size[0], size[1], self.order, source=self.spec, rows=rows.lines)


def _png_files(folder: str) -> List[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(".png"))
