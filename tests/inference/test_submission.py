import csv

import numpy as np
import pytest
import torch

from maskrcnn.data.rle import decode
from maskrcnn.evaluation.submission import SubmissionError
from maskrcnn.inference.submission import instances_to_rows, save_submission, validate_rows
from maskrcnn.structures import Instances, MaskList


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
    with pytest.raises(SubmissionError, match="lines 2 and 3 .*overlap"):
        validate_rows([("a", "1 3"), ("a", "3 2"), ("b", "")], sizes)
    with pytest.raises(SubmissionError, match="line 2"):
        validate_rows([("a", "5 2 1 2"), ("b", "")], sizes)
    with pytest.raises(SubmissionError, match="line 2"):
        validate_rows([("a", "0 2"), ("b", "")], sizes)
    with pytest.raises(SubmissionError, match="line 2"):
        validate_rows([("a", "15 3"), ("b", "")], sizes)
    with pytest.raises(SubmissionError, match="no row, e.g. 'b'"):
        validate_rows([("a", "1 2")], sizes)
    with pytest.raises(SubmissionError, match="'c'"):
        validate_rows([("a", "1 2"), ("b", ""), ("c", "")], sizes)
    validate_rows([("a", "1 2"), ("a", "3 2"), ("b", "")], sizes)  # touching runs are fine
    out = tmp_path / "s.csv"
    with pytest.raises(SubmissionError):
        save_submission([("a", "1 3"), ("a", "3 2"), ("b", "")], str(out), sizes)
    assert not out.exists()


def test_soft_masks_are_refused():
    d = torch.zeros((1, 5, 5))
    d[0, 1:3, 1:3] = 0.7
    inst = _final(d > 0)
    inst = inst.replace(masks=MaskList(inst.masks.crops.float(), inst.masks.origins, inst.image_size))
    with pytest.raises(ValueError, match="binary"):
        instances_to_rows("x", inst)
