"""Photometric transforms: they change pixel values only; instances are left as they are.

Intensity: ``photometric`` (brightness/contrast/gamma), ``gaussian_blur``, noise (``Noise``).
Colour and stain, the DSB2018 winners' recipe against colour domains that the training set holds
few of: ``to_gray``, ``invert``, ``stain_jitter``, channel shuffle (``ChannelShuffle``). The
random versions (``Photometric``, ``Blur``, ``Noise``, ``ToGray``, ``Invert``, ``StainJitter``,
``ChannelShuffle``) draw their parameters from the generator passed to each call.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from maskrcnn.data.transforms.draws import uniform
from maskrcnn.structures import Sample

# Luma weights of ITU-R BT.601 (as PIL's "L" conversion and maskrcnn.formats.image_files.convert_channels).
_LUMA = (0.299, 0.587, 0.114)

# Stain vectors of haematoxylin, eosin and DAB in optical density (rows; Ruifrok & Johnston 2001,
# "Quantification of histochemical staining by color deconvolution"), normalised to unit length.
_STAIN_OD = torch.tensor([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]], dtype=torch.float64)
_STAIN_OD = _STAIN_OD / _STAIN_OD.norm(dim=1, keepdim=True)
_OD_FLOOR = 1.0 / 255.0  # darkest intensity taken into optical density: -log(1/255) ~ 5.5


# ------------------------------------------------------------------------ intensity
def photometric(image: Tensor, brightness: float = 0.0, contrast: float = 1.0, gamma: float = 1.0) -> Tensor:
    """``((image ** gamma) - mean) * contrast + mean + brightness``, clipped to [0, 1]."""
    out = image.clamp(0, 1) ** gamma if gamma != 1.0 else image
    mean = out.mean()
    return ((out - mean) * contrast + mean + brightness).clamp_(0, 1)


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``image (Tensor[C, H, W])`` with reflected borders."""
    r = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-r, r + 1, dtype=image.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c, H, W = image.shape
    img = image[:, None]  # channels as a batch
    pad_h, pad_w = min(r, H - 1), min(r, W - 1)
    if pad_w > 0:
        img = F.pad(img, (pad_w, pad_w, 0, 0), mode="reflect")
        img = F.conv2d(img, k[r - pad_w:r + pad_w + 1].view(1, 1, 1, -1) / k[r - pad_w:r + pad_w + 1].sum())
    if pad_h > 0:
        img = F.pad(img, (0, 0, pad_h, pad_h), mode="reflect")
        img = F.conv2d(img, k[r - pad_h:r + pad_h + 1].view(1, 1, -1, 1) / k[r - pad_h:r + pad_h + 1].sum())
    return img[:, 0]


# ---------------------------------------------------------------- colour and stain
def to_gray(image: Tensor) -> Tensor:
    """RGB ``image (Tensor[3, H, W])`` -> its BT.601 luma repeated in 3 channels; 1-channel images unchanged."""
    if image.shape[0] != 3:
        return image
    w = torch.tensor(_LUMA, dtype=image.dtype, device=image.device)
    return (image * w[:, None, None]).sum(0, keepdim=True).clamp_(0, 1).expand(3, -1, -1).contiguous()


def invert(image: Tensor) -> Tensor:
    """``1 - image``: bright nuclei on a dark background (fluorescence) <-> dark on bright (brightfield, H&E)."""
    return 1.0 - image


def stain_jitter(image: Tensor, alpha: Sequence[float], beta: Sequence[float]) -> Tensor:
    """Perturb the haematoxylin, eosin and DAB content of an RGB ``image (Tensor[3, H, W])``.

    Colour deconvolution (Ruifrok & Johnston 2001): optical density ``OD = -ln(max(I, 1/255))``
    per channel, stain concentrations ``C = OD @ inv(S)`` with ``S`` the unit stain vectors
    (rows: H, E, DAB); then ``C' = C * alpha + beta`` per stain and back, ``I' = exp(-C' @ S)``,
    clipped to [0, 1] (Tellez et al. 2018, "H&E stain augmentation"). ``alpha = 1, beta = 0`` is
    the identity up to the floor on dark pixels. 1-channel images are returned unchanged.
    """
    if image.shape[0] != 3:
        return image
    c, h, w = image.shape
    od = -torch.log(image.double().clamp(min=_OD_FLOOR)).reshape(3, -1)  # [3, HW]
    conc = torch.linalg.solve(_STAIN_OD.T, od)  # S^T C^T = OD^T: concentrations [3, HW]
    a = torch.as_tensor(alpha, dtype=torch.float64).reshape(3, 1)
    b = torch.as_tensor(beta, dtype=torch.float64).reshape(3, 1)
    out = torch.exp(-(_STAIN_OD.T @ (conc * a + b)))
    return out.reshape(c, h, w).clamp_(0, 1).to(image.dtype)


# -------------------------------------------------------------- random transforms
def _with_image(sample: Sample, image: Tensor) -> Sample:
    """``sample`` with a new ``image`` of the same size (instances, id and meta kept)."""
    return Sample(image, sample.instances, sample.image_id, dict(sample.meta))


class Photometric:
    """Brightness shift in ``[-b, b]``, contrast factor in ``[1 - c, 1 + c]``, gamma ``exp(U[-g, g])``."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, gamma: float = 0.0):
        self.brightness, self.contrast, self.gamma = float(brightness), float(contrast), float(gamma)

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        b = uniform(g, -self.brightness, self.brightness)
        c = uniform(g, 1 - self.contrast, 1 + self.contrast)
        gm = math.exp(uniform(g, -self.gamma, self.gamma))
        return _with_image(sample, photometric(sample.image, b, c, gm))


class Blur:
    """Gaussian blur with sigma in ``sigma_range``."""

    def __init__(self, sigma_range: Tuple[float, float] = (0.5, 1.2)):
        self.sigma_range = sigma_range

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        sigma = uniform(g, *self.sigma_range)
        return _with_image(sample, gaussian_blur(sample.image, sigma))


class Noise:
    """Additive Gaussian noise with a standard deviation drawn in ``[0, std]``."""

    def __init__(self, std: float):
        self.std = float(std)

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        s = uniform(g, 0.0, self.std)
        noise = torch.randn(sample.image.shape, generator=g) * s
        return _with_image(sample, (sample.image + noise).clamp_(0, 1))


class ToGray:
    """RGB to gray, kept in 3 channels (``to_gray``): colour stops being a cue."""

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        return _with_image(sample, to_gray(sample.image))


class Invert:
    """``1 - image`` (``invert``): a fluorescence image then looks like a brightfield one and back."""

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        return _with_image(sample, invert(sample.image))


class StainJitter:
    """``stain_jitter`` with ``alpha ~ U[1 - sigma, 1 + sigma]`` and ``beta ~ U[-sigma, sigma]`` per stain.

    On a gray image it tints dark structures with a random stain mix, so fluorescence images
    (after ``Invert``) and gray brightfield ones pass for stained tissue."""

    def __init__(self, sigma: float):
        self.sigma = float(sigma)

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        alpha = (1 + self.sigma * (2 * torch.rand(3, generator=g, dtype=torch.float64) - 1)).tolist()
        beta = (self.sigma * (2 * torch.rand(3, generator=g, dtype=torch.float64) - 1)).tolist()
        return _with_image(sample, stain_jitter(sample.image, alpha, beta))


class ChannelShuffle:
    """A random permutation of the colour channels (a no-op on gray images, whose channels are equal)."""

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        c = int(sample.image.shape[0])
        perm = torch.randperm(c, generator=g)
        return _with_image(sample, sample.image[perm])
