"""Tile ownership on the exact core boundaries, with the boundaries worked out by hand.

Tiles of 128 px overlapping by at least 32 (stride 96): along 300 px, k = ceil((300 - 32) / 96) = 3
tiles starting at 0, 172 // 2 = 86 and 172; core boundaries at the middle of each actual overlap,
(86 + 128) // 2 = 107 and (172 + 86 + 128) // 2 = 193. Along 200 px: 2 tiles at 0 and 72, boundary
(72 + 128) // 2 = 100. A core is ``[start, end)``: a box centred exactly on a boundary belongs to
the tile on its right (below), so that each object has exactly one owner.
"""
import pytest
import torch

from maskrcnn.inference.stitching import stitch
from maskrcnn.inference.tile_grid import plan_tiles
from maskrcnn.structures import Instances, MaskList

torch.set_num_threads(1)


def test_core_boundaries_by_hand():
    grid = plan_tiles((200, 300), 128, 32)
    assert grid.xs == (0, 86, 172) and grid.ys == (0, 72)
    assert grid.core_x == (0, 107, 193, 300) and grid.core_y == (0, 100, 200)


def test_points_on_core_boundaries_belong_to_the_right_and_lower_tile():
    grid = plan_tiles((200, 300), 128, 32)
    pts = torch.tensor([[106.5, 50.0], [107.0, 50.0], [192.99, 50.0], [193.0, 50.0], [50.0, 99.5], [50.0, 100.0],
                        [107.0, 100.0], [0.0, 0.0], [299.5, 199.5]])
    # tile = row * 3 + col
    assert grid.owner(pts).tolist() == [0, 1, 1, 2, 0, 3, 4, 0, 5]


def _square(x0, y0, s, image_size, score):
    crops = torch.ones(1, s, s)
    return Instances(image_size, torch.tensor([[x0, y0, x0 + s, y0 + s]], dtype=torch.float32),
                     torch.zeros(1, dtype=torch.long), torch.tensor([score]), MaskList(crops, torch.tensor([[x0, y0]]), image_size))


def test_a_box_centred_on_a_boundary_is_kept_once_by_ownership():
    # One 10-px object centred on x = 107 (box 102..112), seen whole by tiles 0 and 1 (predictions
    # already in the whole image's pixels): ownership keeps tile 1's view only, whatever the scores.
    grid = plan_tiles((200, 300), 128, 32)
    tiles = []
    for t in range(len(grid)):
        if t in (0, 1):
            tiles.append(_square(102, 40, 10, (200, 300), 0.9 if t == 0 else 0.6))
        else:
            tiles.append(_square(0, 0, 1, (200, 300), 0.1)[:0])  # no detection in the other tiles
    out = stitch(tiles, grid, merge=False)
    assert len(out) == 1 and float(out.scores[0]) == pytest.approx(0.6)
    assert out.boxes.tolist() == [[102.0, 40.0, 112.0, 50.0]]


def test_views_dropped_by_ownership_leave_an_empty_result_of_the_whole_image():
    # Tile 0 sees a whole square centred in tile 1's core (x = 113), tile 1 another one centred in
    # tile 0's core (x = 98), both inside the tiles' shared region and not matching each other: no
    # owner contributed a view to either, so both go, and the empty result is the whole image's.
    grid = plan_tiles((200, 300), 128, 32)
    tiles = []
    for t in range(len(grid)):
        if t in (0, 1):
            tiles.append(_square(110 if t == 0 else 95, 40, 6, (200, 300), 0.9))
        else:
            tiles.append(_square(0, 0, 1, (200, 300), 0.1)[:0])
    out = stitch(tiles, grid, merge=True)
    assert len(out) == 0 and out.image_size == (200, 300)
