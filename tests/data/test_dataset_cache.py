import numpy as np
import pytest
import torch

from maskrcnn.data.dsb2018 import DSB2018Dataset
from maskrcnn.data.sartorius import SartoriusDataset
from maskrcnn.formats.dataset_cache import CacheDataset, write_cache
from maskrcnn.structures import Instances, MaskList, Sample


def _same(a: Sample, b: Sample):
    assert a.image_id == b.image_id
    assert a.image.dtype == b.image.dtype and torch.equal(a.image, b.image)
    assert torch.equal(a.instances.masks.to_dense(), b.instances.masks.to_dense())
    assert torch.equal(a.instances.boxes, b.instances.boxes)
    assert torch.equal(a.instances.labels, b.instances.labels)


@pytest.mark.parametrize("codec", ["webp", "png"])
def test_cache_reads_back_the_reader_exactly(tmp_path, sartorius_dir, codec):
    reader = SartoriusDataset(str(sartorius_dir))
    out = tmp_path / "s.npz"
    summary = write_cache(reader, str(out), image_codec=codec)
    assert summary["images"] == len(reader)
    cache = CacheDataset(str(out))
    assert cache.image_ids == reader.image_ids and cache.class_names == reader.class_names
    assert cache.strata() == reader.strata()
    for i in range(len(reader)):
        _same(cache.load(i), reader.load(i))
        assert cache.load(i).meta["cell_type"] == reader.load(i).meta["cell_type"]


def test_cache_of_rgb_dsb_layout_keeps_three_channels(tmp_path, dsb_dir):
    reader = DSB2018Dataset(str(dsb_dir))
    write_cache(reader, str(tmp_path / "d.npz"))
    cache = CacheDataset(str(tmp_path / "d.npz"))
    for i in range(2):
        _same(cache.load(i), reader.load(i))


class _Mixed:
    """A reader with a colour image, a 16-bit-like image, a float image and an image without objects."""

    class_names = ("a", "b")
    image_ids = ["rgb", "u16", "float", "empty"]

    def __init__(self):
        rng = np.random.default_rng(0)
        m = torch.zeros(2, 9, 11, dtype=torch.bool)
        m[0, 1:4, 2:9] = True
        m[1, 5:9, 0:3] = True
        m[1, 6, 3:11] = True
        self.masks = MaskList.from_dense(m)
        self.images = [
            torch.from_numpy(rng.integers(0, 256, (3, 9, 11)).astype(np.float32) / 255),
            torch.from_numpy(rng.integers(0, 65536, (1, 9, 11)).astype(np.float32) / 65535),
            torch.rand(1, 9, 11),
            torch.rand(1, 9, 11),
        ]

    def __len__(self):
        return 4

    def strata(self):
        return ["x"] * 4

    def load(self, i):
        if i == 3:
            inst = Instances.empty((9, 11), with_masks=True)
        else:
            inst = Instances((9, 11), self.masks.tight_boxes(), torch.tensor([0, 1]), None, self.masks)
        img = self.images[i]
        if i > 0:
            img = img.expand(3, -1, -1).contiguous()  # the reader yields 3 channels throughout
        return Sample(img, inst, self.image_ids[i], {})


def test_cache_is_lossless_for_colour_16_bit_float_and_empty_images(tmp_path):
    reader = _Mixed()
    write_cache(reader, str(tmp_path / "m.npz"))
    cache = CacheDataset(str(tmp_path / "m.npz"))
    for i in range(4):
        _same(cache.load(i), reader.load(i))
    assert CacheDataset(str(tmp_path / "m.npz"), class_agnostic=True).load(0).instances.labels.tolist() == [0, 0]
    swapped = CacheDataset(str(tmp_path / "m.npz"), classes=("b", "a"))
    assert swapped.load(0).instances.labels.tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"cached classes \['b'\] are not in data.classes"):
        CacheDataset(str(tmp_path / "m.npz"), classes=("a",))


def test_bad_cache_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset cache not found"):
        CacheDataset(str(tmp_path / "none.npz"))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="junk.npz: not a readable dataset cache"):
        CacheDataset(str(tmp_path / "junk.npz"))


def test_the_cache_builder_shows_a_progress_bar(tmp_path, dsb_dir, capsys):
    from maskrcnn.cli.make_cache import main

    assert main(["--format", "dsb2018", "--root", str(dsb_dir), "--out", str(tmp_path / "c.npz")]) == 0
    captured = capsys.readouterr()
    n = len(DSB2018Dataset(str(dsb_dir)))
    # a bar on a terminal; here (not one) the plain lines: "cache: n/n img (100%), ..."
    assert "cache: " in captured.err and f"{n}/{n}" in captured.err and "100%" in captured.err
    assert "wrote" in captured.out


def test_cache_written_by_workers_is_the_same_file_content_and_maps_images(tmp_path):
    reader = _Mixed()
    write_cache(reader, str(tmp_path / "a.npz"))
    write_cache(reader, str(tmp_path / "b.npz"), workers=2)
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            assert np.array_equal(a[k], b[k]), k
    cache = CacheDataset(str(tmp_path / "b.npz"))
    assert isinstance(cache._image_bytes, np.memmap)  # images are read from the file, not loaded
    for i in range(4):
        _same(cache.load(i), reader.load(i))


def test_cache_with_deflated_images_still_reads(tmp_path):
    """Caches written before the images were stored uncompressed (np.savez_compressed) read the same."""
    reader = _Mixed()
    write_cache(reader, str(tmp_path / "new.npz"))
    with np.load(tmp_path / "new.npz") as z:
        np.savez_compressed(tmp_path / "old.npz", **{k: z[k] for k in z.files})
    old = CacheDataset(str(tmp_path / "old.npz"))
    assert not isinstance(old._image_bytes, np.memmap)
    for i in range(4):
        _same(old.load(i), reader.load(i))


def test_mask_bits_of_many_images_unpack_at_unaligned_offsets(tmp_path, sartorius_dir):
    reader = SartoriusDataset(str(sartorius_dir))
    write_cache(reader, str(tmp_path / "s.npz"), workers=2)
    cache = CacheDataset(str(tmp_path / "s.npz"))
    starts = cache._bit_offsets[cache._inst_offsets[:-1]]
    assert (starts % 8 != 0).any()  # some image's masks start inside a byte
    for i in range(len(reader)):
        _same(cache.load(i), reader.load(i))
