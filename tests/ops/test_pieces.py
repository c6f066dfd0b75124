from collections import deque

import pytest
import torch

from maskrcnn.config import TestConfig as Cfg
from maskrcnn.inference.filtering import filter_predictions
from maskrcnn.ops.pieces import count_pieces, label_pieces, largest_piece
from maskrcnn.structures import Instances, MaskList


def _bfs_pieces(mask):
    """Reference: the 4-connected pieces of one 2-D bool mask by breadth-first search, as sets of (y, x)."""
    h, w = mask.shape
    seen, pieces = set(), []
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or (y, x) in seen:
                continue
            piece, todo = set(), deque([(y, x)])
            seen.add((y, x))
            while todo:
                cy, cx = todo.popleft()
                piece.add((cy, cx))
                for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and (ny, nx) not in seen:
                        seen.add((ny, nx))
                        todo.append((ny, nx))
            pieces.append(piece)
    return pieces


def test_labels_match_breadth_first_search_on_random_crops():
    g = torch.Generator().manual_seed(3)
    crops = torch.rand(12, 17, 23, generator=g) > 0.45
    lab = label_pieces(crops)
    assert lab.dtype == torch.long
    assert torch.equal(lab > 0, crops)
    for k in range(crops.shape[0]):
        ref = _bfs_pieces(crops[k].numpy())
        got = {}
        for y, x in zip(*torch.nonzero(crops[k], as_tuple=True)):
            got.setdefault(int(lab[k, y, x]), set()).add((int(y), int(x)))
        assert sorted(map(sorted, got.values())) == sorted(map(sorted, ref))
        # a piece's label is 1 + the flat index of its first pixel: unique across crops
        for label, piece in got.items():
            y, x = min(piece)
            assert label == 1 + k * 17 * 23 + y * 23 + x
        assert int(count_pieces(crops[k:k + 1])[0]) == len(ref)


def test_diagonal_touch_is_two_pieces_and_a_spiral_is_one():
    diag = torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)[None]
    assert count_pieces(diag).tolist() == [2]
    # a one-pixel-wide spiral: its geodesic length (~200 px) is far above its size (21 px)
    s = torch.zeros(21, 21, dtype=torch.bool)
    top, left, bottom, right = 0, 0, 20, 20
    while top <= bottom and left <= right:  # draw the spiral's rings, leaving a gap to the next
        s[top, left:right + 1] = True
        s[top:bottom + 1, right] = True
        if bottom > top + 1:
            s[bottom, left:right + 1] = True
        if bottom > top + 3:
            s[top + 2:bottom + 1, left] = True
            s[top + 2, left:left + 2] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    assert len(_bfs_pieces(s.numpy())) == 1
    assert count_pieces(s[None]).tolist() == [1]
    assert torch.equal(largest_piece(s[None])[0], s)


def test_largest_piece_keeps_the_biggest_and_breaks_ties_by_first_pixel():
    c = torch.zeros(3, 8, 8, dtype=torch.bool)
    c[0, 0:2, 0:2] = True      # 4 px
    c[0, 4:8, 4:7] = True      # 12 px: kept
    c[0, 0, 7] = True          # 1 px island
    c[1, 5:7, 0:2] = True      # 4 px, later in row-major order
    c[1, 0:2, 5:7] = True      # 4 px, first: kept
    out = largest_piece(c)
    expect = torch.zeros_like(c)
    expect[0, 4:8, 4:7] = True
    expect[1, 0:2, 5:7] = True
    assert torch.equal(out, expect)
    assert largest_piece(torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0, 4, 4)


def _inst(dense, scores):
    ml = MaskList.from_dense(torch.as_tensor(dense))
    n = ml.crops.shape[0]
    return Instances(ml.image_size, ml.tight_boxes(), torch.zeros(n, dtype=torch.long),
                     torch.as_tensor(scores, dtype=torch.float32), ml)


def test_postprocess_drops_the_island_overlap_removal_leaves():
    d = torch.zeros(2, 20, 20)
    d[0, 5:15, 8:12] = 0.9    # A: a vertical bar, best score
    d[1, 8:11, 2:18] = 0.9    # B: a horizontal bar through A: A cuts it into 18 px left and 18 px right
    d[1, 8:11, 2:3] = 0.0     # ... make the left part 15 px, so the right part (18 px) is B's largest piece
    cfg = Cfg(score_thresh=(0.0,), min_area=(0,), image_class="none", overlap_min_keep=0.3)
    out = filter_predictions(_inst(d, [0.9, 0.8]), cfg)
    dense = out.masks.to_dense()
    expect_b = torch.zeros(20, 20, dtype=torch.bool)
    expect_b[8:11, 12:18] = True
    assert torch.equal(dense[1], expect_b)
    assert out.boxes[1].tolist() == [12.0, 8.0, 18.0, 11.0]
    off = filter_predictions(_inst(d, [0.9, 0.8]), Cfg(score_thresh=(0.0,), min_area=(0,), image_class="none",
                                                       overlap_min_keep=0.3, one_piece=False))
    assert off.masks.areas().tolist() == [40, 33]
    # the largest piece (18 px) is below min_area 20: B is dropped
    out = filter_predictions(_inst(d, [0.9, 0.8]), Cfg(score_thresh=(0.0,), min_area=(20,), image_class="none",
                                                       overlap_min_keep=0.3))
    assert out.scores.tolist() == pytest.approx([0.9])


def test_every_postprocessed_object_is_one_piece_on_random_overlaps():
    g = torch.Generator().manual_seed(1)
    n, H, W = 30, 40, 40
    d = torch.zeros((n, H, W))
    for k in range(n):
        y, x = torch.randint(0, H - 10, (2,), generator=g).tolist()
        d[k, y:y + 6 + k % 5, x:x + 5 + k % 6] = 0.9
    scores = torch.rand(n, generator=g)
    cfg = Cfg(score_thresh=(0.0,), min_area=(0,), image_class="none", overlap_min_keep=0.2)
    raw = filter_predictions(_inst(d, scores), Cfg(**{**cfg.__dict__, "one_piece": False}))
    assert int((count_pieces(raw.masks.crops) > 1).sum()) > 0  # the case arises here
    out = filter_predictions(_inst(d, scores), cfg)
    assert len(out) > 5
    assert count_pieces(out.masks.crops).tolist() == [1] * len(out)
