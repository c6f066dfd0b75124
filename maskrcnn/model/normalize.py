"""Intensity normalisation of input images by percentiles (microscopy images as they come).

Microscopes write 8-, 12- and 16-bit images, and a 16-bit fluorescence image often uses a small
part of its range (values 0-235 of 65535 are common): read and divided by 65535 it is black to a
model trained on 8-bit data. StarDist (csbdeep's ``normalize``, 1st and 99.8th percentiles) and
Cellpose (``normalize99``, 1st and 99th) map each image's low and high percentiles to 0 and 1 before
the network. ``model.input.normalize: percentile`` does the same inside the model
(``MaskRCNN.preprocess``), so that training, validation and inference see the same mapping and it
travels with the checkpoint's config.

Choices (see docs/data.md):

- **Per image and per channel**: each channel of each image gets its own ``(lo, hi)``, as
  StarDist's examples (normalising channels independently) and Cellpose do. A grayscale image
  repeated to three channels gets three equal ranges.
- **Not clipped**: values below ``lo`` go below 0 and values above ``hi`` above 1 (csbdeep's default,
  ``clip=False``), so the texture of the brightest nuclei (above the 99.8th percentile) survives.
- **Linear interpolation** between order statistics, as ``numpy.percentile``'s default.
- A channel whose range is below ``MIN_RANGE`` (a constant image, or one that is constant on more
  than ``high - low`` percent of its pixels) is only shifted, not scaled, so that noise is not
  blown up by a near-zero divisor.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

NORMALIZE_MODES = ("none", "percentile")
# Below one 16-bit step (1 / 65535 = 1.5e-5): any real range of integer data is scaled.
MIN_RANGE = 1e-6


def check_percentiles(low: float, high: float, where: str = "percentile") -> None:
    """Raise ValueError unless ``0 <= low < high <= 100``."""
    if not (0.0 <= float(low) < float(high) <= 100.0):
        raise ValueError(f"{where}: need 0 <= percentile_low < percentile_high <= 100, got {low} and {high}")


def percentile_ranges(images: Sequence[Tensor], low: float, high: float) -> List[Tensor]:
    """The ``low`` and ``high`` percentiles of every channel of every image.

    Args:
        images: ``Tensor[C_i, H_i, W_i]`` float images; sizes and channel counts may differ.
        low, high: percentiles in ``[0, 100]``.
    Returns:
        one ``Tensor[C_i, 2]`` float32 ``(lo, hi)`` per image, on the image's device.

    One sort for the whole batch: every channel of every image is a row of a ``[R, L]`` matrix
    (``L`` = the largest image's pixel count; shorter rows padded with +inf, which sorts last),
    so images of different sizes cost one ``sort`` and two gathers, no loop over pixels.
    """
    check_percentiles(low, high)
    if len(images) == 0:
        return []
    dev = images[0].device
    lengths = [int(im.shape[-2]) * int(im.shape[-1]) for im in images]
    channels = [int(im.shape[0]) for im in images]
    L = max(lengths)
    rows = torch.full((sum(channels), L), float("inf"), dtype=torch.float32, device=dev)
    n = torch.empty(sum(channels), dtype=torch.long, device=dev)
    r = 0
    for im, c, k in zip(images, channels, lengths):  # one copy per image, as ImageList.from_tensors
        rows[r:r + c, :k].copy_(im.reshape(c, k))
        n[r:r + c] = k
        r += c
    rows = torch.sort(rows, dim=1).values
    q = torch.tensor([low, high], dtype=torch.float64, device=dev) / 100.0
    pos = q[None, :] * (n[:, None] - 1).double()  # [R, 2] fractional rank (numpy's "linear")
    i0 = pos.floor().long()
    i1 = torch.minimum(i0 + 1, (n - 1)[:, None])
    frac = (pos - i0.double()).float()
    v0 = rows.gather(1, i0)
    v1 = rows.gather(1, i1)
    out = v0 + frac * (v1 - v0)
    return list(out.split(channels))


def normalize_by_ranges(image: Tensor, ranges: Tensor) -> Tensor:
    """``(image - lo) / (hi - lo)`` per channel, not clipped; channels with ``hi - lo < MIN_RANGE`` are only shifted.

    Args:
        image (Tensor[C, H, W]): float.
        ranges (Tensor[C, 2] or Tensor[1, 2]): ``(lo, hi)`` per channel (one row for all channels).
    """
    ranges = ranges.to(image.device, torch.float32)
    if ranges.dim() != 2 or ranges.shape[1] != 2 or ranges.shape[0] not in (1, image.shape[0]):
        raise ValueError(
            f"input ranges must be [C, 2] with C = 1 or {image.shape[0]} (the image's channels), "
            f"got {tuple(ranges.shape)}"
        )
    lo, hi = ranges[:, 0, None, None], ranges[:, 1, None, None]
    span = hi - lo  # negative for an inverted range (hi < lo: ``invert_bright``)
    scale = 1.0 / torch.where(span.abs() >= MIN_RANGE, span, torch.ones_like(span))
    return (image - lo) * scale


def unit_ranges(images: Sequence[Tensor]) -> List[Tensor]:
    """``(0, 1)`` for every channel of every image: the identity mapping of ``normalize_by_ranges``."""
    return [torch.tensor([[0.0, 1.0]], device=im.device).expand(int(im.shape[0]), 2) for im in images]


def invert_bright_ranges(images: Sequence[Tensor], ranges: Sequence[Tensor]) -> List[Tensor]:
    """``ranges`` with ``(lo, hi)`` swapped for the images whose background is bright.

    An image is bright when the mean of the image mapped by its ranges is above 0.5 (in [0, 1] data:
    mean > 0.5, the rule ``imaging_domain`` uses: DSB2018's brightfield and stained histology images,
    means 0.53-0.85, against 0.00-0.22 for fluorescence). Its swapped range maps it to
    ``(hi - x) / (hi - lo)``: dark nuclei on a light background become light on dark, as in
    fluorescence images (the DSB2018 winners' grayscale-and-invert input).
    """
    out = []
    for im, r in zip(images, ranges):  # a loop over images
        bright = float(normalize_by_ranges(im, r).mean()) > 0.5
        out.append(r.flip(1) if bright else r)
    return out
