"""Procedural microscopy-like images with exact instance masks: the built-in default dataset.

Each image holds one cell type (as in Sartorius), drawn from the image's own seed:

- ``cort``: small round cells with a bright centre (cortical neurons);
- ``shsy5y``: elongated bodies with one or two thin neurites (neuroblastoma cells);
- ``astro``: large, flat, irregular, dimmer and textured cells (astrocytes).

Cells touch and sometimes overlap (their ground-truth masks then overlap, as in Sartorius). The
background is uneven (gradient + smooth blobs), cells have a dark halo (phase contrast), and the
image gets Gaussian noise. Images are grayscale, quantised to 8 bit so that writing them as PNG
and reading them back gives the same tensors.

Image ``i`` is generated lazily from ``(seed, i)`` only, so a dataset is deterministic, costs no
memory, and each image can be made in a worker. Rendering is vectorised over cells (all cells of an
image are evaluated on ``[N, S, S]`` crops).

Command line (``maskrcnn.cli.synthetic``): write a synthetic dataset in a real layout, so that readers are
exercised end to end::

    python -m maskrcnn synthetic --out DIR --num-images N --layout sartorius|dsb2018|coco
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from maskrcnn.structures import Instances, MaskList, Sample

CELL_TYPES = ("shsy5y", "astro", "cort")  # Sartorius' class order; synthetic shapes mimic each


class SyntheticCells:
    """A lazily generated dataset of ``num_images`` synthetic images.

    Args:
        num_images: dataset length.
        height, width: image size.
        cells_per_image: ``(min, max)`` cells requested per image (a crowded image may place fewer;
            the minimum is always placed at the default size).
        seed: the dataset seed; image ``i`` depends on ``(seed, i)`` only.
        class_agnostic: one class ``"cell"`` instead of the three cell types.
        classes: explicit class order (names from ``CELL_TYPES``); empty = ``CELL_TYPES``.
    """

    def __init__(self, num_images: int = 48, height: int = 128, width: int = 160,
                 cells_per_image: Tuple[int, int] = (6, 24), seed: int = 0, class_agnostic: bool = False,
                 classes: Sequence[str] = ()):
        if num_images < 0:
            raise ValueError(f"synthetic num_images must be >= 0, got {num_images}")
        if height < 32 or width < 32:
            raise ValueError(f"synthetic images must be at least 32x32, got {height}x{width}")
        lo, hi = int(cells_per_image[0]), int(cells_per_image[1])
        if lo < 0 or hi < lo:
            raise ValueError(f"synthetic cells_per_image must be (min, max) with 0 <= min <= max, got {cells_per_image}")
        self.num_images = int(num_images)
        self.height, self.width = int(height), int(width)
        self.cells_per_image = (lo, hi)
        self.seed = int(seed)
        self.class_agnostic = bool(class_agnostic)
        if class_agnostic:
            self.class_names = ("cell",)
        else:
            self.class_names = tuple(classes) if classes else CELL_TYPES
            unknown = [c for c in self.class_names if c not in CELL_TYPES]
            if unknown or len(set(self.class_names)) != len(CELL_TYPES):
                raise ValueError(f"synthetic classes must be an ordering of {CELL_TYPES}, got {tuple(classes)}")
        self.image_ids = [f"synth{self.seed:04d}_{i:05d}" for i in range(self.num_images)]

    def __len__(self) -> int:
        return self.num_images

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(index), 0x5EED])

    def cell_type(self, index: int) -> str:
        """The cell type of image ``index`` (its first random draw, so this is cheap)."""
        return CELL_TYPES[int(self._rng(index).integers(len(CELL_TYPES)))]

    def strata(self) -> list:
        """Split strata: the cell type of each image."""
        return [self.cell_type(i) for i in range(self.num_images)]

    def load(self, index: int) -> Sample:
        """Generate image ``index``: a ``Sample`` with a ``[1, H, W]`` image and bool crop masks."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"synthetic index {index} out of range [0, {self.num_images})")
        rng = self._rng(index)
        kind = CELL_TYPES[int(rng.integers(len(CELL_TYPES)))]
        image, masks = render_image(rng, kind, self.height, self.width, self.cells_per_image)
        label = 0 if self.class_agnostic else self.class_names.index(kind)
        labels = torch.full((len(masks),), label, dtype=torch.long)
        inst = Instances((self.height, self.width), masks.tight_boxes(), labels, None, masks)
        meta = {"cell_type": kind, "source": f"synthetic(seed={self.seed}, index={index})",
                "class_names": self.class_names}
        return Sample(image, inst, self.image_ids[index], meta)


