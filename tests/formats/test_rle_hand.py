"""Run-length encoding against strings written by hand (round trips cannot see a consistent swap).

Conventions (../shared/CONVENTIONS.md): starts are 1-indexed; ``row`` numbers pixels left to right
then top to bottom (Sartorius), ``col`` top to bottom then left to right (DSB2018's own files).
The image here is 2 high and 4 wide:

    row order:  0 1 2 3      col order:  0 2 4 6
                4 5 6 7                  1 3 5 7
"""
import numpy as np
import pytest
import torch

from maskrcnn.formats import rle

H, W = 2, 4


def _mask(*pixels):
    m = np.zeros((H, W), dtype=bool)
    for y, x in pixels:
        m[y, x] = True
    return m


CASES = [
    # (rle, order, pixels (y, x))
    ("1 3", "row", [(0, 0), (0, 1), (0, 2)]),
    ("1 3", "col", [(0, 0), (1, 0), (0, 1)]),
    ("4 2", "row", [(0, 3), (1, 0)]),  # runs on past the end of the first row
    ("4 2", "col", [(1, 1), (0, 2)]),
    ("2 1 8 1", "row", [(0, 1), (1, 3)]),
    ("3 1 8 1", "col", [(0, 1), (1, 3)]),
    ("1 8", "row", [(y, x) for y in range(H) for x in range(W)]),
]


@pytest.mark.parametrize("text, order, pixels", CASES)
def test_decode_by_hand(text, order, pixels):
    want = _mask(*pixels)
    assert np.array_equal(rle.decode(text, H, W, order), want)
    assert torch.equal(rle.decode_crops([text], H, W, order).to_dense()[0], torch.from_numpy(want))


@pytest.mark.parametrize("text, order, pixels", CASES)
def test_encode_by_hand(text, order, pixels):
    m = _mask(*pixels)
    assert rle.encode(m, order) == text
    ml = rle.decode_crops([rle.encode(m, order)], H, W, order)
    assert rle.encode_crops(ml.crops, ml.origins, (H, W), order) == [text]


def test_first_pixel_is_start_one():
    assert rle.encode(_mask((0, 0))) == "1 1"
    assert rle.encode(_mask((1, 3))) == "8 1"
    with pytest.raises(rle.RLEError, match="1-indexed"):
        rle.decode("0 1", H, W)
    assert rle.decode("8 1", H, W)[1, 3] and rle.decode("8 1", H, W).sum() == 1
