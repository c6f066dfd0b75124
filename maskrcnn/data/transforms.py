"""Augmentation on ``Sample`` (image + ``Instances``), masks kept as crops (``MaskList``).

Geometric transforms move crops and their origins; they never build full-image masks per
instance. After every geometric transform boxes are the tight boxes of the transformed masks and
instances whose mask became empty are removed.

Randomness comes only from the ``torch.Generator`` passed to each call, so a pipeline is
deterministic given its seed (the dataset seeds it from ``(seed, epoch, image index)``).

Per-sample transforms: ``HFlip``, ``VFlip``, ``Rot90`` (exact), ``Affine`` (small rotation and
scale jitter: ``grid_sample`` on the image, and on the crops with one grid per instance),
``RandomCrop``, colour and stain transforms (``ToGray``, ``Invert``, ``StainJitter``,
``ChannelShuffle``: the DSB2018 winners' recipe against colour domains that the training set
holds few of), ``Photometric`` (brightness/contrast/gamma), ``Blur``, ``Noise``. ``CopyPaste``
works on a batch (instances of one image pasted into another image of the batch, or into the same
image when the batch holds one). ``build_transforms`` / ``build_batch_transform`` map an
``AugmentConfig`` to them.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from maskrcnn.structures import Instances, MaskList, Sample


# ------------------------------------------------------------------------- helpers
def _rebuild(sample: Sample, image: Tensor, masks: MaskList, labels: Tensor, compact: bool = True) -> Sample:
    """A sample with ``image`` and the non-empty ``masks`` (re-cropped when ``compact``), boxes = tight boxes."""
    if len(masks):
        keep = masks.crops.flatten(1).any(1)
        if not bool(keep.all()):
            masks, labels = masks[keep], labels[keep]
        if compact and len(masks):
            masks = masks.compact(pad=1)
    inst = Instances(masks.image_size, masks.tight_boxes(), labels, None, masks)
    return Sample(image, inst, sample.image_id, dict(sample.meta))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]``."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def clip_to_image(masks: MaskList) -> MaskList:
    """Zero crop pixels that fall outside the image (the MaskList invariant)."""
    n, h, w = masks.crops.shape
    if n == 0:
        return masks
    H, W = masks.image_size
    ys = masks.origins[:, 1, None] + torch.arange(h)
    xs = masks.origins[:, 0, None] + torch.arange(w)
    inside = ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]
    return MaskList(masks.crops & inside, masks.origins, masks.image_size)


# --------------------------------------------------------------- geometric, exact
def hflip(sample: Sample) -> Sample:
    """Mirror left-right: ``x -> W - x``."""
    inst = sample.instances
    H, W = inst.image_size
    image = sample.image.flip(-1)
    if inst.masks is None:
        boxes = inst.boxes[:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1.0, -1.0, 1.0]) + torch.tensor([W, 0.0, W, 0.0])
        return Sample(image, inst.replace(boxes=boxes), sample.image_id, dict(sample.meta))
    m = inst.masks
    w = m.crops.shape[2]
    origins = torch.stack([W - m.origins[:, 0] - w, m.origins[:, 1]], 1)
    return _rebuild(sample, image, MaskList(m.crops.flip(-1), origins, (H, W)), inst.labels, compact=False)


def vflip(sample: Sample) -> Sample:
    """Mirror top-bottom: ``y -> H - y``."""
    inst = sample.instances
    H, W = inst.image_size
    image = sample.image.flip(-2)
    if inst.masks is None:
        boxes = inst.boxes[:, [0, 3, 2, 1]] * torch.tensor([1.0, -1.0, 1.0, -1.0]) + torch.tensor([0.0, H, 0.0, H])
        return Sample(image, inst.replace(boxes=boxes), sample.image_id, dict(sample.meta))
    m = inst.masks
    h = m.crops.shape[1]
    origins = torch.stack([m.origins[:, 0], H - m.origins[:, 1] - h], 1)
    return _rebuild(sample, image, MaskList(m.crops.flip(-2), origins, (H, W)), inst.labels, compact=False)


def rot90(sample: Sample, k: int = 1) -> Sample:
    """Rotate by ``k`` quarter turns as ``torch.rot90(image, k, dims=(-2, -1))`` (exact).

    One turn maps pixel ``(y, x)`` of an ``H x W`` image to ``(W - 1 - x, y)`` of a ``W x H`` image.
    """
    k = k % 4
    out = sample
    for _ in range(k):  # at most three quarter turns
        inst = out.instances
        H, W = inst.image_size
        image = torch.rot90(out.image, 1, dims=(-2, -1))
        if inst.masks is None:
            b = inst.boxes
            boxes = torch.stack([b[:, 1], W - b[:, 2], b[:, 3], W - b[:, 0]], 1)
            out = Sample(image, Instances((W, H), boxes, inst.labels), out.image_id, dict(out.meta))
            continue
        m = inst.masks
        w = m.crops.shape[2]
        origins = torch.stack([m.origins[:, 1], W - m.origins[:, 0] - w], 1)
        masks = MaskList(torch.rot90(m.crops, 1, dims=(1, 2)), origins, (W, H))
        out = _rebuild(out, image, masks, inst.labels, compact=False)
    return out


def crop(sample: Sample, x0: int, y0: int, width: int, height: int, min_area: int = 0) -> Sample:
    """Cut the window ``[x0, x0 + width) x [y0, y0 + height)`` (inside the image).

    Instances cut by the window keep their pixels inside it; a cut instance left with fewer than
    ``min_area`` pixels is dropped (an uncut small instance is kept).
    """
    inst = sample.instances
    H, W = inst.image_size
    if not (0 <= x0 and 0 <= y0 and x0 + width <= W and y0 + height <= H and width > 0 and height > 0):
        raise ValueError(f"{sample.image_id}: crop window ({x0}, {y0}, {width}, {height}) is not inside the {H}x{W} image")
    image = sample.image[:, y0:y0 + height, x0:x0 + width]
    if inst.masks is None:
        boxes = inst.boxes - torch.tensor([x0, y0, x0, y0], dtype=inst.boxes.dtype)
        boxes = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                             boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], 1)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return Sample(image, Instances((height, width), boxes[keep], inst.labels[keep]), sample.image_id, dict(sample.meta))
    m = inst.masks
    before = m.crops.flatten(1).sum(1)
    moved = clip_to_image(MaskList(m.crops, m.origins - torch.tensor([x0, y0]), (height, width)))
    after = moved.crops.flatten(1).sum(1)
    keep = (after > 0) & ((after >= min_area) | (after == before))
    return _rebuild(sample, image, moved[keep], inst.labels[keep])


# ---------------------------------------------------------- geometric, resampled
def affine(sample: Sample, angle_deg: float, scale: float) -> Sample:
    """Rotate by ``angle_deg`` (counter-clockwise on screen) about the centre and resize by ``scale``.

    The output is ``round(H * scale) x round(W * scale)``; corners uncovered by a rotation are
    filled with the image's mean. Image: bilinear ``grid_sample``. Masks: each crop is resampled
    bilinearly on its own output grid (sized to its transformed crop) and thresholded at 0.5.
    """
    inst = sample.instances
    H, W = inst.image_size
    Ho, Wo = max(1, int(round(H * scale))), max(1, int(round(W * scale)))
    # Output pixel centre q -> input point p = R^-1 (q - c_out) / s + c_in, with R a rotation by
    # -angle in image coordinates (y down), which is counter-clockwise on screen.
    t = math.radians(angle_deg)
    cos, sin = math.cos(t), math.sin(t)
    inv = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64) / scale  # q - c_out -> p - c_in
    c_in = torch.tensor([W / 2.0, H / 2.0], dtype=torch.float64)
    c_out = torch.tensor([Wo / 2.0, Ho / 2.0], dtype=torch.float64)

    def to_input(q: Tensor) -> Tensor:  # q [..., 2] (x, y) in output pixels
        return (q - c_out) @ inv.T + c_in

    ys = torch.arange(Ho, dtype=torch.float64) + 0.5
    xs = torch.arange(Wo, dtype=torch.float64) + 0.5
    q = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # [Ho, Wo, 2]
    p = to_input(q)
    grid = torch.stack([p[..., 0] / W * 2 - 1, p[..., 1] / H * 2 - 1], -1).float()
    img = sample.image[None].float()
    ones = torch.ones_like(img[:, :1])
    sampled = F.grid_sample(torch.cat([img, ones], 1), grid[None], mode="bilinear", padding_mode="zeros",
                            align_corners=False)[0]
    valid = sampled[-1:]
    fill = sample.image.mean(dim=(1, 2), keepdim=True)
    image = (sampled[:-1] + (1 - valid) * fill).clamp_(0, 1)
    if inst.masks is None or len(inst.masks) == 0:
        empty = MaskList.empty((Ho, Wo))
        return _rebuild(sample, image, empty, inst.labels[:0])
    m = inst.masks
    n, h, w = m.crops.shape
    fwd = torch.linalg.inv(inv)  # p - c_in -> q - c_out
    o = m.origins.double()
    corners = torch.stack([o, o + torch.tensor([w, 0.0]), o + torch.tensor([0.0, h]), o + torch.tensor([w, h])], 1)
    qc = (corners - c_in) @ fwd.T + c_out  # [N, 4, 2]
    lo = torch.floor(qc.amin(1)).long() - 1
    hi = torch.ceil(qc.amax(1)).long() + 1
    size = (hi - lo).amax(0)
    wo, ho = int(size[0]), int(size[1])
    qx = lo[:, 0, None].double() + torch.arange(wo, dtype=torch.float64) + 0.5  # [N, wo]
    qy = lo[:, 1, None].double() + torch.arange(ho, dtype=torch.float64) + 0.5  # [N, ho]
    qg = torch.stack([qx[:, None, :].expand(n, ho, wo), qy[:, :, None].expand(n, ho, wo)], -1)
    pg = to_input(qg) - o[:, None, None, :]  # input point relative to each crop's origin
    cgrid = torch.stack([pg[..., 0] / w * 2 - 1, pg[..., 1] / h * 2 - 1], -1).float()
    res = F.grid_sample(m.crops[:, None].float(), cgrid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = clip_to_image(MaskList(res[:, 0] >= 0.5, lo, (Ho, Wo)))
    return _rebuild(sample, image, masks, inst.labels)


# ------------------------------------------------------------------- photometric
def photometric(image: Tensor, brightness: float = 0.0, contrast: float = 1.0, gamma: float = 1.0) -> Tensor:
    """``((image ** gamma) - mean) * contrast + mean + brightness``, clipped to [0, 1]."""
    out = image.clamp(0, 1) ** gamma if gamma != 1.0 else image
    mean = out.mean()
    return ((out - mean) * contrast + mean + brightness).clamp_(0, 1)


# Luma weights of ITU-R BT.601 (as PIL's "L" conversion and maskrcnn.formats.image_files.convert_channels).
_LUMA = (0.299, 0.587, 0.114)

# Stain vectors of haematoxylin, eosin and DAB in optical density (rows; Ruifrok & Johnston 2001,
# "Quantification of histochemical staining by color deconvolution"), normalised to unit length.
_STAIN_OD = torch.tensor([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]], dtype=torch.float64)
_STAIN_OD = _STAIN_OD / _STAIN_OD.norm(dim=1, keepdim=True)
_OD_FLOOR = 1.0 / 255.0  # darkest intensity taken into optical density: -log(1/255) ~ 5.5


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


# ------------------------------------------------------------ random transforms
class HFlip:
    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        return hflip(sample)


class VFlip:
    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        return vflip(sample)


class Rot90:
    """A random 1, 2 or 3 quarter turns."""

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        return rot90(sample, _randint(g, 1, 3))


class Affine:
    """Rotation by an angle in ``[-degrees, degrees]`` and resize by a factor in ``scale_range``."""

    def __init__(self, degrees: float = 0.0, scale_range: Tuple[float, float] = (1.0, 1.0)):
        self.degrees = float(degrees)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {scale_range}")

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        angle = _uniform(g, -self.degrees, self.degrees)
        scale = _uniform(g, *self.scale_range)
        return affine(sample, angle, scale)


class RandomCrop:
    """A random window of ``size = (h, w)`` (clipped to the image: smaller images are kept whole)."""

    def __init__(self, size: Tuple[int, int], min_area: int = 0):
        self.size = (int(size[0]), int(size[1]))
        self.min_area = int(min_area)

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        H, W = sample.instances.image_size
        ch, cw = min(self.size[0], H), min(self.size[1], W)
        y0 = _randint(g, 0, H - ch)
        x0 = _randint(g, 0, W - cw)
        if (ch, cw) == (H, W):
            return sample
        return crop(sample, x0, y0, cw, ch, self.min_area)


class ToGray:
    """RGB to gray, kept in 3 channels (``to_gray``): colour stops being a cue."""

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        return Sample(to_gray(sample.image), sample.instances, sample.image_id, dict(sample.meta))


class Invert:
    """``1 - image`` (``invert``): a fluorescence image then looks like a brightfield one and back."""

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        return Sample(invert(sample.image), sample.instances, sample.image_id, dict(sample.meta))


class StainJitter:
    """``stain_jitter`` with ``alpha ~ U[1 - sigma, 1 + sigma]`` and ``beta ~ U[-sigma, sigma]`` per stain.

    On a gray image it tints dark structures with a random stain mix, so fluorescence images
    (after ``Invert``) and gray brightfield ones pass for stained tissue."""

    def __init__(self, sigma: float):
        self.sigma = float(sigma)

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        alpha = (1 + self.sigma * (2 * torch.rand(3, generator=g, dtype=torch.float64) - 1)).tolist()
        beta = (self.sigma * (2 * torch.rand(3, generator=g, dtype=torch.float64) - 1)).tolist()
        return Sample(stain_jitter(sample.image, alpha, beta), sample.instances, sample.image_id, dict(sample.meta))


class ChannelShuffle:
    """A random permutation of the colour channels (a no-op on gray images, whose channels are equal)."""

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        c = int(sample.image.shape[0])
        perm = torch.randperm(c, generator=g)
        return Sample(sample.image[perm], sample.instances, sample.image_id, dict(sample.meta))


class Photometric:
    """Brightness shift in ``[-b, b]``, contrast factor in ``[1 - c, 1 + c]``, gamma ``exp(U[-g, g])``."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, gamma: float = 0.0):
        self.brightness, self.contrast, self.gamma = float(brightness), float(contrast), float(gamma)

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        b = _uniform(g, -self.brightness, self.brightness)
        c = _uniform(g, 1 - self.contrast, 1 + self.contrast)
        gm = math.exp(_uniform(g, -self.gamma, self.gamma))
        return Sample(photometric(sample.image, b, c, gm), sample.instances, sample.image_id, dict(sample.meta))


