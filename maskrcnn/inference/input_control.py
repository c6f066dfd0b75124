"""Predict-time control of what the model sees: intensity normalisation and object size.

``--normalize``:

- ``model`` (default): as the model was trained (``model.input.normalize``). One exception, so that
  a 12/16-bit image is never silently empty: a model trained with ``normalize: none`` learnt 8-bit
  data, where objects span much of [0, 1]; a 16-bit image divided by 65535 is nearly black to it
  (a fluorescence image with values 0-235 reaches 0.0036). Such an image is normalised by its own
  percentiles (``model.input.percentile_low`` / ``percentile_high``, 1 and 99.8 by default; the
  whole image's, before any tiling), as StarDist and Cellpose normalise every image, and the run
  says so once.
- ``percentile``: every image by its percentiles (``model.input.normalize=percentile``).
- ``none``: every image as read (8-bit / 255, 16-bit / 65535); a 16-bit image that uses under
  ``DIM_FRACTION`` of its range gets a warning.

Object size: ``--diameter PIXELS`` (as Cellpose's) says how large the user's objects are; the model
learnt objects of ``model.input.object_diameter`` pixels (the median training object, recorded in
the config) at ``model.input.scale``, so the images are resized by
``scale * object_diameter / PIXELS``. ``--scale F`` multiplies the model's scale by ``F`` directly
(0.5: objects twice the training size). Both become ``model.input.scale`` overrides.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from maskrcnn.config import Config, ConfigError
from maskrcnn.model.normalize import normalize_by_ranges, percentile_ranges

NORMALIZE_CHOICES = ("model", "percentile", "none")
DIM_FRACTION = 0.05  # a 16-bit image whose maximum is below this share of 65535 is "dim"


def input_overrides(cfg: Config, normalize: str = "model", diameter: Optional[float] = None,
                    scale: Optional[float] = None, source: str = "") -> Tuple[List[str], str]:
    """``model.input`` overrides for ``--normalize`` / ``--diameter`` / ``--scale`` on the model of
    ``cfg``, and a line describing the input the model will get (for the log).

    Raises ConfigError for an unknown mode, a non-positive size, ``--diameter`` on a model that
    records no ``object_diameter``, or a size option on a model resized by ``min_size_test``.
    """
    inp = cfg.model.input
    where = f" ({source})" if source else ""
    if normalize not in NORMALIZE_CHOICES:
        raise ConfigError(f"--normalize: one of {', '.join(NORMALIZE_CHOICES)}, got {normalize!r}")
    over: List[str] = []
    if normalize != "model" and normalize != inp.normalize:
        over.append(f"model.input.normalize={normalize}")
    mode = inp.normalize if normalize == "model" else normalize
    text = f"normalize {mode}" + (f" (percentiles {inp.percentile_low:g}-{inp.percentile_high:g})"
                                  if mode == "percentile" else "")
    if normalize == "model" and mode == "none":
        text += f"; 16-bit images by their percentiles {inp.percentile_low:g}-{inp.percentile_high:g} (8-bit model)"
    if diameter is not None and scale is not None:
        raise ConfigError("--diameter and --scale both set the input scale: give one")
    new_scale = inp.scale
    if diameter is not None or scale is not None:
        if inp.min_size_test > 0:
            raise ConfigError("--diameter/--scale: this model resizes images to model.input.min_size_test="
                              f"{inp.min_size_test}, not by a scale{where}")
        if diameter is not None:
            if not diameter > 0:
                raise ConfigError(f"--diameter: pixels > 0, got {diameter}")
            if inp.object_diameter <= 0:
                raise ConfigError(
                    "--diameter: the model records no typical object diameter (model.input.object_diameter is 0)"
                    f"{where}; give it with --set model.input.object_diameter=PIXELS (the median diameter of "
                    "its training objects) or use --scale")
            new_scale = inp.scale * inp.object_diameter / float(diameter)
            why = f" (--diameter {diameter:g}: the model learnt objects of {inp.object_diameter:g} px at scale {inp.scale:g})"
        else:
            if not scale > 0:
                raise ConfigError(f"--scale: a factor > 0, got {scale}")
            new_scale = inp.scale * float(scale)
            why = f" (--scale {scale:g} x the model's {inp.scale:g})"
        over.append(f"model.input.scale={new_scale!r}")
        text += f"; input scale {new_scale:.4g}{why}"
    else:
        text += f"; input scale {new_scale:g} (the model's)"
    return over, text


def normalize_16bit(image: Tensor, cfg: Config) -> Tensor:
    """``image (Tensor[C, H, W])`` mapped by its own ``percentile_low`` / ``percentile_high`` per
    channel (whole image, not clipped: ``maskrcnn.model.normalize``)."""
    inp = cfg.model.input
    ranges = percentile_ranges([image], inp.percentile_low, inp.percentile_high)[0]
    return normalize_by_ranges(image, ranges)


def is_dim(image: Tensor) -> bool:
    """True when ``image`` (16-bit data / 65535) uses less than ``DIM_FRACTION`` of its range."""
    return bool(image.numel()) and float(torch.amax(image)) < DIM_FRACTION
