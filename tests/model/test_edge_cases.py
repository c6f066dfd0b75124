"""Edges the ordinary test data never reaches: boxes over 100 px in paste_masks and in the mask
targets, and image sizes that are already multiples of the padding divisor.

Test boxes elsewhere are under ~20 px. Pasting a 28 x 28 mask into a box of width w, the pixel
just past the crop window (1.5 px beyond the box edge) samples 1.5 * 28 / w mask pixels beyond the
mask's last centre: for w > ~84 that is inside the bilinear kernel, so a window that leaks shows
there only with big boxes. The mask targets of a box 140 px wide have 5-px bins sampled 5 times
each (the adaptive RoIAlign sampling of the targets); a fixed 2 samples per bin reads another value
on a bin that straddles the mask's edge.
"""
import math

import torch

from maskrcnn.model.mask_head import mask_targets, paste_masks
from maskrcnn.structures import ImageList, MaskList

torch.set_num_threads(1)


def _bilinear_paste(mask, box, H, W):
    """Pixel (x, y) of the image: bilinear sample of ``mask`` (M x M, taps outside it are 0) at the
    pixel centre mapped into the box, inside the window [floor(x0) - 1, ceil(x1) + 1), else 0.
    Written with plain index arithmetic (no grid_sample)."""
    M = mask.shape[0]
    x0, y0, x1, y1 = box

    def taps(n, lo, hi):
        u = (torch.arange(n, dtype=torch.float64) + 0.5 - lo) / (hi - lo) * M - 0.5  # mask-pixel coordinate
        i0 = torch.floor(u).long()
        f = u - i0
        w = torch.zeros(n, M, dtype=torch.float64)
        for i, wt in ((i0, 1 - f), (i0 + 1, f)):
            ok = (i >= 0) & (i < M)
            w[torch.nonzero(ok).squeeze(1), i[ok]] += wt[ok]
        win = (torch.arange(n) >= math.floor(lo) - 1) & (torch.arange(n) < math.ceil(hi) + 1)
        return w * win[:, None]

    return taps(H, y0, y1) @ mask.double() @ taps(W, x0, x1).T


def test_paste_of_boxes_over_100_px_equals_an_independent_bilinear_paste():
    # Two big boxes of different sizes and one small: the crops share the largest size, so the
    # smaller boxes' crops extend past their own windows, where the paste must be 0.
    H, W = 220, 260
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 28, 28, generator=g) * 0.5 + 0.5  # every mask pixel at least 0.5
    boxes = [(10.3, 20.6, 190.2, 170.9), (40.5, 30.25, 151.0, 141.75), (200.0, 5.0, 211.5, 17.0)]
    got = paste_masks(masks, torch.tensor(boxes), (H, W)).to_dense()
    for i, b in enumerate(boxes):
        want = _bilinear_paste(masks[i], b, H, W).float()
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=0, msg=f"box {b}")
    # The pixel just past box 1's window samples ~0.4 mask pixels beyond its edge: not zero
    # before the window cut, zero after it.
    assert float(got[1, 80, math.ceil(151.0) + 1]) == 0.0
    assert float(_bilinear_paste(masks[1], (40.5, 30.25, 153.0, 141.75), H, W)[80, 152]) > 0.1


def test_mask_targets_of_a_box_140_px_wide_by_hand():
    # A cell filling x in [0, 72) and the whole height of a 140 x 140 image; the RoI is the image.
    # 28 bins of 5 px, 5 samples each at pixels 5j .. 5j + 4 (aligned): bins 0-13 lie inside
    # (1), bin 14 samples pixels 70-74 -> 2 of 5 inside -> 0.4 < 0.5 -> 0; bins 15-27 outside.
    dense = torch.zeros(1, 140, 140, dtype=torch.bool)
    dense[0, :, :72] = True
    got = mask_targets(MaskList.from_dense(dense), torch.tensor([0]), torch.tensor([[0.0, 0.0, 140.0, 140.0]]), 28)
    want = torch.zeros(28, 28)
    want[:, :14] = 1.0
    torch.testing.assert_close(got[0], want)
    # Taller than wide (140 x 112): 4-px bins along x (samples at pixels 4j .. 4j + 3): bin 17
    # covers 68-71, all inside; bin 18 (72-75) none.
    got = mask_targets(MaskList.from_dense(dense[:, :, :112]), torch.tensor([0]),
                       torch.tensor([[0.0, 0.0, 112.0, 140.0]]), 28)
    want = torch.zeros(28, 28)
    want[:, :18] = 1.0
    torch.testing.assert_close(got[0], want)


def test_padding_keeps_sizes_that_are_already_multiples_of_the_divisor():
    a, b = torch.zeros(1, 64, 96), torch.zeros(1, 32, 64)
    assert tuple(ImageList.from_tensors([a, b], 32).tensor.shape) == (2, 1, 64, 96)
    assert tuple(ImageList.from_tensors([torch.zeros(1, 65, 96)], 32).tensor.shape) == (1, 1, 96, 96)
    assert tuple(ImageList.from_tensors([torch.zeros(1, 33, 31)], 1).tensor.shape) == (1, 1, 33, 31)
    batch = ImageList.from_tensors([torch.ones(1, 64, 64), torch.full((1, 40, 50), 2.0)], 32, pad_value=-1.0)
    assert batch.image_sizes == [(64, 64), (40, 50)]
    assert float(batch.tensor[1, 0, 39, 49]) == 2.0 and float(batch.tensor[1, 0, 40, 0]) == -1.0
