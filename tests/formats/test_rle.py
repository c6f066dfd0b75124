import numpy as np
import pytest
import torch

from maskrcnn.formats import rle


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
    runs, owner, bad = rle.parse_rle_batch(strs, 6, 6)
    ref = [rle.parse_rle(s, 6, 6) for s in strs]
    assert np.array_equal(runs, np.concatenate(ref))
    assert owner.tolist() == [0, 0, 2, 3, 3] and bad == []


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


@pytest.mark.parametrize("order", ["row", "col"])
def test_decode_crops_without_padding_matches_dense_decode(order):
    rng = np.random.default_rng(1)
    for _ in range(10):
        h, w = (int(v) for v in rng.integers(1, 25, size=2))
        m = rng.random((int(rng.integers(0, 6)), h, w)) < 0.3
        rles = [rle.encode(x, order) for x in m]
        ml = rle.decode_crops(rles, h, w, order, pad=0)
        assert ml.image_size == (h, w) and not ml.is_soft
        expected = np.stack([rle.decode(r, h, w, order) for r in rles]) if rles else np.zeros((0, h, w), bool)
        np.testing.assert_array_equal(ml.to_dense().numpy(), expected)


def test_decoded_crops_without_padding_are_tight():
    # A run that wraps across rows: pixels 4..7 of a 5-wide image are (0,3),(0,4),(1,0),(1,1).
    ml = rle.decode_crops(["4 4"], 3, 5, pad=0)
    assert ml.origins.tolist() == [[0, 0]] and tuple(ml.crops.shape) == (1, 2, 5)
    ml = rle.decode_crops(["7 2"], 3, 5, pad=0)  # (1,1),(1,2)
    assert ml.origins.tolist() == [[1, 1]] and tuple(ml.crops.shape) == (1, 1, 2)


def test_decode_error_names_source_and_line():
    with pytest.raises(rle.RLEError, match="f.csv: row 7"):
        rle.decode_crops(["1 2", "1 99"], 3, 5, source="f.csv", rows=[6, 7])


INTEGER_RLES = ["1 3 6 2", "", "5 2 1 2", "0 2", "3 0", "1 2 3", "19 3", "99999999999999999999999 1", "-4 2",
                "2 2 3 1", "4 1 8 2 12 3", "20 1", "9223372036854775807 3", "2 9223372036854775807", "  "]


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("rles", [INTEGER_RLES, INTEGER_RLES + ["1 x", "-1 2", "1.5 2"]])  # one C parse / one by one
def test_batch_parser_agrees_with_parse_rle(strict, rles):
    runs, owner, bad = rle.parse_rle_batch(rles, 4, 5, strict=strict)
    expected_bad, expected_runs, expected_owner = [], [], []
    for k, r in enumerate(rles):
        try:
            v = rle.parse_rle(r, 4, 5, strict=strict)
        except rle.RLEError:  # huge numbers too
            expected_bad.append(k)
            continue
        expected_runs.append(v)
        expected_owner += [k] * len(v)
    assert bad == expected_bad
    np.testing.assert_array_equal(runs, np.concatenate(expected_runs))
    np.testing.assert_array_equal(owner, expected_owner)
