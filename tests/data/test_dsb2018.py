import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.data.dsb2018 import DSB2018Dataset, imaging_domain
from maskrcnn.formats.dsb_layout import DSB2018FormatError
from maskrcnn.formats.image_files import ImageReadError

from .conftest import DSB_ROOT


def _dense_from_files(d, image_id):
    md = os.path.join(d, image_id, "masks")
    return np.stack([np.asarray(Image.open(os.path.join(md, f))) > 0 for f in sorted(os.listdir(md))])


def test_reads_rgba_images_as_rgb_and_masks_as_crops(dsb_dir, synth):
    ds = DSB2018Dataset(str(dsb_dir))
    assert ds.class_names == ("nucleus",) and ds.image_ids == synth.image_ids
    for i in range(3):
        s = ds.load(i)
        ref = synth.load(i)
        assert s.image.shape == (3,) + tuple(ref.image.shape[1:])
        assert torch.equal(s.image[1], ref.image[0])
        dense = torch.from_numpy(_dense_from_files(dsb_dir, s.image_id))
        assert torch.equal(s.instances.masks.to_dense(), dense)
        assert torch.equal(s.instances.boxes, s.instances.masks.tight_boxes())
        assert s.instances.labels.tolist() == [0] * len(dense)
    gray = DSB2018Dataset(str(dsb_dir), channels=1).load(0)
    assert gray.image.shape[0] == 1


def test_bad_dsb_inputs(dsb_dir, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(dsb_dir, d)
    ids = sorted(os.listdir(d))
    # A mask whose size differs from the image.
    mdir = d / ids[0] / "masks"
    Image.fromarray(np.full((5, 5), 255, np.uint8)).save(mdir / "zz_small.png")
    ds = DSB2018Dataset(str(d))
    with pytest.raises(DSB2018FormatError, match=r"zz_small.png: mask is 5x5 \(WxH\) but its image is 80x64"):
        ds.load(0)
    (mdir / "zz_small.png").unlink()
    # An empty mask file: skipped with a warning naming it.
    Image.fromarray(np.zeros((64, 80), np.uint8)).save(mdir / "zz_empty.png")
    with pytest.warns(UserWarning, match="zz_empty.png"):
        s = ds.load(0)
    assert len(s.instances) == len(os.listdir(mdir)) - 1
    # An image with no nuclei: an empty masks/ folder gives a sample without objects.
    shutil.rmtree(d / ids[1] / "masks")
    with pytest.raises(FileNotFoundError, match="no masks/ folder"):
        DSB2018Dataset(str(d))
    (d / ids[1] / "masks").mkdir()
    with pytest.warns(UserWarning, match=f"1 image\\(s\\) have no mask PNG.*{ids[1]}"):  # said, not silent
        ds_bare = DSB2018Dataset(str(d))
    s = ds_bare.load(1)
    assert len(s.instances) == 0 and s.instances.masks is not None
    # A corrupt mask PNG and a missing image.
    (d / ids[2] / "masks" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(ImageReadError, match="broken.png"):
        ds_bare.load(2)
    (d / ids[3] / "images" / f"{ids[3]}.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"{ids[3]}.png not found"):
        DSB2018Dataset(str(d))


def test_imaging_domain_from_colour_and_background():
    dark = torch.full((3, 8, 8), 0.05)
    dark[:, 2:5, 2:5] = 0.9  # bright nuclei on black
    assert imaging_domain(dark) == "fluorescence"
    assert imaging_domain(1 - dark) == "brightfield"
    assert imaging_domain(dark[:1]) == "fluorescence"
    stained = (1 - dark).clone()
    stained[1] *= 0.6  # purple: red and blue above green
    assert imaging_domain(stained) == "histology"


def test_reader_reports_the_domain_as_cell_type(dsb_dir, tmp_path):
    assert {DSB2018Dataset(str(dsb_dir)).load(i).meta["cell_type"] for i in range(3)} == {"fluorescence"}
    # A colour image read as gray keeps its colour domain.
    d = tmp_path / "d"
    shutil.copytree(dsb_dir, d)
    i0 = sorted(os.listdir(d))[0]
    p = d / i0 / "images" / f"{i0}.png"
    a = np.asarray(Image.open(p)).copy()
    a[..., 1] = a[..., 1] // 2
    Image.fromarray(a).save(p)
    assert DSB2018Dataset(str(d), channels=1).load(0).meta["cell_type"] == "histology"


def test_strata_are_size_modality_and_brightness(dsb_dir):
    strata = DSB2018Dataset(str(dsb_dir)).strata()
    assert all(s.startswith("64x80/gray/") for s in strata)


@pytest.mark.skipif(not os.path.isdir(DSB_ROOT), reason="real DSB2018 data (../shared/data/dsb2018) not present")
def test_real_dsb2018_images():
    ds = DSB2018Dataset(DSB_ROOT)
    assert len(ds) == 664
    for i in (0, 331):
        s = ds.load(i)
        dense = torch.from_numpy(_dense_from_files(DSB_ROOT, s.image_id))
        assert torch.equal(s.instances.masks.to_dense(), dense)
        assert s.image.shape[0] == 3 and 0 <= float(s.image.min()) <= float(s.image.max()) <= 1
        assert len(s.instances) == len(os.listdir(os.path.join(DSB_ROOT, s.image_id, "masks")))
        assert torch.equal(s.instances.boxes, s.instances.masks.tight_boxes())
        # DSB2018 masks do not overlap.
        assert int(dense.sum(0).max()) == 1
