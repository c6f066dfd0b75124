"""Flip TTA is aligned to the pixel: a flipped view, predicted and flipped back, lands where the
unflipped prediction does (no half-pixel shift, a known pitfall of RoIAlign-based flip TTA).

Measured with the shipped nuclei model on a synthetic image of asymmetric (egg-shaped) nuclei:
the centroid of each object from the ``hflip`` and ``vflip`` views, mapped back, against the
identity view's. A shift of 0.5 px would be a systematic offset; the bound is a quarter pixel on
the mean over the objects (and each object within 1.5 px).
"""
import math

import pytest
import torch

from maskrcnn.inference.zoo import zoo_names


def _egg_nuclei(H=160, W=200, seed=0):
    """Bright egg-shaped nuclei (one end fatter than the other, so a flip changes the shape) on a
    dark background, ~20 px across like DSB2018's fluorescence nuclei, at sub-pixel positions."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    image = torch.zeros(H, W)
    for cy in range(25, H - 20, 36):
        for cx in range(25, W - 20, 40):
            cy_ = cy + float(torch.rand(1, generator=g)) * 3
            cx_ = cx + float(torch.rand(1, generator=g)) * 3
            a = float(torch.rand(1, generator=g)) * math.pi
            u = (xs - cx_) * math.cos(a) + (ys - cy_) * math.sin(a)
            v = -(xs - cx_) * math.sin(a) + (ys - cy_) * math.cos(a)
            half = torch.where(u > 0, torch.full_like(u, 11.0), torch.full_like(u, 7.0))  # the egg
            inside = (u / half) ** 2 + (v / 8.0) ** 2
            image = torch.maximum(image, 0.75 * torch.sigmoid((1 - inside) * 8))
    return (image + 0.03)[None].expand(3, H, W).contiguous()


def _centroids(inst):
    d = inst.masks.to_dense().float() >= 0.5
    H, W = d.shape[-2:]
    a = d.sum((1, 2)).clamp(min=1)
    cx = (d * (torch.arange(W).float() + 0.5)).sum((1, 2)) / a
    cy = (d * (torch.arange(H).float() + 0.5)[:, None]).sum((1, 2)) / a
    return torch.stack([cx, cy], 1), d.flatten(1)


@pytest.mark.skipif("nuclei" not in zoo_names(), reason="needs the shipped nuclei model")
def test_flipped_views_land_on_the_unflipped_prediction():
    from maskrcnn.api import load_model

    model = load_model("nuclei", device="cpu", tta="hflip,vflip")
    views = model.predictor.predict_views(_egg_nuclei())
    base_c, base_d = _centroids(views[0])
    keep = views[0].scores >= 0.5
    assert int(keep.sum()) >= 12  # the model finds the nuclei
    for name, view in zip(("hflip", "vflip"), views[1:]):
        c, d = _centroids(view)
        inter = (base_d[:, None] & d[None]).sum(-1).float()
        iou = inter / (base_d.sum(-1)[:, None] + d.sum(-1)[None] - inter).clamp(min=1)
        best, j = iou.max(1)
        ok = keep & (best > 0.7)
        assert int(ok.sum()) >= 12, name
        shift = c[j[ok]] - base_c[ok]
        assert shift.mean(0).abs().max() < 0.25, (name, shift.mean(0).tolist())
        assert shift.abs().max() < 1.5, (name, shift.abs().max().item())
