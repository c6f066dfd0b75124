"""Large images read by window: zarr arrays, OME-Zarr groups, tiled and pyramidal TIFF."""
import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

from maskrcnn.scale.sources import SourceError, open_source  # noqa: E402

RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 65535, size=(3, 70, 90), dtype=np.uint16)  # (C, H, W)


def _windows(src, ref):
    """Windows of ``src`` read back against numpy slices of ``ref`` [C, H, W]."""
    for x0, y0, x1, y1, step in [(0, 0, 90, 70, 1), (13, 7, 61, 45, 1), (0, 0, 90, 70, 4), (89, 69, 90, 70, 1)]:
        got = src.read(x0, y0, x1, y1, step)
        assert got.dtype == ref.dtype and np.array_equal(got, ref[:, y0:y1:step, x0:x1:step]), (x0, y0, step)


def test_zarr_arrays_in_each_layout(tmp_path):
    for name, stored, ref in [("yx", IMG[0], IMG[:1]), ("cyx", IMG, IMG), ("yxc", np.moveaxis(IMG, 0, -1), IMG)]:
        path = str(tmp_path / f"{name}.zarr")
        zarr.open_array(path, mode="w", shape=stored.shape, chunks=(16,) * stored.ndim, dtype=stored.dtype)[:] = stored
        src = open_source(path)
        assert src.shape == ref.shape and src.axes == name
        _windows(src, ref)
    assert open_source(str(tmp_path / "cyx.zarr")).subsample(max_pixels=700).shape == (3, 18, 23)  # step 3 gives 24 x 30 = 720, so 4


def test_ome_zarr_group_reads_its_full_resolution_dataset(tmp_path):
    path = str(tmp_path / "ome.zarr")
    g = zarr.open_group(path, mode="w")
    data = IMG[None, :, None]  # t, c, z, y, x
    g.create_array("0", shape=data.shape, chunks=(1, 1, 1, 32, 32), dtype=data.dtype)[:] = data
    g.create_array("1", shape=(1, 3, 1, 35, 45), chunks=(1, 1, 1, 32, 32), dtype=data.dtype)
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
            {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    g.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}, {"path": "1"}]}]
    src = open_source(path)
    assert src.shape == (3, 70, 90) and src.inner == "0"
    _windows(src, IMG)
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    plain.create_array("x", shape=(4, 4), dtype="uint8")
    with pytest.raises(SourceError, match="without OME-Zarr 'multiscales'"):
        open_source(str(tmp_path / "plain.zarr"))


def test_tiled_pyramidal_tiff_reads_level_0(tmp_path):
    path = str(tmp_path / "slide.ome.tif")
    data = np.moveaxis(IMG[:, :64, :80], 0, -1).astype(np.uint8)  # H, W, S (RGB)
    with tifffile.TiffWriter(path) as tif:
        tif.write(data, tile=(16, 16), subifds=1, photometric="rgb")
        tif.write(data[::2, ::2], tile=(16, 16), subfiletype=1, photometric="rgb")
    src = open_source(path)
    assert src.shape == (3, 64, 80) and src.kind == "tiff"
    ref = np.moveaxis(data, -1, 0)
    for x0, y0, x1, y1, step in [(0, 0, 80, 64, 1), (5, 9, 70, 40, 1), (0, 0, 80, 64, 3)]:
        assert np.array_equal(src.read(x0, y0, x1, y1, step), ref[:, y0:y1:step, x0:x1:step])


def test_what_cannot_be_read_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no such image"):
        open_source(str(tmp_path / "missing.zarr"))
    zarr.open_array(str(tmp_path / "vol.zarr"), mode="w", shape=(5, 6, 8, 8), dtype="uint8")
    with pytest.raises(SourceError, match=r"vol.zarr: a zarr array of shape \(5, 6, 8, 8\)"):
        open_source(str(tmp_path / "vol.zarr"))
    zarr.open_array(str(tmp_path / "i32.zarr"), mode="w", shape=(8, 8), dtype="int32")
    with pytest.raises(SourceError, match="int32"):
        open_source(str(tmp_path / "i32.zarr"))
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(SourceError, match="bad.tif: not a readable TIFF"):
        open_source(str(tmp_path / "bad.tif"))
    tifffile.imwrite(str(tmp_path / "z.tif"), np.zeros((4, 8, 8), np.uint8), photometric="minisblack", metadata={"axes": "ZYX"})
    with pytest.raises(SourceError, match="axis 'z' has 4 planes"):
        open_source(str(tmp_path / "z.tif"))
