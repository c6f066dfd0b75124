"""Random crops reach every border: over many draws the window starts at 0 and at ``size - crop``
on both axes (an off-by-one would never show the last row or column to the model)."""
import torch

from maskrcnn.data.transforms.geometric import RandomCrop
from maskrcnn.structures import Instances, MaskList, Sample

torch.set_num_threads(1)


def test_crop_windows_cover_every_start_from_zero_to_the_last():
    # 10 x 13 image, 7 x 9 crops: y0 in {0..3}, x0 in {0..4}. Pixel values encode (row, column),
    # so the crop's first pixel tells where the window started.
    H, W = 10, 13
    image = (torch.arange(H)[:, None] * 100 + torch.arange(W)[None, :]).float()[None]
    dense = torch.zeros(1, H, W, dtype=torch.bool)
    dense[0, 4:6, 5:7] = True  # inside every window
    masks = MaskList.from_dense(dense)
    sample = Sample(image, Instances((H, W), masks.tight_boxes(), torch.zeros(1, dtype=torch.long), masks=masks), "im", {})
    crop = RandomCrop((7, 9))
    seen = set()
    for k in range(200):
        out = crop(sample, torch.Generator().manual_seed(k))
        assert tuple(out.image.shape) == (1, 7, 9)
        v = int(out.image[0, 0, 0])
        y0, x0 = divmod(v, 100)
        seen.add((y0, x0))
        assert torch.equal(out.image, image[:, y0:y0 + 7, x0:x0 + 9])
        assert out.instances.boxes.tolist() == [[5.0 - x0, 4.0 - y0, 7.0 - x0, 6.0 - y0]]
    assert {y for y, _ in seen} == {0, 1, 2, 3} and {x for _, x in seen} == {0, 1, 2, 3, 4}


def test_a_crop_as_large_as_the_image_keeps_it_whole():
    image = torch.rand(1, 8, 8)
    sample = Sample(image, Instances((8, 8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                                     masks=MaskList.empty((8, 8))), "im", {})
    out = RandomCrop((16, 8))(sample, torch.Generator().manual_seed(0))
    assert torch.equal(out.image, image)
