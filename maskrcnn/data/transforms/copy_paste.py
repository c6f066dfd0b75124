"""Copy-paste: a batch transform pasting a random subset of one image's instances into another
image of the batch (or into the same image when the batch holds one), at a random shift.

Pasted pixels take the source's values and occlude the target's masks; masks stay crops.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch import Tensor

from maskrcnn.data.transforms.draws import randint
from maskrcnn.data.transforms.geometric import clip_to_image, inside_image, kept_after_cut, rebuild_sample
from maskrcnn.structures import MaskList, Sample


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
        kept, keep = _occlude(ti.masks, union, min_area)
        masks = MaskList.cat([kept, pasted])
        labels = torch.cat([ti.labels[keep], si.labels[index]])
    else:
        masks = pasted
        labels = si.labels[index]
    return rebuild_sample(target, image, masks, labels)


def _occlude(tm: MaskList, union: Tensor, min_area: int):
    """``tm`` without the pixels of ``union (bool[H, W])``, and which of its masks survive
    (``kept_after_cut``): ``(kept MaskList, keep bool[N])``."""
    H, W = tm.image_size
    _, th, tw = tm.crops.shape
    ys = tm.origins[:, 1, None] + torch.arange(th)
    xs = tm.origins[:, 0, None] + torch.arange(tw)
    inside = inside_image(tm.origins, th, tw, (H, W))
    covered = union[ys.clamp(0, H - 1)[:, :, None], xs.clamp(0, W - 1)[:, None, :]] & inside
    before = tm.crops.flatten(1).sum(1)
    crops = tm.crops & ~covered
    after = crops.flatten(1).sum(1)
    keep = kept_after_cut(before, after, min_area)
    return MaskList(crops, tm.origins, (H, W))[keep], keep


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
            j = randint(g, 0, len(samples) - 1)
            if u >= self.prob:
                continue
            src = samples[j]
            sm = src.instances.masks
            if sm is None or len(sm) == 0:
                continue
            pick = torch.rand(len(sm), generator=g) < 0.5
            if not bool(pick.any()):
                pick[randint(g, 0, len(sm) - 1)] = True
            index = pick.nonzero()[:, 0]
            boxes = src.instances.boxes[index]
            bx0, by0 = int(boxes[:, 0].min()), int(boxes[:, 1].min())
            bx1, by1 = int(math.ceil(float(boxes[:, 2].max()))), int(math.ceil(float(boxes[:, 3].max())))
            H, W = out[t].instances.image_size
            if bx1 - bx0 > W or by1 - by0 > H:
                continue
            # Shift so that the picked group lands anywhere fully inside the target image.
            dx = randint(g, 0, W - (bx1 - bx0)) - bx0
            dy = randint(g, 0, H - (by1 - by0)) - by0
            out[t] = paste_instances(out[t], src, index, dx, dy, self.min_area)
        return out
