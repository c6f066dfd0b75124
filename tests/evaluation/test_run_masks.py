"""RunMasks (masks as their RLE runs): areas, tight boxes and pair intersections against dense masks."""
import numpy as np
import pytest
import torch

from maskrcnn.evaluation.run_masks import RunMasks, run_pair_intersections
from maskrcnn.formats.rle import RLEError, encode
from maskrcnn.structures import MaskList


def _dense_boxes(masks):
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if ys.size else [0, 0, 0, 0])
    return np.array(out, dtype=np.int64).reshape(-1, 4)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("order", ["row", "col"])
def test_areas_boxes_and_intersections_equal_the_dense_masks(seed, order):
    rng = np.random.default_rng(seed)
    H, W = (int(v) for v in rng.integers(1, 24, 2))
    na, nb = (int(v) for v in rng.integers(0, 6, 2))
    # sparse and dense masks; random ones have runs that wrap from one row to the next
    A = rng.random((na, H, W)) < rng.random()
    B = rng.random((nb, H, W)) < rng.random()
    a = RunMasks.from_rles([encode(m, order) for m in A], H, W, order)
    b = RunMasks.from_rles([encode(m, order) for m in B], H, W, order)
    assert len(a) == na and a.image_size == (H, W)
    np.testing.assert_array_equal(a.areas(), A.reshape(na, H * W).sum(1))
    np.testing.assert_array_equal(a.tight_boxes(), _dense_boxes(A))
    ii, jj = (g.ravel() for g in np.meshgrid(np.arange(na), np.arange(nb), indexing="ij"))
    expect = (A[:, None] & B[None]).reshape(na, nb, H * W).sum(-1).ravel()
    np.testing.assert_array_equal(run_pair_intersections(a, b, ii, jj), expect)
    if na:
        assert torch.equal(a.to_masklist().to_dense(), torch.from_numpy(A))
        assert torch.equal(RunMasks.from_masklist(MaskList.from_dense(torch.from_numpy(A))).to_masklist().to_dense(),
                           torch.from_numpy(A))
        k = [int(v) for v in rng.integers(0, na, 3)]
        np.testing.assert_array_equal(a[k].areas(), A[k].reshape(3, H * W).sum(1))


def test_label_runs_may_be_unsorted_overlapping_and_touching():
    # one object: pixels 10-14 (1-indexed 11 5), 0-2, 12-17 (overlaps the first), 18-19 (touches it)
    m = RunMasks.from_rles(["11 5 1 3 13 6 19 2", "5 1"], 4, 5, strict=False)
    assert m.starts.tolist() == [0, 10, 4] and m.lengths.tolist() == [3, 10, 1] and m.owner.tolist() == [0, 0, 1]
    assert m.areas().tolist() == [13, 1]
    with pytest.raises(RLEError, match="labels.csv: row 7: RLE pair 1"):
        RunMasks.from_rles(["11 5 1 3"], 4, 5, source="labels.csv", rows=[7])  # strict: unsorted is an error


def test_empty_and_objects_without_runs():
    e = RunMasks.empty((3, 4))
    assert len(e) == 0 and e.areas().size == 0 and e.tight_boxes().shape == (0, 4)
    m = RunMasks.from_rles(["", "2 2"], 3, 4)
    assert m.areas().tolist() == [0, 2] and m.tight_boxes().tolist() == [[0, 0, 0, 0], [1, 0, 3, 1]]
    assert run_pair_intersections(m, m, np.array([0, 1]), np.array([1, 1])).tolist() == [0, 2]
