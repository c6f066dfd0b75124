import csv
import os

import numpy as np
import pytest
import torch

from maskrcnn.formats.kaggle_csv import KaggleCsvError, label_masks, masks_to_rows, read_labels, read_submission, SubmissionRow, write_labels, write_submission
from maskrcnn.formats.rle import decode, decode_crops
from maskrcnn.inference.submission import instances_to_rows, save_submission, validate_rows, validate_submission_rows
from maskrcnn.structures import Instances, MaskList
from tests.evaluation.shapes import dense, random_blobs, rect


def write_text(path, text):
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------- reading
def test_read_submission_rows_and_empty_prediction(tmp_path):
    p = write_text(tmp_path / "s.csv", "id,predicted\nimg1,1 3 10 2\nimg1,20 1\nimg2,\n")
    rows = read_submission(p)
    assert [(r.image_id, r.rle, r.line) for r in rows] == [("img1", "1 3 10 2", 2), ("img1", "20 1", 3), ("img2", "", 4)]


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty file"),
        ("ImageId,Annotation\na,1 2\n", "header"),
        ("id,predicted\na,1 2,3\n", "line 2: expected 2 fields"),
        ("id,predicted\na,1 2\n,1 2\n", "line 3: empty image id"),
    ],
)
def test_read_submission_errors_name_the_line(tmp_path, text, match):
    with pytest.raises(KaggleCsvError, match=match):
        read_submission(write_text(tmp_path / "s.csv", text))


def test_read_submission_missing_file(tmp_path):
    with pytest.raises(KaggleCsvError, match="not found"):
        read_submission(str(tmp_path / "nope.csv"))


def test_read_labels_sartorius_and_dsb_headers(tmp_path):
    p = write_text(
        tmp_path / "train.csv",
        "id,annotation,width,height,cell_type,plate_time\n"
        "a,1 2,5,4,astro,x\na,7 3,5,4,astro,x\nb,,6,3,cort,y\n",
    )
    labels = read_labels(p)
    assert list(labels) == ["a", "b"]
    assert (labels["a"].height, labels["a"].width, labels["a"].cell_type) == (4, 5, "astro")
    assert labels["a"].rles == ["1 2", "7 3"] and labels["a"].lines == [2, 3]
    assert labels["b"].rles == [] and labels["b"].cell_type == "cort"
    p = write_text(tmp_path / "sol.csv", "ImageId,EncodedPixels,Height,Width,Usage\nq,1 2,4,5,Public\n")
    labels = read_labels(p)
    assert (labels["q"].height, labels["q"].width, labels["q"].cell_type) == (4, 5, None)


@pytest.mark.parametrize(
    "text, match",
    [
        ("id,annotation,width\na,1 2,5\n", "missing column"),
        ("id,annotation,width,height\na,1 2,5,x\n", "line 2: width/height must be integers"),
        ("id,annotation,width,height\na,1 2,5,4\na,3 1,5,5\n", "line 3: image a is 5x5 here but 4x5"),
        ("id,annotation,width,height\na,1 2,0,4\n", "positive"),
    ],
)
def test_read_labels_errors(tmp_path, text, match):
    with pytest.raises(KaggleCsvError, match=match):
        read_labels(write_text(tmp_path / "l.csv", text))


# -------------------------------------------------------------------------- validation
SIZES = {"img1": (4, 5), "img2": (3, 3)}


def rows(*items):
    return [SubmissionRow(i, r, line) for line, (i, r) in enumerate(items, start=2)]


def test_valid_submission_has_no_errors():
    assert validate_submission_rows(rows(("img1", "1 3 6 2"), ("img1", "10 2"), ("img2", "")), SIZES) == []


def test_overlap_between_rows_names_both_lines_and_the_image():
    errs = validate_submission_rows(rows(("img1", "1 3"), ("img2", "1 1"), ("img1", "3 2")), SIZES)
    assert len(errs) == 1
    assert "lines 2 and 4" in errs[0] and "img1" in errs[0] and "pixel 3" in errs[0]


def test_overlap_with_an_earlier_long_run_is_found():
    # Row 2's long run covers row 4's run although row 3 starts between them.
    errs = validate_submission_rows(rows(("img1", "1 15"), ("img1", "16 1"), ("img1", "9 1")), SIZES)
    assert len(errs) == 1 and "lines 2 and 4" in errs[0]


@pytest.mark.parametrize(
    "rle, match",
    [
        ("5 2 1 2", "not sorted"),
        ("3 2 4 1", "not sorted or overlaps"),
        ("0 2", "start 0"),
        ("-1 2", "start -1"),
        ("3 0", "length 0"),
        ("1 2 3", "odd number"),
        ("1 x", "non-integer"),
        ("19 3", "runs past"),
        ("99999999999999999999999 1", "too large"),
    ],
)
def test_bad_pairs_are_reported_with_line_and_image(rle, match):
    errs = validate_submission_rows(rows(("img2", ""), ("img1", rle)), SIZES, source="sub.csv")
    assert len(errs) == 1
    assert match in errs[0] and "line 3" in errs[0] and "img1" in errs[0] and errs[0].startswith("sub.csv")


def test_unknown_image_id_is_an_error():
    errs = validate_submission_rows(rows(("nope", "1 1")), SIZES)
    assert len(errs) == 1 and "nope" in errs[0] and "not in the label file" in errs[0]


def test_without_sizes_only_syntax_order_and_overlaps_are_checked():
    assert validate_submission_rows(rows(("any", "1000 5"))) == []
    assert len(validate_submission_rows(rows(("any", "5 2 1 2")))) == 1
    assert len(validate_submission_rows(rows(("any", "1 5"), ("any", "5 1")))) == 1


