import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.formats.image_files import ImageReadError, convert_channels, decode_image_bytes, is_gray, read_image, write_image

RNG = np.random.default_rng(0)


def _save(tmp_path, name, arr, mode=None, **kw):
    p = tmp_path / name
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    im.save(p, **kw)
    return p


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_8_and_16_bit_gray(tmp_path, ext):
    a8 = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    t = read_image(_save(tmp_path, f"a8.{ext}", a8))
    assert t.shape == (1, 5, 7) and t.dtype == torch.float32
    assert torch.equal(t[0], torch.from_numpy(a8).float() / 255)
    a16 = RNG.integers(0, 65536, (5, 7)).astype(np.uint16)
    a16[0, 0] = 65535
    t = read_image(_save(tmp_path, f"a16.{ext}", a16))
    assert t.shape == (1, 5, 7)
    assert torch.allclose(t[0], torch.from_numpy(a16.astype(np.float32)) / 65535)
    assert float(t.max()) == 1.0


def test_rgb_rgba_and_gray_plus_alpha(tmp_path):
    rgb = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    t = read_image(_save(tmp_path, "rgb.png", rgb))
    assert t.shape == (3, 4, 6)
    assert torch.equal(t, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    rgba = np.concatenate([rgb, RNG.integers(0, 256, (4, 6, 1), dtype=np.uint8)], 2)
    assert torch.equal(read_image(_save(tmp_path, "rgba.png", rgba)), t)  # alpha dropped
    la = np.stack([rgb[..., 0], rgb[..., 1]], 2)
    t_la = read_image(_save(tmp_path, "la.png", la, mode=None))
    assert t_la.shape == (1, 4, 6) and torch.equal(t_la[0], torch.from_numpy(rgb[..., 0]).float() / 255)
    pal = _save(tmp_path, "p.png", rgb, mode="P")
    assert read_image(pal).shape == (3, 4, 6)


def test_channel_conversion():
    g = torch.rand(1, 3, 4)
    rgb = convert_channels(g, 3)
    assert rgb.shape == (3, 3, 4) and is_gray(rgb)
    assert torch.equal(convert_channels(rgb, 1), g)  # gray stored as RGB comes back exactly
    col = torch.rand(3, 3, 4)
    assert not is_gray(col)
    lum = convert_channels(col, 1)
    assert torch.allclose(lum[0], 0.299 * col[0] + 0.587 * col[1] + 0.114 * col[2])


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ImageReadError, match="garbage.png"):
        read_image(bad)
    good = _save(tmp_path, "ok.png", RNG.integers(0, 256, (64, 64), dtype=np.uint8))
    trunc = tmp_path / "truncated.png"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="truncated.png"):
        read_image(trunc)
    with pytest.raises(ImageReadError, match="cache"):
        decode_image_bytes(b"\x89PNG\r\n\x1a\nxx", where="cache")


def test_write_image_round_trip_and_no_temp_left(tmp_path):
    img = torch.from_numpy(RNG.integers(0, 256, (3, 5, 6)).astype(np.float32) / 255)
    p = tmp_path / "sub" / "out.png"
    write_image(p, img)
    assert torch.equal(read_image(p), img)
    assert [f.name for f in p.parent.iterdir()] == ["out.png"]


def test_decompression_bombs_name_their_file(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 50), dtype=np.uint8)).save(path)
    # 2,000 pixels: over a limit of 1,500 Pillow warns (we name the file), over twice it refuses.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    with pytest.warns(Image.DecompressionBombWarning, match="big.png"):
        assert read_image(str(path)).shape == (1, 40, 50)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)
    with pytest.raises(ImageReadError, match=r"big\.png: refused as a possible decompression bomb"):
        read_image(str(path))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png: cannot decode image: the file is empty"):
        read_image(str(tmp_path / "empty.png"))