class Blur:
    """Gaussian blur with sigma in ``sigma_range``."""

    def __init__(self, sigma_range: Tuple[float, float] = (0.5, 1.2)):
        self.sigma_range = sigma_range

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        sigma = _uniform(g, *self.sigma_range)
        return Sample(gaussian_blur(sample.image, sigma), sample.instances, sample.image_id, dict(sample.meta))


class Noise:
    """Additive Gaussian noise with a standard deviation drawn in ``[0, std]``."""

    def __init__(self, std: float):
        self.std = float(std)

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        s = _uniform(g, 0.0, self.std)
        noise = torch.randn(sample.image.shape, generator=g) * s
        return Sample((sample.image + noise).clamp_(0, 1), sample.instances, sample.image_id, dict(sample.meta))


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


# ---------------------------------------------------------------- copy-paste
def paste_instances(target: Sample, source: Sample, index: Tensor, dx: int, dy: int, min_area: int = 0) -> Sample:
    """Paste instances ``index`` of ``source`` into ``target``, shifted by ``(dx, dy)``.

    Pixels under the pasted masks take the source's values; target masks lose the pixels the
    pasted ones cover (an occluded target instance left with fewer than ``min_area`` pixels, or
    none, is dropped). Pasted masks outside the target image are clipped.
    """
    ti, si = target.instances, source.instances
    H, W = ti.image_size
    sH, sW = si.image_size
    src_img = source.image
    if src_img.shape[0] != target.image.shape[0]:
        from maskrcnn.formats.image_files import convert_channels

        src_img = convert_channels(src_img, int(target.image.shape[0]))
    pasted = MaskList(si.masks.crops[index], si.masks.origins[index] + torch.tensor([dx, dy]), (H, W))
    pasted = clip_to_image(pasted)
    # Union of pasted masks: one image-sized bool map (not one per instance).
    n, h, w = pasted.crops.shape
    nz = pasted.crops.nonzero()
    gy = pasted.origins[nz[:, 0], 1] + nz[:, 1]
    gx = pasted.origins[nz[:, 0], 0] + nz[:, 2]
    union = torch.zeros((H, W), dtype=torch.bool)
    union[gy, gx] = True
    sy, sx = gy - dy, gx - dx
    ok = (sy >= 0) & (sy < sH) & (sx >= 0) & (sx < sW)  # always true for pixels of source masks
    image = target.image.clone()
    image[:, gy[ok], gx[ok]] = src_img[:, sy[ok], sx[ok]]
    if ti.masks is not None and len(ti.masks):
        tm = ti.masks
        _, th, tw = tm.crops.shape
        ys = tm.origins[:, 1, None] + torch.arange(th)
        xs = tm.origins[:, 0, None] + torch.arange(tw)
        inside = ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]
        covered = union[ys.clamp(0, H - 1)[:, :, None], xs.clamp(0, W - 1)[:, None, :]] & inside
        before = tm.crops.flatten(1).sum(1)
        crops = tm.crops & ~covered
        after = crops.flatten(1).sum(1)
        keep = (after > 0) & ((after >= min_area) | (after == before))
        kept = MaskList(crops, tm.origins, (H, W))[keep]
        masks = MaskList.cat([kept, pasted])
        labels = torch.cat([ti.labels[keep], si.labels[index]])
    else:
        masks = pasted
        labels = si.labels[index]
    return _rebuild(target, image, masks, labels)


