"""The augmentation pipeline: ``Compose`` and the builders that map an ``AugmentConfig`` to the
transforms of ``geometric``, ``photometric`` and ``copy_paste``."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from maskrcnn.data.transforms.copy_paste import CopyPaste
from maskrcnn.data.transforms.geometric import Affine, HFlip, RandomCrop, Rot90, VFlip
from maskrcnn.data.transforms.photometric import (Blur, ChannelShuffle, Invert, Noise, Photometric, StainJitter,
                                                  ToGray)
from maskrcnn.structures import Sample


class Compose:
    """Apply ``(probability, transform)`` pairs in order; one uniform draw per pair, applied or not,
    so that the random stream (and so every later draw) does not depend on earlier outcomes' cost."""

    def __init__(self, steps: Sequence[Tuple[float, object]]):
        self.steps = [(float(p), t) for p, t in steps]

    def __len__(self) -> int:
        return len(self.steps)

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        for p, t in self.steps:
            if float(torch.rand((), generator=g)) < p:
                sample = t(sample, g)
        return sample

    def __repr__(self) -> str:
        inner = ", ".join(f"{type(t).__name__}(p={p:g})" for p, t in self.steps)
        return f"Compose([{inner}])"


def build_transforms(cfg) -> Compose:
    """Per-sample pipeline from an ``AugmentConfig``: geometric (affine -> crop -> flips -> rot90),
    then photometric (gray -> invert -> stain jitter -> channel shuffle -> brightness/contrast/gamma
    -> blur -> noise).

    Colour first turns an image gray (histology -> gray), then inverts it (fluorescence <->
    brightfield), then stains it (an inverted fluorescence image -> stained-tissue-like), then
    permutes the channels (other hues); each has its own probability."""
    return Compose(_geometric_steps(cfg) + _photometric_steps(cfg))


def _geometric_steps(cfg) -> list:
    steps = []
    if cfg.rotate_prob > 0 and (cfg.rotate_degrees > 0 or tuple(cfg.scale_range) != (1.0, 1.0)):
        steps.append((cfg.rotate_prob, Affine(cfg.rotate_degrees, tuple(cfg.scale_range))))
    elif tuple(cfg.scale_range) != (1.0, 1.0):
        steps.append((1.0, Affine(0.0, tuple(cfg.scale_range))))
    if cfg.crop_size[0] > 0 and cfg.crop_size[1] > 0:
        steps.append((1.0, RandomCrop(tuple(cfg.crop_size), cfg.min_area)))
    if cfg.hflip > 0:
        steps.append((cfg.hflip, HFlip()))
    if cfg.vflip > 0:
        steps.append((cfg.vflip, VFlip()))
    if cfg.rot90 > 0:
        steps.append((cfg.rot90, Rot90()))
    return steps


def _photometric_steps(cfg) -> list:
    steps = []
    if cfg.to_gray > 0:
        steps.append((cfg.to_gray, ToGray()))
    if cfg.invert > 0:
        steps.append((cfg.invert, Invert()))
    if cfg.stain_jitter > 0 and cfg.stain_sigma > 0:
        steps.append((cfg.stain_jitter, StainJitter(cfg.stain_sigma)))
    if cfg.channel_shuffle > 0:
        steps.append((cfg.channel_shuffle, ChannelShuffle()))
    if cfg.brightness > 0 or cfg.contrast > 0 or cfg.gamma > 0:
        steps.append((1.0, Photometric(cfg.brightness, cfg.contrast, cfg.gamma)))
    if cfg.blur_prob > 0:
        steps.append((cfg.blur_prob, Blur()))
    if cfg.noise_std > 0:
        steps.append((1.0, Noise(cfg.noise_std)))
    return steps


def build_batch_transform(cfg) -> Optional[CopyPaste]:
    """The batch-level transform (copy-paste) of an ``AugmentConfig``, or None."""
    if cfg.copy_paste_prob > 0:
        return CopyPaste(cfg.copy_paste_prob, cfg.min_area)
    return None
