import numpy as np
import pytest
import torch

from maskrcnn.data import rle


@pytest.mark.parametrize("order", ["row", "col"])
def test_decode_crops_equals_dense_decode(order):
    rng = np.random.default_rng(1)
    for trial in range(20):
        H, W = (int(v) for v in rng.integers(1, 25, 2))
        n = int(rng.integers(1, 6))
        dense = rng.random((n, H, W)) < rng.uniform(0.05, 0.6)
        if trial % 4 == 0:
            dense[:, :, -1] = True  # runs that wrap from one line to the next
        strs = [rle.encode(d, order) for d in dense]
        for pad in (0, 1, 3):
            ml = rle.decode_crops(strs, H, W, order, pad=pad)
            assert ml.crops.dtype == torch.bool
            assert torch.equal(ml.to_dense(), torch.from_numpy(dense))
        ref = np.stack([rle.decode(s, H, W, order) for s in strs])
        assert np.array_equal(ref, dense)


def test_decode_crops_is_tight_and_keeps_empty_rows_in_place():
    m = np.zeros((10, 12), dtype=bool)
    m[3:5, 10:12] = True
    m[5, 0:2] = True  # one run wraps from row 4's end to row 5's start in row-major order
    s = rle.encode(m, "row")
    assert len(s.split()) == 4  # 2 runs: (3,10..11), then (4,10)->(5,1) as one
    ml = rle.decode_crops(["", s], 10, 12, pad=1)
    assert ml.crops[0].sum() == 0
    assert ml.origins[1].tolist() == [-1, 2]
    assert ml.crops.shape[1:] == (3 + 2, 12 + 2)
    assert torch.equal(ml.to_dense()[1], torch.from_numpy(m))
    assert ml.tight_boxes()[1].tolist() == [0.0, 3.0, 12.0, 6.0]


def test_parse_rle_batch_matches_parse_rle():
    strs = ["1 3 10 2", "", "5 1", "  7 2   20 4 "]
    runs, owner = rle.parse_rle_batch(strs, 6, 6)
    ref = [rle.parse_rle(s, 6, 6) for s in strs]
    assert np.array_equal(runs, np.concatenate(ref))
    assert owner.tolist() == [0, 0, 2, 3, 3]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("1 2 3", "odd number"),
        ("0 5", "1-indexed"),
        ("1 x", "non-integer"),
        ("4 2 1 2", "not sorted"),
        ("1 -3", "length -3"),
        ("90 20", "runs past"),
        ("1.5 2", "non-integer"),
    ],
)
def test_malformed_rle_names_file_and_row(bad, message):
    with pytest.raises(rle.RLEError, match=message) as e:
        rle.decode_crops(["1 2", bad, "3 1"], 10, 10, source="labels.csv", rows=[2, 3, 4])
    assert "labels.csv: row 3" in str(e.value)


def test_unsorted_runs_allowed_when_not_strict():
    ml = rle.decode_crops(["5 2 1 2"], 4, 4, strict=False)
    assert ml.to_dense()[0].reshape(-1).nonzero()[:, 0].tolist() == [0, 1, 4, 5]


@pytest.mark.parametrize("order", ["row", "col"])
def test_encode_crops_equals_encode_and_decode_inverts_it(order):
    rng = np.random.default_rng(5)
    dense = rng.random((4, 9, 13)) < 0.3
    dense[0, :, -1] = True  # runs joined across line ends
    dense[1] = False
    ml = rle.decode_crops([rle.encode(d, order) for d in dense], 9, 13, order)
    assert rle.encode_crops(ml.crops, ml.origins, (9, 13), order) == [rle.encode(d, order) for d in dense]
    assert rle.encode(dense[1]) == ""
    for d in dense:
        assert np.array_equal(rle.decode(rle.encode(d, order), 9, 13, order), d)
    assert np.array_equal(rle.decode_many([rle.encode(d, order) for d in dense], 9, 13, order), dense)