# ------------------------------------------------------------------------- rendering
def _place(rng: np.random.Generator, n_want: int, sizes: np.ndarray, height: int, width: int,
           margin: float) -> np.ndarray:
    """Greedy placement of up to ``n_want`` cells among candidates; returns accepted candidate indices.

    A candidate is kept when its centre is at least ``f * (r_i + r_j)`` from every kept centre,
    ``f`` drawn per candidate in [0.75, 1.05]: most cells are apart or touching, some overlap a little.
    """
    k = sizes.shape[0]
    cx = rng.uniform(margin, width - margin, k)
    cy = rng.uniform(margin, height - margin, k)
    f = rng.uniform(0.75, 1.05, k)
    d = np.hypot(cx[:, None] - cx[None], cy[:, None] - cy[None])
    need = f[:, None] * (sizes[:, None] + sizes[None])
    ok_pair = d >= need  # [k, k]
    kept = np.zeros(k, dtype=bool)
    order = []
    for i in range(k):  # greedy over a few dozen candidates (scalar work, not per pixel)
        if len(order) >= n_want:
            break
        if not (kept & ~ok_pair[i]).any():
            kept[i] = True
            order.append(i)
    return np.array(order, dtype=np.int64), cx, cy


# Per cell type: ranges of the long semi-axis ``a`` (times the image's scale), of the short one ``b``
# (``b_of_a``: a fraction of ``a``; else pixels times the scale), of the two harmonics' amplitudes,
# the neurites per cell (``[lo, hi)``; None: none) and the contrast.
_SHAPES = {
    "cort": dict(a=(4.5, 7.5), b=(0.8, 1.0), b_of_a=True, harm=(0.0, 0.08), neurites=None, contrast=(0.30, 0.42)),
    "shsy5y": dict(a=(7.0, 11.0), b=(3.2, 4.8), b_of_a=False, harm=(0.0, 0.06), neurites=(1, 3), contrast=(0.28, 0.40)),
    "astro": dict(a=(10.0, 15.0), b=(0.6, 0.95), b_of_a=True, harm=(0.05, 0.16), neurites=None, contrast=(0.20, 0.30)),
}


def _shape_params(rng: np.random.Generator, kind: str, k: int, scale: float):
    """Per-candidate shape parameters: semi-axes a >= b, rotation, harmonics, neurites, contrast."""
    if kind not in _SHAPES:
        raise ValueError(f"unknown synthetic cell type {kind!r}; expected one of {CELL_TYPES}")
    p = _SHAPES[kind]
    a = rng.uniform(*p["a"], k) * scale
    b = a * rng.uniform(*p["b"], k) if p["b_of_a"] else rng.uniform(*p["b"], k) * scale
    harm = rng.uniform(*p["harm"], (k, 2))
    n_neurites = np.zeros(k, dtype=np.int64) if p["neurites"] is None else rng.integers(*p["neurites"], k)
    contrast = rng.uniform(*p["contrast"], k)
    alpha = rng.uniform(0, np.pi, k)
    phase = rng.uniform(0, 2 * np.pi, (k, 2))
    # Neurites leave from the two ends of the long axis, with some angular spread.
    n_len = rng.uniform(7.0, 14.0, (k, 2)) * scale
    n_ang = alpha[:, None] + np.array([0.0, np.pi])[None] + rng.uniform(-0.5, 0.5, (k, 2))
    n_width = rng.uniform(0.9, 1.4, (k, 2))
    n_on = np.arange(2)[None] < n_neurites[:, None]  # [k, 2]
    return a, b, alpha, harm, phase, n_len, n_ang, n_width, n_on, contrast


