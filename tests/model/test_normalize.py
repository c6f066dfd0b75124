"""Percentile normalisation of input images (model.input.normalize: percentile)."""
import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.config import ConfigError, from_dict, load_config, to_dict
from maskrcnn.formats.image_files import read_image
from maskrcnn.model import build_model
from maskrcnn.model.normalize import MIN_RANGE, normalize_by_ranges, percentile_ranges
from tests.model.helpers import disks_sample, tiny_model_config


def test_percentile_ranges_equal_numpy_for_a_batch_of_different_sizes_and_channels():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand((1, 17, 23), generator=g), torch.rand((3, 40, 9), generator=g) ** 3,
              torch.rand((1, 1, 1), generator=g), torch.randint(0, 5, (3, 8, 8), generator=g).float()]
    for low, high in ((1.0, 99.8), (0.0, 100.0), (3.0, 99.0), (50.0, 50.5)):
        got = percentile_ranges(images, low, high)
        for im, r in zip(images, got):
            a = im.reshape(im.shape[0], -1).double().numpy()
            want = np.stack([np.percentile(a, low, axis=1), np.percentile(a, high, axis=1)], axis=1)
            assert r.shape == (im.shape[0], 2)
            np.testing.assert_allclose(r.numpy(), want, rtol=1e-6, atol=1e-7)


def test_normalize_by_ranges_maps_the_percentiles_to_0_and_1_without_clipping():
    image = torch.tensor([[[0.0, 0.1, 0.2, 0.9]], [[0.5, 0.5, 0.5, 0.5]]])
    out = normalize_by_ranges(image, torch.tensor([[0.1, 0.2], [0.5, 0.5]]))
    torch.testing.assert_close(out[0, 0], torch.tensor([-1.0, 0.0, 1.0, 8.0]))  # not clipped
    torch.testing.assert_close(out[1, 0], torch.zeros(4))  # a constant channel is only shifted
    tiny = normalize_by_ranges(image, torch.tensor([[0.1, 0.1 + MIN_RANGE / 2]]))
    torch.testing.assert_close(tiny, image - 0.1)  # a near-zero range does not blow up noise
    with pytest.raises(ValueError, match=r"\[C, 2\]"):
        normalize_by_ranges(image, torch.zeros(3, 2))


