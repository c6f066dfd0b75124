"""Geometric transforms: they move the image's pixels and the masks' crops together.

They move crops and their origins and never build full-image masks per instance. After every
transform the boxes are the tight boxes of the transformed masks, and instances whose mask became
empty are removed. Samples without masks (boxes only) have their boxes moved directly.

Exact: ``hflip``, ``vflip``, ``rot90``, ``crop``. Resampled: ``affine`` (small rotation and scale
jitter: ``grid_sample`` on the image, and on the crops with one grid per instance). The random
versions (``HFlip``, ``VFlip``, ``Rot90``, ``Affine``, ``RandomCrop``) draw their parameters from
the generator passed to each call.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from maskrcnn.data.transforms.draws import randint, uniform
from maskrcnn.structures import Instances, MaskList, Sample


# ------------------------------------------------------------------------- helpers
def rebuild_sample(sample: Sample, image: Tensor, masks: MaskList, labels: Tensor, compact: bool = True) -> Sample:
    """A sample with ``image`` and the non-empty ``masks`` (re-cropped when ``compact``), boxes = tight boxes."""
    if len(masks):
        keep = masks.crops.flatten(1).any(1)
        if not bool(keep.all()):
            masks, labels = masks[keep], labels[keep]
        if compact and len(masks):
            masks = masks.compact(pad=1)
    inst = Instances(masks.image_size, masks.tight_boxes(), labels, None, masks)
    return Sample(image, inst, sample.image_id, dict(sample.meta))


def _with_boxes(sample: Sample, image: Tensor, instances: Instances) -> Sample:
    """The box-only path's result: ``image`` and ``instances`` with the sample's id and meta."""
    return Sample(image, instances, sample.image_id, dict(sample.meta))


def inside_image(origins: Tensor, h: int, w: int, image_size: Tuple[int, int]) -> Tensor:
    """``bool[N, h, w]``: which pixels of crops of ``h x w`` at ``origins (Tensor[N, 2])`` lie in the image."""
    H, W = image_size
    ys = origins[:, 1, None] + torch.arange(h)
    xs = origins[:, 0, None] + torch.arange(w)
    return ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]


def clip_to_image(masks: MaskList) -> MaskList:
    """Zero crop pixels that fall outside the image (the MaskList invariant)."""
    n, h, w = masks.crops.shape
    if n == 0:
        return masks
    inside = inside_image(masks.origins, h, w, masks.image_size)
    return MaskList(masks.crops & inside, masks.origins, masks.image_size)


# --------------------------------------------------------------------------- exact
def hflip(sample: Sample) -> Sample:
    """Mirror left-right: ``x -> W - x``."""
    inst = sample.instances
    H, W = inst.image_size
    image = sample.image.flip(-1)
    if inst.masks is None:
        boxes = inst.boxes[:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1.0, -1.0, 1.0]) + torch.tensor([W, 0.0, W, 0.0])
        return _with_boxes(sample, image, inst.replace(boxes=boxes))
    m = inst.masks
    w = m.crops.shape[2]
    origins = torch.stack([W - m.origins[:, 0] - w, m.origins[:, 1]], 1)
    return rebuild_sample(sample, image, MaskList(m.crops.flip(-1), origins, (H, W)), inst.labels, compact=False)


def vflip(sample: Sample) -> Sample:
    """Mirror top-bottom: ``y -> H - y``."""
    inst = sample.instances
    H, W = inst.image_size
    image = sample.image.flip(-2)
    if inst.masks is None:
        boxes = inst.boxes[:, [0, 3, 2, 1]] * torch.tensor([1.0, -1.0, 1.0, -1.0]) + torch.tensor([0.0, H, 0.0, H])
        return _with_boxes(sample, image, inst.replace(boxes=boxes))
    m = inst.masks
    h = m.crops.shape[1]
    origins = torch.stack([m.origins[:, 0], H - m.origins[:, 1] - h], 1)
    return rebuild_sample(sample, image, MaskList(m.crops.flip(-2), origins, (H, W)), inst.labels, compact=False)


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
            out = _with_boxes(out, image, Instances((W, H), boxes, inst.labels))
            continue
        m = inst.masks
        w = m.crops.shape[2]
        origins = torch.stack([m.origins[:, 1], W - m.origins[:, 0] - w], 1)
        masks = MaskList(torch.rot90(m.crops, 1, dims=(1, 2)), origins, (W, H))
        out = rebuild_sample(out, image, masks, inst.labels, compact=False)
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
        return _with_boxes(sample, image, Instances((height, width), boxes[keep], inst.labels[keep]))
    m = inst.masks
    before = m.crops.flatten(1).sum(1)
    moved = clip_to_image(MaskList(m.crops, m.origins - torch.tensor([x0, y0]), (height, width)))
    after = moved.crops.flatten(1).sum(1)
    keep = kept_after_cut(before, after, min_area)
    return rebuild_sample(sample, image, moved[keep], inst.labels[keep])


def kept_after_cut(before: Tensor, after: Tensor, min_area: int) -> Tensor:
    """Which masks survive losing pixels (``before`` -> ``after`` pixel counts): not empty, and at
    least ``min_area`` pixels unless nothing was lost (a small uncut object stays)."""
    return (after > 0) & ((after >= min_area) | (after == before))


# ----------------------------------------------------------------------- resampled
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

    image = _resample_image(sample.image, to_input, (Ho, Wo))
    if inst.masks is None or len(inst.masks) == 0:
        empty = MaskList.empty((Ho, Wo))
        return rebuild_sample(sample, image, empty, inst.labels[:0])
    fwd = torch.linalg.inv(inv)  # p - c_in -> q - c_out

    def to_output(p: Tensor) -> Tensor:  # p [..., 2] (x, y) in input pixels
        return (p - c_in) @ fwd.T + c_out

    masks = _resample_crops(inst.masks, to_input, to_output, (Ho, Wo))
    return rebuild_sample(sample, image, masks, inst.labels)


def _resample_image(image: Tensor, to_input, out_size: Tuple[int, int]) -> Tensor:
    """``image`` bilinearly sampled at ``to_input`` of each output pixel centre; pixels that map
    outside the input take the image's mean."""
    C, H, W = image.shape
    Ho, Wo = out_size
    ys = torch.arange(Ho, dtype=torch.float64) + 0.5
    xs = torch.arange(Wo, dtype=torch.float64) + 0.5
    q = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # [Ho, Wo, 2]
    p = to_input(q)
    grid = torch.stack([p[..., 0] / W * 2 - 1, p[..., 1] / H * 2 - 1], -1).float()
    img = image[None].float()
    ones = torch.ones_like(img[:, :1])
    sampled = F.grid_sample(torch.cat([img, ones], 1), grid[None], mode="bilinear", padding_mode="zeros",
                            align_corners=False)[0]
    valid = sampled[-1:]
    fill = image.mean(dim=(1, 2), keepdim=True)
    return (sampled[:-1] + (1 - valid) * fill).clamp_(0, 1)