def _cell_shapes(cx, cy, a, b, alpha, harm, phase, n_len, n_ang, n_width, n_on):
    """Each cell's shape on a square crop around it: ``(mask, body, rho, limit)`` bool/float64
    ``[n, S, S]`` (cell, body without neurites, normalised radius, the body's outline at that angle)
    and the crops' integer origins ``ox, oy`` (int64[n])."""
    extent = a * (1 + harm.sum(1)) + np.where(n_on, n_len, 0).max(1) + 4  # per-cell reach from centre
    half = int(np.ceil(extent.max()))
    S = 2 * half + 1
    ox = np.floor(cx).astype(np.int64) - half  # crop origins
    oy = np.floor(cy).astype(np.int64) - half
    # Pixel-centre coordinates of every crop pixel relative to each cell's centre: [n, S, S].
    grid = np.arange(S, dtype=np.float64)
    dx = (ox[:, None, None] + grid[None, None, :] + 0.5) - cx[:, None, None]
    dy = (oy[:, None, None] + grid[None, :, None] + 0.5) - cy[:, None, None]
    ca, sa = np.cos(alpha)[:, None, None], np.sin(alpha)[:, None, None]
    u = dx * ca + dy * sa
    v = -dx * sa + dy * ca
    un, vn = u / a[:, None, None], v / b[:, None, None]
    rho = np.hypot(un, vn)
    theta = np.arctan2(vn, un)
    limit = 1.0 + harm[:, 0, None, None] * np.cos(2 * theta + phase[:, 0, None, None]) \
        + harm[:, 1, None, None] * np.cos(3 * theta + phase[:, 1, None, None])
    body = rho < limit
    # Neurites: pixels within n_width of a segment from the body's end outwards.
    start_r = a[:, None] * 0.8
    sx = np.cos(alpha)[:, None] * start_r * np.array([1.0, -1.0])[None]
    sy = np.sin(alpha)[:, None] * start_r * np.array([1.0, -1.0])[None]
    tx, ty = np.cos(n_ang), np.sin(n_ang)
    px = dx[:, None] - sx[:, :, None, None]  # [n, 2, S, S]
    py = dy[:, None] - sy[:, :, None, None]
    t = np.clip(px * tx[:, :, None, None] + py * ty[:, :, None, None], 0, n_len[:, :, None, None])
    dist = np.hypot(px - t * tx[:, :, None, None], py - t * ty[:, :, None, None])
    neurite = ((dist < n_width[:, :, None, None]) & n_on[:, :, None, None]).any(1)
    return body | neurite, body, rho, limit, ox, oy