def _fluorescence_u8(h=96, w=120, seed=0):
    """An 8-bit fluorescence-like image using the full range: dim noisy background, bright nuclei."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = rng.normal(12, 3, (h, w))
    for _ in range(12):
        cy, cx, r = rng.integers(8, h - 8), rng.integers(8, w - 8), rng.integers(4, 9)
        img += rng.uniform(120, 230) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    img = np.clip(img, 0, None)
    return np.round(img / img.max() * 255).astype(np.uint8)


def test_16bit_small_range_image_gives_the_same_model_input_as_its_8bit_full_range_version(tmp_path):
    u8 = _fluorescence_u8()
    u16 = np.round(u8.astype(np.float64) * 235 / 255).astype(np.uint16)  # values 0-235 of 65535
    assert u16.max() == 235
    Image.fromarray(u8).save(tmp_path / "a8.png")
    Image.fromarray(u16).save(tmp_path / "a16.tif")  # mode I;16: what a microscope writes
    im8, im16 = read_image(tmp_path / "a8.png"), read_image(tmp_path / "a16.tif")
    assert float(im16.max()) == pytest.approx(235 / 65535)  # 16-bit data / 65535: nearly black

    torch.manual_seed(0)
    pct = build_model(tiny_model_config("model.input.normalize=percentile")).eval()
    none = build_model(tiny_model_config()).eval()
    x8, x16 = pct.preprocess([im8])[0].tensor, pct.preprocess([im16])[0].tensor
    std = float(pct.pixel_std)
    # The same input up to the quantisation of 236 levels against 256: the pixel and the two
    # percentiles each move by at most half a 16-bit level, i.e. 1.5 levels of the 235 * (hi - lo) in the range.
    (r8,) = pct.input_ranges([im8])
    levels = 235 * float(r8[0, 1] - r8[0, 0])
    assert float((x8 - x16).abs().max()) * std * levels < 1.5
    # Without normalisation the 16-bit image is a different, nearly constant input.
    n8, n16 = none.preprocess([im8])[0].tensor, none.preprocess([im16])[0].tensor
    assert float((n8 - n16).abs().max()) * std > 0.9
    assert float(n16[..., :96, :120].std()) * std < 0.002


def test_16bit_values_keep_their_precision_through_reading_and_normalisation(tmp_path):
    rng = np.random.default_rng(1)
    u16 = rng.integers(1000, 1012, (40, 50)).astype(np.uint16)  # 12 levels: a very small range
    Image.fromarray(u16).save(tmp_path / "b.tif")
    im = read_image(tmp_path / "b.tif")
    (r,) = percentile_ranges([im], 1.0, 99.8)
    out = normalize_by_ranges(im, r)[0].double().numpy()
    a = u16.astype(np.float64)
    lo, hi = np.percentile(a, 1.0), np.percentile(a, 99.8)
    np.testing.assert_allclose(out, (a - lo) / (hi - lo), atol=2e-4)
    assert len(np.unique(np.round(out, 3))) == 12  # every level stays distinct


def test_a_batch_is_normalised_per_image_as_each_image_alone():
    torch.manual_seed(0)
    model = build_model(tiny_model_config("model.input.normalize=percentile",
                                          "model.input.percentile_low=2", "model.input.percentile_high=98")).eval()
    a, _ = disks_sample(64, 80)
    b, _ = disks_sample(48, 64, disks=((20, 20, 7, 1),))
    b = b * 0.01 + 0.002  # a dim image in the same batch as a bright one
    batch, _ = model.preprocess([a, b])
    for k, im in enumerate((a, b)):
        alone, _ = model.preprocess([im])
        h, w = im.shape[-2:]
        torch.testing.assert_close(batch.tensor[k, :, :h, :w], alone.tensor[0, :, :h, :w])
    lo = (0 - float(model.pixel_mean)) / float(model.pixel_std)
    hi = (1 - float(model.pixel_mean)) / float(model.pixel_std)
    for k, im in enumerate((a, b)):  # both images span the same normalised range
        v = batch.tensor[k, :, :im.shape[-2], :im.shape[-1]]
        assert float(v.min()) == pytest.approx(lo, abs=1e-4) and float(v.max()) == pytest.approx(hi, abs=1e-4)


def test_rgb_channels_are_normalised_each_by_its_own_percentiles():
    torch.manual_seed(0)
    model = build_model(tiny_model_config("model.input.normalize=percentile", "model.input.in_channels=3",
                                          "model.input.pixel_mean=[0,0,0]", "model.input.pixel_std=[1,1,1]")).eval()
    g = torch.Generator().manual_seed(2)
    im = torch.rand((3, 30, 40), generator=g) * torch.tensor([0.1, 0.5, 1.0])[:, None, None]
    x = model.preprocess([im])[0].tensor[0, :, :30, :40]
    for c in range(3):
        v = x[c].flatten().double().numpy()
        assert np.percentile(v, 1.0) == pytest.approx(0.0, abs=1e-5)
        assert np.percentile(v, 99.8) == pytest.approx(1.0, abs=1e-5)
    gray = torch.rand((1, 30, 40), generator=g) * 0.05
    x = model.preprocess([gray])[0].tensor[0, :, :30, :40]  # gray -> 3 equal channels
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_given_ranges_normalise_a_tile_as_the_whole_image():
    torch.manual_seed(0)
    model = build_model(tiny_model_config("model.input.normalize=percentile")).eval()
    image, _ = disks_sample(96, 128)
    image = image + 0.05 * torch.rand(image.shape, generator=torch.Generator().manual_seed(3))
    ranges = model.input_ranges([image])
    whole = model.preprocess([image])[0].tensor[0]
    tile = image[:, 10:74, 40:104]
    own = model.preprocess([tile])[0].tensor[0, :, :64, :64]
    given = model.preprocess([tile], input_ranges=ranges)[0].tensor[0, :, :64, :64]
    torch.testing.assert_close(given, whole[:, 10:74, 40:104])
    assert not torch.allclose(own, given)  # a tile's own percentiles differ from the image's
    out_given = model([tile], input_ranges=ranges)  # and forward passes them through
    assert len(out_given) == 1 and out_given[0].image_size == (64, 64)
    with pytest.raises(ValueError, match="input ranges"):
        model.preprocess([tile, tile], input_ranges=ranges)
    assert build_model(tiny_model_config()).input_ranges([image]) is None


def test_default_none_keeps_the_old_input_and_training_normalises_too():
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    assert model.normalize == "none"
    image, gt = disks_sample(64, 80)
    x = model.eval().preprocess([image])[0].tensor[0, :, :64, :80]
    torch.testing.assert_close(x, (image - 0.4) / 0.3)
    pct = build_model(tiny_model_config("model.input.normalize=percentile")).train()
    bt, _ = pct.preprocess([image])
    ev, _ = pct.eval().preprocess([image])
    torch.testing.assert_close(bt.tensor, ev.tensor)  # the same mapping in training and inference
    pct.train()
    losses = pct([image * 0.003], [gt])  # a dim 16-bit-like image trains like a bright one
    assert all(torch.isfinite(v) for v in losses.values())


def test_config_keys_are_validated_and_travel_with_the_checkpoint_config():
    cfg = load_config(None, ["model.input.normalize=percentile", "model.input.percentile_low=0.5"])
    back = from_dict(to_dict(cfg))  # what a checkpoint stores and load_model rebuilds from
    assert back.model.input.normalize == "percentile" and back.model.input.percentile_low == 0.5
    m = build_model(tiny_model_config("model.input.normalize=percentile", "model.input.percentile_high=99"))
    assert (m.normalize, m.percentile_low, m.percentile_high) == ("percentile", 1.0, 99.0)
    assert load_config(None).model.input.normalize == "none"
    with pytest.raises(ConfigError, match="model.input.normalize"):
        load_config(None, ["model.input.normalize=minmax"])
    with pytest.raises(ConfigError, match="percentile_low"):
        load_config(None, ["model.input.percentile_low=99.9", "model.input.percentile_high=99"])
