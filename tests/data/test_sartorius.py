import csv
import shutil

import numpy as np
import pytest
import torch

from maskrcnn.data.sartorius import SartoriusDataset, SartoriusUnlabeled
from maskrcnn.formats.image_files import ImageReadError, write_image
from maskrcnn.formats.kaggle_csv import KaggleCsvError
from maskrcnn.formats.rle import RLEError


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _rows(d):
    with open(d / "train.csv", newline="") as f:
        return list(csv.reader(f))


def _write_rows(d, rows):
    with open(d / "train.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def test_reads_back_exactly_what_synthetic_wrote(sartorius_dir, synth):
    ds = SartoriusDataset(str(sartorius_dir))
    assert ds.image_ids == synth.image_ids
    assert ds.strata() == synth.strata()
    for i in range(len(ds)):
        a, b = ds.load(i), synth.load(i)
        assert torch.equal(a.image, b.image)
        assert torch.equal(a.instances.masks.to_dense(), b.instances.masks.to_dense())
        assert torch.equal(a.instances.boxes, a.instances.masks.tight_boxes())
        assert torch.equal(a.instances.labels, b.instances.labels)
        assert a.meta["cell_type"] == b.meta["cell_type"]


def test_class_agnostic_and_custom_class_order(sartorius_dir):
    ag = SartoriusDataset(str(sartorius_dir), class_agnostic=True)
    assert ag.class_names == ("cell",)
    assert all(int(ag.load(i).instances.labels.max()) == 0 for i in range(len(ag)))
    rev = SartoriusDataset(str(sartorius_dir), classes=("cort", "astro", "shsy5y"))
    s = rev.load(0)
    assert rev.class_names[int(s.instances.labels[0])] == s.meta["cell_type"]
    with pytest.raises(KaggleCsvError, match="is not one of the classes"):
        SartoriusDataset(str(sartorius_dir), classes=("a", "b"))


def test_missing_image_names_file_and_row(sartorius_dir, tmp_path):
    d = _copy(sartorius_dir, tmp_path / "s")
    first = _rows(d)[1][0]
    (d / "train" / f"{first}.png").unlink()
    with pytest.raises(FileNotFoundError, match=rf"line 2: image '{first}' has no file"):
        SartoriusDataset(str(d))


def test_malformed_and_overrunning_rle_name_the_row(sartorius_dir, tmp_path):
    d = _copy(sartorius_dir, tmp_path / "s")
    rows = _rows(d)
    rows[3][1] = "12 4 x 1"
    _write_rows(d, rows)
    ds = SartoriusDataset(str(d))
    with pytest.raises(RLEError, match=r"train.csv: row 4: RLE holds a non-integer value 'x'"):
        ds.load(ds.image_ids.index(rows[3][0]))
    rows = _rows(sartorius_dir)
    H, W = int(rows[1][3]), int(rows[1][2])
    rows[2][1] = f"{H * W - 2} 5"
    _write_rows(d, rows)
    ds = SartoriusDataset(str(d))
    with pytest.raises(RLEError, match=r"row 3: RLE pair 0 .* runs past the image"):
        ds.load(ds.image_ids.index(rows[2][0]))
    rows[2][1] = "   "
    _write_rows(d, rows)
    with pytest.raises(KaggleCsvError, match="line 3: empty annotation"):
        SartoriusDataset(str(d)).load(ds.image_ids.index(rows[2][0]))


def test_size_disagreeing_with_png_and_inconsistent_rows(sartorius_dir, tmp_path):
    d = _copy(sartorius_dir, tmp_path / "s")
    rows = _rows(d)
    image_id = rows[1][0]
    for r in rows[1:]:
        if r[0] == image_id:
            r[2] = str(int(r[2]) + 1)  # width off by one on every row of the image
    _write_rows(d, rows)
    with pytest.raises(KaggleCsvError, match=rf"{image_id}.png is 80 wide and 64 high .* line 2 says width 81"):
        SartoriusDataset(str(d)).load(0)
    rows = _rows(sartorius_dir)
    rows[2][3] = "99"  # one row of the image disagrees with the others
    _write_rows(d, rows)
    with pytest.raises(KaggleCsvError, match=r"line 3: image \S+ is 99x\d+ here but 64x\d+ on line 2"):
        SartoriusDataset(str(d))
    rows = _rows(sartorius_dir)
    rows[2][2] = "wide"
    _write_rows(d, rows)
    with pytest.raises(KaggleCsvError, match="line 3: width/height must be integers, got 'wide'"):
        SartoriusDataset(str(d))


def test_corrupt_png_is_named(sartorius_dir, tmp_path):
    d = _copy(sartorius_dir, tmp_path / "s")
    first = _rows(d)[1][0]
    (d / "train" / f"{first}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ImageReadError, match=f"{first}.png"):
        SartoriusDataset(str(d)).load(0)


def test_image_without_annotations_is_reported_not_silently_dropped(sartorius_dir, tmp_path):
    d = _copy(sartorius_dir, tmp_path / "s")
    write_image(d / "train" / "lonely.png", torch.zeros(1, 64, 80))
    with pytest.warns(UserWarning, match=r"1 images have no rows .*lonely"):
        ds = SartoriusDataset(str(d))
    assert "lonely" not in ds.image_ids


def test_unlabeled_folder_takes_cell_type_from_name(tmp_path):
    d = tmp_path / "train_semi_supervised"
    write_image(d / "astro[hippo]_A1_1.png", torch.rand(1, 8, 10))
    write_image(d / "shsy5y[diff]_B2_3.png", torch.rand(1, 8, 10))
    ds = SartoriusUnlabeled(str(tmp_path))
    assert ds.strata() == ["astro", "shsy5y"]
    s = ds.load(1)
    assert s.meta["cell_type"] == "shsy5y" and len(s.instances) == 0 and s.image.shape == (1, 8, 10)
    assert s.instances.masks is not None
    with pytest.raises(FileNotFoundError, match="unlabeled image folder not found"):
        SartoriusUnlabeled(str(tmp_path / "nope"))


def test_overlapping_ground_truth_is_kept(tmp_path):
    d = tmp_path / "o"
    write_image(d / "train" / "img.png", torch.zeros(1, 6, 8))
    a = np.zeros((6, 8), bool)
    a[1:4, 1:5] = True
    b = np.zeros((6, 8), bool)
    b[2:5, 3:7] = True
    from maskrcnn.formats.rle import encode

    rows = [["id", "annotation", "width", "height", "cell_type"],
            ["img", encode(a), "8", "6", "cort"], ["img", encode(b), "8", "6", "cort"]]
    _write_rows(d, rows)
    s = SartoriusDataset(str(d)).load(0)
    assert torch.equal(s.instances.masks.to_dense(), torch.from_numpy(np.stack([a, b])))
    assert s.instances.boxes.tolist() == [[1, 1, 5, 4], [3, 2, 7, 5]]