def render_image(rng: np.random.Generator, kind: str, height: int, width: int,
                 cells_per_image: Tuple[int, int]) -> Tuple[torch.Tensor, MaskList]:
    """Render one image of cell type ``kind``: ``(image Tensor[1, H, W] float32, bool MaskList)``."""
    lo, hi = cells_per_image
    n_want = int(rng.integers(lo, hi + 1))
    scale = float(np.clip(np.sqrt(height * width / (128 * 160)), 1.0, 2.0)) ** 0.5
    k = max(4 * n_want, 8)
    a, b, alpha, harm, phase, n_len, n_ang, n_width, n_on, contrast = _shape_params(rng, kind, k, scale)
    # Size used for spacing: the body radius (neurites may cross neighbours, as in real cultures).
    sizes = a * 0.5 + b * 0.5
    keep, cx, cy = _place(rng, n_want, sizes, height, width, margin=4.0)
    n = keep.size
    image_bg = _background(rng, height, width)
    if n == 0:
        image = _finish(rng, image_bg)
        return image, MaskList.empty((height, width))
    sel = lambda v: v[keep]  # noqa: E731 - local shorthand
    a, b, alpha, harm, phase = sel(a), sel(b), sel(alpha), sel(harm), sel(phase)
    n_len, n_ang, n_width, n_on, contrast = sel(n_len), sel(n_ang), sel(n_width), sel(n_on), sel(contrast)
    cx, cy = cx[keep], cy[keep]

    mask, body, rho, limit, ox, oy = _cell_shapes(cx, cy, a, b, alpha, harm, phase, n_len, n_ang, n_width, n_on)
    S = mask.shape[-1]

    # Keep only the part inside the image; drop cells that show fewer than 12 pixels.
    ys = oy[:, None] + np.arange(S)[None]
    xs = ox[:, None] + np.arange(S)[None]
    inside = ((ys >= 0) & (ys < height))[:, :, None] & ((xs >= 0) & (xs < width))[:, None, :]
    mask &= inside
    visible = mask.reshape(n, -1).sum(1) >= 12
    mask, rho, limit, body = mask[visible], rho[visible], limit[visible], body[visible]
    contrast, ox, oy = contrast[visible], ox[visible], oy[visible]
    n = mask.shape[0]

    # Intensity inside each cell: brighter centre (nucleus-like), dimmer neurites, fine texture.
    r_rel = np.clip(rho / limit, 0, 1)
    profile = np.where(body, 0.75 + 0.25 * (1 - r_rel ** 2), 0.6)
    if kind == "astro":
        profile = profile * (0.85 + 0.15 * rng.random(profile.shape))
    value = contrast[:, None, None] * profile
    mask_t = torch.from_numpy(mask)
    # Halo: a ring two pixels wide just outside each cell, darker than the background.
    dil = F.max_pool2d(mask_t[:, None].float(), 5, stride=1, padding=2)[:, 0] > 0
    halo = (dil & ~mask_t).numpy() & inside[visible]
    cells = np.zeros((height, width), dtype=np.float64)
    covered = np.zeros((height, width), dtype=bool)
    halos = np.zeros((height, width), dtype=np.float64)
    ni, yi, xi = np.nonzero(mask)
    gy, gx = oy[ni] + yi, ox[ni] + xi
    np.maximum.at(cells, (gy, gx), value[ni, yi, xi])  # overlaps: the brighter cell shows
    covered[gy, gx] = True
    hi_, hy, hx = np.nonzero(halo)
    np.add.at(halos, (oy[hi_] + hy, ox[hi_] + hx), 0.09)
    base = image_bg - np.minimum(halos, 0.14)
    image = np.where(covered, image_bg + cells, base)
    image = _finish(rng, image)
    masks = MaskList(mask_t, torch.from_numpy(np.stack([ox, oy], 1)), (height, width)).compact(pad=1)
    return image, masks


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Uneven illumination: a base level, a linear gradient and smooth blobs (bilinear-upsampled noise)."""
    base = rng.uniform(0.28, 0.42)
    gx, gy = rng.uniform(-0.08, 0.08, 2)
    yy = np.linspace(-0.5, 0.5, height)[:, None]
    xx = np.linspace(-0.5, 0.5, width)[None, :]
    coarse = torch.from_numpy(rng.normal(0, 0.03, (1, 1, 4, 5)))
    blobs = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0, 0].numpy()
    return base + gx * xx + gy * yy + blobs


def _finish(rng: np.random.Generator, image: np.ndarray) -> torch.Tensor:
    """Add sensor noise, clip to [0, 1] and quantise to 8 bit (so a PNG round trip is exact)."""
    noise = rng.normal(0, rng.uniform(0.015, 0.03), image.shape)
    img = np.clip(image + noise, 0, 1)
    img = np.round(img * 255.0) / 255.0
    return torch.from_numpy(img.astype(np.float32))[None]


# ------------------------------------------------------------------------- writers
def write_layout(dataset: SyntheticCells, out: str, layout: str = "sartorius") -> None:
    """Write ``dataset`` to ``out`` in a real on-disk layout.

    - ``sartorius``: ``train.csv`` (row-major RLE, Sartorius columns) + ``train/<id>.png``.
    - ``dsb2018``: ``<id>/images/<id>.png`` (RGBA, gray stored as RGB) + ``<id>/masks/<k>.png``.
      DSB2018 masks do not overlap, so overlapping pixels go to the later mask (and cells that
      end up empty are left out).
    - ``coco``: ``annotations.json`` (compressed RLE segmentations) + ``images/<id>.png``.
    """
    writers = {"sartorius": _write_sartorius, "dsb2018": _write_dsb2018, "coco": _write_coco}
    if layout not in writers:
        raise ValueError(f"unknown layout {layout!r}; expected sartorius, dsb2018 or coco")
    os.makedirs(out, exist_ok=True)
    writers[layout](dataset, out)


def _write_sartorius(dataset: SyntheticCells, out: str) -> None:
    from maskrcnn.formats.image_files import write_image
    from maskrcnn.formats.rle import encode_crops
    from maskrcnn.fileio import atomic_write_bytes

    rows = []
    for i in range(len(dataset)):
        s = dataset.load(i)
        write_image(os.path.join(out, "train", f"{s.image_id}.png"), s.image)
        H, W = s.instances.image_size
        rles = encode_crops(s.instances.masks.crops, s.instances.masks.origins, (H, W), order="row")
        for r in rles:
            rows.append([s.image_id, r, W, H, s.meta["cell_type"], "11h30m00s", "2019-06-16",
                         f"{s.meta['cell_type']}[synthetic]", "0 days 11:30:00"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "annotation", "width", "height", "cell_type", "plate_time", "sample_date",
                "sample_id", "elapsed_timedelta"])
    w.writerows(rows)
    atomic_write_bytes(os.path.join(out, "train.csv"), buf.getvalue().encode())


def _write_dsb2018(dataset: SyntheticCells, out: str) -> None:
    from maskrcnn.formats.image_files import encode_png, to_uint8
    from maskrcnn.fileio import atomic_write_bytes

    for i in range(len(dataset)):
        s = dataset.load(i)
        d = os.path.join(out, s.image_id)
        gray = to_uint8(s.image)
        rgba = np.stack([gray, gray, gray, np.full_like(gray, 255)], axis=2)
        atomic_write_bytes(os.path.join(d, "images", f"{s.image_id}.png"), encode_png(rgba, 6))
        os.makedirs(os.path.join(d, "masks"), exist_ok=True)
        dense = s.instances.masks.to_dense().numpy()
        # Later masks win overlapping pixels: label map by "last index that covers the pixel".
        idx = np.where(dense.any(0), dense.shape[0] - 1 - np.argmax(dense[::-1], axis=0), -1)
        for k in range(dense.shape[0]):  # one file per nucleus is the format itself
            m = idx == k
            if m.any():
                atomic_write_bytes(os.path.join(d, "masks", f"m{k:04d}.png"),
                                   encode_png(m.astype(np.uint8) * 255, 6))


def _write_coco(dataset: SyntheticCells, out: str) -> None:
    from pycocotools import mask as mask_utils

    from maskrcnn.formats.image_files import write_image
    from maskrcnn.fileio import atomic_write_bytes

    images, anns = [], []
    cats = [{"id": c + 1, "name": name} for c, name in enumerate(dataset.class_names)]
    for i in range(len(dataset)):
        s = dataset.load(i)
        H, W = s.instances.image_size
        fname = f"{s.image_id}.png"
        write_image(os.path.join(out, "images", fname), s.image)
        images.append({"id": i + 1, "file_name": fname, "height": H, "width": W})
        dense = s.instances.masks.to_dense().numpy()
        if dense.shape[0]:
            rles = mask_utils.encode(np.asfortranarray(dense.transpose(1, 2, 0).astype(np.uint8)))
            boxes = s.instances.boxes.tolist()
            for k, (r, lab) in enumerate(zip(rles, s.instances.labels.tolist())):
                x0, y0, x1, y1 = boxes[k]
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": lab + 1, "iscrowd": 0,
                             "segmentation": {"size": r["size"], "counts": r["counts"].decode()},
                             "area": float(dense[k].sum()), "bbox": [x0, y0, x1 - x0, y1 - y0]})
    doc = {"images": images, "annotations": anns, "categories": cats}
    atomic_write_bytes(os.path.join(out, "annotations.json"), json.dumps(doc).encode())
