import os

import numpy as np
import pytest
import torch

from maskrcnn.data.rle import RLEError, decode, encode
from maskrcnn.evaluation.submission import (
    SubmissionError,
    SubmissionRow,
    decode_to_masklist,
    label_masks,
    masks_to_rows,
    read_labels,
    read_submission,
    validate_submission_rows,
    write_labels,
    write_submission,
)
from maskrcnn.structures import MaskList
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
        ("ImageId,EncodedPixels\na,1 2\n", "header"),
        ("id,predicted\na,1 2,3\n", "line 2: expected 2 fields"),
        ("id,predicted\na,1 2\n,1 2\n", "line 3: empty image id"),
    ],
)
def test_read_submission_errors_name_the_line(tmp_path, text, match):
    with pytest.raises(SubmissionError, match=match):
        read_submission(write_text(tmp_path / "s.csv", text))


def test_read_submission_missing_file(tmp_path):
    with pytest.raises(SubmissionError, match="not found"):
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
    with pytest.raises(SubmissionError, match=match):
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


# ---------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("order", ["row", "col"])
def test_decode_to_masklist_matches_dense_decode(order):
    rng = np.random.default_rng(1)
    for _ in range(10):
        h, w = (int(v) for v in rng.integers(1, 25, size=2))
        m = rng.random((int(rng.integers(0, 6)), h, w)) < 0.3
        rles = [encode(x, order) for x in m]
        ml = decode_to_masklist(rles, h, w, order)
        assert ml.image_size == (h, w) and not ml.is_soft
        expected = np.stack([decode(r, h, w, order) for r in rles]) if rles else np.zeros((0, h, w), bool)
        np.testing.assert_array_equal(ml.to_dense().numpy(), expected)


def test_decoded_crops_are_tight():
    # A run that wraps across rows: pixels 4..7 of a 5-wide image are (0,3),(0,4),(1,0),(1,1).
    ml = decode_to_masklist(["4 4"], 3, 5)
    assert ml.origins.tolist() == [[0, 0]] and tuple(ml.crops.shape) == (1, 2, 5)
    ml = decode_to_masklist(["7 2"], 3, 5)  # (1,1),(1,2)
    assert ml.origins.tolist() == [[1, 1]] and tuple(ml.crops.shape) == (1, 1, 2)


def test_decode_error_names_source_and_line():
    with pytest.raises(RLEError, match="f.csv: row 7"):
        decode_to_masklist(["1 2", "1 99"], 3, 5, source="f.csv", lines=[6, 7])


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
    got = decode_to_masklist([r.rle for r in back if r.image_id == "im"], 30, 40)
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


@pytest.mark.parametrize("strict", [True, False])
def test_batch_parser_agrees_with_parse_rle(strict):
    from maskrcnn.data.rle import parse_rle
    from maskrcnn.evaluation.submission import parse_rle_batch

    rles = ["1 3 6 2", "", "5 2 1 2", "0 2", "3 0", "1 2 3", "1 x", "19 3", "99999999999999999999999 1",
            "-4 2", "2 2 3 1", "4 1 8 2 12 3", "20 1"]
    runs, owner, bad = parse_rle_batch(rles, 4, 5, strict=strict)
    expected_bad, expected_runs, expected_owner = [], [], []
    for k, r in enumerate(rles):
        try:
            v = parse_rle(r, 4, 5, strict=strict)
        except (RLEError, OverflowError):  # parse_rle lets huge numbers overflow
            expected_bad.append(k)
            continue
        expected_runs.append(v)
        expected_owner += [k] * len(v)
    assert bad == expected_bad
    np.testing.assert_array_equal(runs, np.concatenate(expected_runs))
    np.testing.assert_array_equal(owner, expected_owner)
