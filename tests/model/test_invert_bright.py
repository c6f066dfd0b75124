"""model.input.invert_bright: images with a bright background are inverted inside the model."""
import torch

from maskrcnn.config import from_dict, load_config, to_dict
from maskrcnn.model import build_model
from maskrcnn.model.normalize import invert_bright_ranges, normalize_by_ranges, percentile_ranges, unit_ranges
from tests.model.helpers import disks_sample, tiny_model_config


def _bright(image):
    return 1.0 - 0.8 * image  # dark objects on a light background (brightfield, stained tissue)


def test_a_bright_image_gives_the_model_input_of_its_inverse():
    model = build_model(tiny_model_config("model.input.invert_bright=true")).eval()
    image, _ = disks_sample(64, 80)
    bright = _bright(image)
    assert float(bright.mean()) > 0.5 > float(image.mean())
    got = model.preprocess([bright])[0].tensor
    want = model.preprocess([1.0 - bright])[0].tensor
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    plain = build_model(tiny_model_config()).eval()
    assert not torch.allclose(plain.preprocess([bright])[0].tensor, want)  # off by default


def test_a_dark_image_is_left_bit_for_bit_as_it_was():
    image, _ = disks_sample(64, 80)
    on = build_model(tiny_model_config("model.input.invert_bright=true")).eval()
    off = build_model(tiny_model_config()).eval()
    assert torch.equal(on.preprocess([image])[0].tensor, off.preprocess([image])[0].tensor)


def test_rgb_stained_image_to_a_gray_model_is_grayed_then_inverted():
    model = build_model(tiny_model_config("model.input.invert_bright=true")).eval()  # in_channels 1
    image, _ = disks_sample(48, 64)
    stain = torch.stack([1.0 - 0.5 * image[0], 1.0 - 0.9 * image[0], 1.0 - 0.3 * image[0]])  # H&E-like
    got = model.preprocess([stain])[0].tensor
    want = model.preprocess([1.0 - stain.mean(0, keepdim=True)])[0].tensor
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_the_decision_is_the_whole_images_for_a_tile():
    model = build_model(tiny_model_config("model.input.invert_bright=true")).eval()
    image, _ = disks_sample(96, 128)
    bright = _bright(image)
    tile = bright[:, 0:40, 0:40].clone()
    tile[:, :30] = 0.1  # a tile that is mostly dark although its image is bright
    whole = bright.clone()
    whole[:, 0:40, 0:40] = tile
    ranges = model.input_ranges([whole])
    assert torch.equal(ranges[0], torch.tensor([[1.0, 0.0]]))  # (lo, hi) swapped: inverted
    given = model.preprocess([tile], input_ranges=ranges)[0].tensor[0, :, :40, :40]
    torch.testing.assert_close(given, model.preprocess([whole])[0].tensor[0, :, :40, :40])
    own = model.preprocess([tile])[0].tensor[0, :, :40, :40]
    assert not torch.allclose(own, given)  # alone, the tile would not have been inverted


def test_with_percentiles_a_bright_image_maps_its_high_percentile_to_0_and_low_to_1():
    model = build_model(tiny_model_config("model.input.invert_bright=true", "model.input.normalize=percentile")).eval()
    plain = build_model(tiny_model_config()).eval()
    image, _ = disks_sample(64, 80)
    image = image + 0.05 * torch.rand(image.shape, generator=torch.Generator().manual_seed(1))
    bright = 0.9 - 0.6 * image
    lo, hi = percentile_ranges([bright], model.percentile_low, model.percentile_high)[0][0].tolist()
    want = plain.preprocess([(hi - bright) / (hi - lo)])[0].tensor
    torch.testing.assert_close(model.preprocess([bright])[0].tensor, want, atol=1e-5, rtol=0)
    dark = model.preprocess([image])[0].tensor  # a dark image keeps the usual percentile mapping
    lo, hi = percentile_ranges([image], model.percentile_low, model.percentile_high)[0][0].tolist()
    torch.testing.assert_close(dark, plain.preprocess([(image - lo) / (hi - lo)])[0].tensor, atol=1e-5, rtol=0)


def test_inverted_ranges_map_hi_to_0_and_lo_to_1():
    x = torch.tensor([[[0.2, 0.5, 0.8]]])
    r = invert_bright_ranges([x + 0.5], unit_ranges([x + 0.5]))[0]  # mean 1.0 > 0.5
    torch.testing.assert_close(normalize_by_ranges(x + 0.5, r), 1.0 - (x + 0.5))
    torch.testing.assert_close(normalize_by_ranges(x, torch.tensor([[0.8, 0.2]])), torch.tensor([[[1.0, 0.5, 0.0]]]))


def test_the_key_travels_with_the_checkpoint_config():
    cfg = load_config(None, ["model.input.invert_bright=true"])
    assert from_dict(to_dict(cfg)).model.input.invert_bright is True
    assert load_config(None).model.input.invert_bright is False