class CopyPaste:
    """Batch transform: with probability ``prob`` per image, paste a random subset of another image's
    instances (of the batch; the image itself when the batch holds one) at a random shift."""

    def __init__(self, prob: float, min_area: int = 0):
        self.prob = float(prob)
        self.min_area = int(min_area)

    def __call__(self, samples: List[Sample], g: torch.Generator) -> List[Sample]:
        out = list(samples)
        for t in range(len(samples)):  # per image of the batch
            u = float(torch.rand((), generator=g))
            j = _randint(g, 0, len(samples) - 1)
            if u >= self.prob:
                continue
            src = samples[j]
            sm = src.instances.masks
            if sm is None or len(sm) == 0:
                continue
            pick = torch.rand(len(sm), generator=g) < 0.5
            if not bool(pick.any()):
                pick[_randint(g, 0, len(sm) - 1)] = True
            index = pick.nonzero()[:, 0]
            boxes = src.instances.boxes[index]
            bx0, by0 = int(boxes[:, 0].min()), int(boxes[:, 1].min())
            bx1, by1 = int(math.ceil(float(boxes[:, 2].max()))), int(math.ceil(float(boxes[:, 3].max())))
            H, W = out[t].instances.image_size
            if bx1 - bx0 > W or by1 - by0 > H:
                continue
            # Shift so that the picked group lands anywhere fully inside the target image.
            dx = _randint(g, 0, W - (bx1 - bx0)) - bx0
            dy = _randint(g, 0, H - (by1 - by0)) - by0
            out[t] = paste_instances(out[t], src, index, dx, dy, self.min_area)
        return out


# ------------------------------------------------------------------- builders
def build_transforms(cfg) -> Compose:
    """Per-sample pipeline from an ``AugmentConfig``: affine -> crop -> flips -> rot90 -> gray -> invert ->
    stain jitter -> channel shuffle -> photometric -> blur -> noise.

    Colour first turns an image gray (histology -> gray), then inverts it (fluorescence <->
    brightfield), then stains it (an inverted fluorescence image -> stained-tissue-like), then
    permutes the channels (other hues); each has its own probability."""
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
    return Compose(steps)


def build_batch_transform(cfg) -> Optional[CopyPaste]:
    """The batch-level transform (copy-paste) of an ``AugmentConfig``, or None."""
    if cfg.copy_paste_prob > 0:
        return CopyPaste(cfg.copy_paste_prob, cfg.min_area)
    return None