# ----------------------------------------------------------------------------- writing
def test_write_submission_roundtrip_and_empty_image(tmp_path):
    m = random_blobs(np.random.default_rng(0), 5, 30, 40, overlap=False)
    masks = dense(m)
    out = masks_to_rows("im", masks) + masks_to_rows("none", MaskList.empty((30, 40)))
    assert out[-1] == ("none", "")
    path = str(tmp_path / "sub" / "submission.csv")
    write_submission(out, path)
    back = read_submission(path)
    assert [r.image_id for r in back] == [r[0] for r in out]
    assert validate_submission_rows(back, {"im": (30, 40), "none": (30, 40)}) == []
    got = decode_crops([r.rle for r in back if r.image_id == "im"], 30, 40)
    keep = m.reshape(len(m), -1).any(1)
    np.testing.assert_array_equal(got.to_dense().numpy(), m[keep])
    assert os.listdir(tmp_path / "sub") == ["submission.csv"]


def test_write_submission_is_atomic_on_failure(tmp_path):
    path = str(tmp_path / "submission.csv")
    write_submission([("a", "1 2")], path)

    def failing():
        yield ("b", "1 2")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_submission(failing(), path)
    assert [r.image_id for r in read_submission(path)] == ["a"]  # old file intact
    assert os.listdir(tmp_path) == ["submission.csv"]  # no temp file left behind


@pytest.mark.parametrize("order", ["row", "col"])
def test_write_labels_roundtrip_with_overlapping_objects(tmp_path, order):
    a, b = rect(12, 16, 0, 6, 0, 6), rect(12, 16, 3, 9, 3, 9)  # overlapping ground truth is allowed
    path = str(tmp_path / "labels.csv")
    write_labels(path, [("x", dense([a, b]), "astro"), ("y", MaskList.empty((12, 16)), None)], order=order)
    labels = read_labels(path)
    assert labels["x"].cell_type == "astro" and labels["y"].cell_type is None and labels["y"].rles == []
    np.testing.assert_array_equal(label_masks(labels["x"], order).to_dense().numpy(), np.stack([a, b]))
    assert len(label_masks(labels["y"], order)) == 0


def test_masks_to_rows_thresholds_soft_masks():
    soft = torch.zeros(1, 6, 6)
    soft[0, 1:3, 1:3] = 0.9
    soft[0, 4, 4] = 0.2
    (row,) = masks_to_rows("s", MaskList.from_dense(soft))
    assert row == ("s", "8 2 14 2")


# ------------------------------------------------------------ predictions -> submission
def _final(dense):
    ml = MaskList.from_dense(dense, pad=0)
    n = dense.shape[0]
    return Instances(tuple(dense.shape[1:]), ml.tight_boxes(), torch.zeros(n, dtype=torch.long), torch.ones(n), ml)


def test_rows_decode_to_the_masks_and_empty_images_get_one_row(tmp_path):
    d = torch.zeros((2, 7, 9), dtype=torch.bool)
    d[0, 0, 7:9] = True
    d[0, 1, 0:3] = True  # joins the run of the row above in row-major order
    d[1, 4:7, 4] = True
    rows = instances_to_rows("a", _final(d))
    assert [r[0] for r in rows] == ["a", "a"]
    for k, (_, rle) in enumerate(rows):
        assert np.array_equal(decode(rle, 7, 9), d[k].numpy())
    assert rows[0][1] == "8 5"
    empty = instances_to_rows("b", Instances.empty((7, 9), with_scores=True, with_masks=True))
    assert empty == [("b", "")]
    out = tmp_path / "sub" / "submission.csv"
    save_submission(rows + empty, str(out), {"a": (7, 9), "b": (7, 9)})
    with open(out) as f:
        got = list(csv.reader(f))
    assert got == [["id", "predicted"], ["a", "8 5"], ["a", rows[1][1]], ["b", ""]]
    assert not [p for p in out.parent.iterdir() if p.name != "submission.csv"]  # no temp file left


def test_validation_rejects_overlaps_bad_pairs_and_missing_images(tmp_path):
    sizes = {"a": (4, 4), "b": (4, 4)}
    with pytest.raises(KaggleCsvError, match="lines 2 and 3 .*overlap"):
        validate_rows([("a", "1 3"), ("a", "3 2"), ("b", "")], sizes)
    with pytest.raises(KaggleCsvError, match="line 2"):
        validate_rows([("a", "5 2 1 2"), ("b", "")], sizes)
    with pytest.raises(KaggleCsvError, match="line 2"):
        validate_rows([("a", "0 2"), ("b", "")], sizes)
    with pytest.raises(KaggleCsvError, match="line 2"):
        validate_rows([("a", "15 3"), ("b", "")], sizes)
    with pytest.raises(KaggleCsvError, match="no row, e.g. 'b'"):
        validate_rows([("a", "1 2")], sizes)
    with pytest.raises(KaggleCsvError, match="'c'"):
        validate_rows([("a", "1 2"), ("b", ""), ("c", "")], sizes)
    validate_rows([("a", "1 2"), ("a", "3 2"), ("b", "")], sizes)  # touching runs are fine
    out = tmp_path / "s.csv"
    with pytest.raises(KaggleCsvError):
        save_submission([("a", "1 3"), ("a", "3 2"), ("b", "")], str(out), sizes)
    assert not out.exists()


def test_soft_masks_are_refused():
    d = torch.zeros((1, 5, 5))
    d[0, 1:3, 1:3] = 0.7
    inst = _final(d > 0)
    inst = inst.replace(masks=MaskList(inst.masks.crops.float(), inst.masks.origins, inst.image_size))
    with pytest.raises(ValueError, match="binary"):
        instances_to_rows("x", inst)