def _resample_crops(m: MaskList, to_input, to_output, out_size: Tuple[int, int]) -> MaskList:
    """Each crop of ``m`` resampled on its own output window (its transformed corners' bounding box
    plus a pixel) and thresholded at 0.5; windows share one size so they batch."""
    n, h, w = m.crops.shape
    o = m.origins.double()
    corners = torch.stack([o, o + torch.tensor([w, 0.0]), o + torch.tensor([0.0, h]), o + torch.tensor([w, h])], 1)
    qc = to_output(corners)  # [N, 4, 2]
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
    return clip_to_image(MaskList(res[:, 0] >= 0.5, lo, out_size))


# -------------------------------------------------------------- random transforms
class HFlip:
    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        return hflip(sample)


class VFlip:
    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        return vflip(sample)


class Rot90:
    """A random 1, 2 or 3 quarter turns."""

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        return rot90(sample, randint(g, 1, 3))


class Affine:
    """Rotation by an angle in ``[-degrees, degrees]`` and resize by a factor in ``scale_range``."""

    def __init__(self, degrees: float = 0.0, scale_range: Tuple[float, float] = (1.0, 1.0)):
        self.degrees = float(degrees)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {scale_range}")

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        angle = uniform(g, -self.degrees, self.degrees)
        scale = uniform(g, *self.scale_range)
        return affine(sample, angle, scale)


class RandomCrop:
    """A random window of ``size = (h, w)`` (clipped to the image: smaller images are kept whole)."""

    def __init__(self, size: Tuple[int, int], min_area: int = 0):
        self.size = (int(size[0]), int(size[1]))
        self.min_area = int(min_area)

    def __call__(self, sample: Sample, g: torch.Generator) -> Sample:
        H, W = sample.instances.image_size
        ch, cw = min(self.size[0], H), min(self.size[1], W)
        y0 = randint(g, 0, H - ch)
        x0 = randint(g, 0, W - cw)
        if (ch, cw) == (H, W):
            return sample
        return crop(sample, x0, y0, cw, ch, self.min_area)
