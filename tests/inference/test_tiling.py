"""Tiled inference: with a predictor that reads objects from the image, tiled == whole by construction."""
import numpy as np
import pytest
import torch

from maskrcnn.config import ConfigError
from maskrcnn.config import TestConfig as Cfg
from maskrcnn.inference.filtering import filter_predictions
from maskrcnn.inference.stitching import stitch
from maskrcnn.inference.tile_grid import plan_tiles, tile_starts
from maskrcnn.inference.tiling import tiled_predict
from maskrcnn.structures import Instances
from tests.inference.stub_model import IdStubModel, draw_objects, random_blobs

STUB = IdStubModel(num_classes=2)


def predict_raw(tile):
    return STUB([tile])[0]


def as_objects(inst: Instances):
    """{object id: (binary dense mask, score, label, box)} of stub predictions (id read from the score order)."""
    masks = inst.masks.threshold(0.5).to_dense()
    out = []
    for k in range(len(inst)):
        out.append((masks[k], float(inst.scores[k]), int(inst.labels[k]), inst.boxes[k]))
    return sorted(out, key=lambda o: (-o[1], o[0].nonzero()[:1].tolist()))  # (an empty mask sorts first)


def assert_same(a: Instances, b: Instances, boxes: bool = True):
    assert a.image_size == b.image_size
    oa, ob = as_objects(a), as_objects(b)
    assert len(oa) == len(ob), (len(oa), len(ob))
    for (ma, sa, la, ba), (mb, sb, lb, bb) in zip(oa, ob):
        assert torch.equal(ma, mb)
        assert sa == pytest.approx(sb) and la == lb
        if boxes:
            assert torch.allclose(ba, bb)


def blob_image(n, H, W, seed, rmin=2, rmax=6):
    masks = random_blobs(n, H, W, seed=seed, rmin=rmin, rmax=rmax)
    return draw_objects(masks), masks


# ------------------------------------------------------------------------------ the grid
@pytest.mark.parametrize("length", [1, 63, 64, 65, 100, 127, 128, 129, 200, 333, 1000])
@pytest.mark.parametrize("size,overlap", [(64, 0), (64, 16), (64, 17), (96, 40), (100, 63), (128, 100)])
def test_tiles_cover_the_axis_with_the_overlap_and_cores_partition_it(length, size, overlap):
    grid = plan_tiles((length, length), size, overlap)
    xs, w = grid.xs, grid.tile_w
    assert xs[0] == 0 and xs[-1] + w == length and w == min(size, length)
    for a, b in zip(xs, xs[1:]):
        assert a < b and a + w - b >= overlap  # neighbours share at least `overlap` pixels
    c = grid.core_x
    assert c[0] == 0 and c[-1] == length and all(p < q for p, q in zip(c, c[1:]))
    for i, s in enumerate(xs):  # each core inside its tile, with half the overlap as margin inside
        assert s <= c[i] and c[i + 1] <= s + w
        if i > 0:
            assert c[i] - s >= overlap // 2
        if i < len(xs) - 1:
            assert s + w - c[i + 1] >= overlap // 2
    assert len(xs) == (1 if length <= size else -(-(length - overlap) // (size - overlap)))


def test_tile_starts_few_tiles():
    assert tile_starts(100, 64, 0) == [0, 36]
    assert tile_starts(64, 64, 10) == [0]


def test_bad_tiling_arguments():
    with pytest.raises(ValueError, match="at least 64"):
        plan_tiles((100, 100), 32, 0)
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles((100, 100), 64, 64)
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles((100, 100), 64, -1)


def test_test_config_tile_keys():
    assert Cfg().tile_size == 0  # tiling off by default
    Cfg(tile_size=64, tile_overlap=0)
    with pytest.raises(ConfigError, match="test.tile_size"):
        Cfg(tile_size=32)
    with pytest.raises(ConfigError, match="test.tile_overlap"):
        Cfg(tile_size=128, tile_overlap=128)
    with pytest.raises(ConfigError, match="test.tile_overlap"):
        Cfg(tile_overlap=-1)


# ------------------------------------------------------------------- tiled == whole (stub)
@pytest.mark.parametrize("merge", [False, True])
@pytest.mark.parametrize("H,W,size,overlap,seed", [
    (150, 230, 64, 24, 0),    # sizes not multiples of the stride
    (200, 200, 64, 30, 1),
    (129, 257, 80, 32, 2),
    (97, 300, 96, 28, 3),     # two rows of tiles overlapping by 95 px
    (170, 190, 64, 44, 4),    # overlap > half a tile: tiles two apart overlap too
])
def test_tiled_equals_whole_for_objects_smaller_than_the_overlap(H, W, size, overlap, seed, merge):
    # Blobs are at most 2 * 6 + 3 = 15 px across (a disc of radius <= 6 and its tail), < overlap / 2 * 2.
    image, masks = blob_image(120, H, W, seed)
    whole = predict_raw(image)
    tiled = tiled_predict(predict_raw, image, size, overlap, merge=merge)
    assert len(whole) == len(masks) > 50
    assert_same(tiled, whole)


def test_objects_on_tile_borders_and_core_boundaries():
    H, W, size, overlap = 180, 180, 64, 24
    grid = plan_tiles((H, W), size, overlap)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    objs = []
    lines = sorted(set(grid.xs[1:]) | {x + grid.tile_w for x in grid.xs[:-1]} | set(grid.core_x[1:-1]))
    for i, x in enumerate(lines):  # squares centred on each tile edge and core boundary, +-1 px
        for j, dx in enumerate((-1, 0, 1)):
            y = 12 + 50 * j + 7 * (i % 2)
            cx = x + dx
            objs.append((xx >= cx - 5) & (xx < cx + 5) & (yy >= y) & (yy < y + 9 + j))
    for i, y in enumerate(lines):
        objs.append((yy >= y - 4) & (yy < y + 5) & (xx >= 160 - 10 * (i % 2)) & (xx < 170 - 10 * (i % 2)))
    masks = torch.stack(objs)
    taken = torch.zeros((H, W), dtype=torch.bool)
    keep = []
    for k in range(len(masks)):
        if not (masks[k] & taken).any():
            keep.append(k)
            taken |= masks[k]
    masks = masks[keep]
    image = draw_objects(masks)
    whole = predict_raw(image)
    assert len(whole) == len(masks) >= 20
    for merge in (False, True):
        assert_same(tiled_predict(predict_raw, image, size, overlap, merge=merge), whole)


def test_objects_larger_than_the_overlap_and_than_a_tile_are_united():
    H, W = 220, 260
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    big = [
        (xx >= 10) & (xx < 200) & (yy >= 20) & (yy < 40),                       # spans 4 tile columns
        ((xx - 120) ** 2 + (yy - 130) ** 2 <= 45 ** 2) & ~((xx > 120) & (yy < 110)),  # a notched disc, 90 px
        (xx >= 230) & (xx < 240) & (yy >= 5) & (yy < 215),                      # a tall bar
        (xx + yy >= 330) & (xx + yy < 340) & (xx < 220) & (yy > 50),           # a diagonal band
    ]
    taken = torch.zeros((H, W), dtype=torch.bool)
    masks = []
    for m in big:  # objects do not overlap: later ones lose the pixels of earlier ones
        masks.append(m & ~taken)
        taken |= m
    for m in random_blobs(40, H, W, seed=5):
        if not (m & taken).any():
            masks.append(m)
            taken |= m
    masks = torch.stack(masks)
    image = draw_objects(masks)
    whole = predict_raw(image)
    tiled = tiled_predict(predict_raw, image, 64, 20, merge=True)
    assert_same(tiled, whole)
    # Ownership alone keeps pieces of the large objects (the documented limit of merge=False).
    assert len(tiled_predict(predict_raw, image, 64, 20, merge=False)) != len(whole)


def test_empty_tiles_and_empty_image():
    H, W = 200, 300
    image, masks = blob_image(10, 40, 60, seed=7)
    big = torch.zeros((1, H, W))
    big[:, 150:190, 230:290] = image  # objects in one corner; most tiles see nothing
    whole = predict_raw(big)
    assert len(whole) == len(masks)
    for merge in (False, True):
        assert_same(tiled_predict(predict_raw, big, 64, 20, merge=merge), whole)
    empty = tiled_predict(predict_raw, torch.zeros((1, H, W)), 64, 20)
    assert len(empty) == 0 and empty.image_size == (H, W) and empty.masks is not None
    assert len(filter_predictions(empty, Cfg(score_thresh=(0.0,)))) == 0


def test_image_smaller_than_a_tile_is_predicted_whole():
    image, masks = blob_image(20, 50, 70, seed=8)
    calls = []

    def counting(tile):
        calls.append(tuple(tile.shape))
        return predict_raw(tile)

    out = tiled_predict(counting, image, 128, 32)
    assert calls == [(1, 50, 70)]
    assert_same(out, predict_raw(image))
    # One axis shorter than a tile: one row of tiles, each the image's full height.
    wide, _ = blob_image(30, 50, 300, seed=9)
    calls.clear()
    assert_same(tiled_predict(counting, wide, 96, 32), predict_raw(wide))
    assert all(c[1] == 50 and c[2] == 96 for c in calls) and len(calls) == 5


def test_a_predictor_that_is_not_consistent_between_tiles_still_gives_each_object_once():
    # Boxes moved by up to 2 px depending on the tile (a real model sees different context in each
    # tile): ownership alone can then give an object on a core boundary twice or not at all;
    # merging the views of one object by their masks keeps exactly one of each.
    image, masks = blob_image(150, 190, 190, seed=11)
    grid_calls = []

    def jittery(tile):
        inst = predict_raw(tile)
        k = len(grid_calls)
        grid_calls.append(k)
        d = torch.tensor([(k % 3) - 1, ((k // 3) % 3) - 1, (k % 3) - 1, ((k // 3) % 3) - 1], dtype=torch.float32) * 2
        return inst.replace(boxes=inst.boxes + d)

    whole = predict_raw(image)
    tiled = tiled_predict(jittery, image, 64, 24, merge=True)
    assert_same(tiled, whole, boxes=False)


def test_stitch_of_shifted_soft_masks_keeps_crops_small():
    # Memory follows the objects: output crops are the objects' crops, never the image's size.
    image, _ = blob_image(100, 400, 400, seed=12)
    out = tiled_predict(predict_raw, image, 96, 32)
    assert out.masks.crops.shape[1] < 40 and out.masks.crops.shape[2] < 40
    assert out.masks.is_soft  # still raw predictions, ready for postprocess
    final = filter_predictions(out, Cfg(score_thresh=(0.0,)))
    assert len(final) == len(out)


def test_dropping_weak_instances_per_tile_changes_nothing_after_postprocess():
    image, _ = blob_image(120, 200, 200, seed=15)
    cfg = Cfg(score_thresh=(0.6,), image_class="none")
    full = filter_predictions(tiled_predict(predict_raw, image, 64, 24), cfg)
    early = tiled_predict(predict_raw, image, 64, 24, score_thresh=0.6)
    assert len(early) < len(tiled_predict(predict_raw, image, 64, 24))
    assert_same(filter_predictions(early, cfg), full)


def test_numpy_uint16_image_is_read_one_tile_at_a_time(tmp_path):
    image, _ = blob_image(60, 150, 210, seed=13)
    ids = (image[0] * 255).round().numpy().astype(np.uint16)
    path = tmp_path / "big.u16"
    mm = np.memmap(path, dtype=np.uint16, mode="w+", shape=(1, 150, 210))
    mm[0] = ids * 257  # k * 257 / 65535 == k / 255
    mm.flush()
    ro = np.memmap(path, dtype=np.uint16, mode="r", shape=(1, 150, 210))
    assert_same(tiled_predict(predict_raw, ro, 64, 24), predict_raw(image))


def test_bad_predictions_are_reported():
    image, _ = blob_image(5, 100, 100, seed=14)
    with pytest.raises(ValueError, match="tile's size"):
        tiled_predict(lambda t: predict_raw(torch.zeros(1, 10, 10)), image, 64, 16)
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        tiled_predict(predict_raw, image[0], 64, 16)
    grid = plan_tiles((100, 100), 64, 16)
    with pytest.raises(ValueError, match="tile predictions"):
        stitch([predict_raw(image)], grid)


def test_with_a_real_model_and_whole_image_percentiles():
    from maskrcnn.model import build_model
    from tests.model.helpers import disks_sample, tiny_model_config

    torch.manual_seed(0)
    model = build_model(tiny_model_config("model.input.normalize=percentile")).eval()
    image, _ = disks_sample(100, 120, disks=((30, 30, 8, 0), (75, 60, 10, 1), (64, 100, 7, 1)))
    ranges = model.input_ranges([image])

    def predict(tile):
        with torch.no_grad():
            return model([tile], input_ranges=ranges)[0]

    direct = predict(image)
    assert len(direct) > 0
    assert_same(tiled_predict(predict, image, 128, 32), direct)  # one tile: exactly the model's output
    out = tiled_predict(predict, image, 64, 24)
    assert out.image_size == (100, 120) and out.masks.image_size == (100, 120) and len(out) > 0
    assert bool((out.boxes[:, 0::2] <= 120).all() and (out.boxes[:, 1::2] <= 100).all() and (out.boxes >= 0).all())
    assert out.masks.is_soft


# ------------------------------------------------------------ through the Predictor (predict.py)
def test_predictor_tiles_large_images_and_equals_the_whole_image_prediction():
    from maskrcnn.inference.predictor import Predictor, build_predictor

    image, masks = blob_image(120, 150, 230, 0)
    whole = Predictor(STUB, device="cpu").predict_raw(image)
    p = Predictor(STUB, device="cpu", tile_size=64, tile_overlap=24)
    tiled = p.predict_raw(image)
    assert len(whole) == len(masks) > 50
    assert_same(tiled, whole)
    assert set(p.last_timing) == {"model", "merge"} and p.last_timing["model"] > 0
    # the tiles really are smaller than the image: the stub saw tile-sized inputs only
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, ims):
            seen.extend(tuple(i.shape[-2:]) for i in ims)
            return STUB(ims)

    Predictor(Spy(), device="cpu", tile_size=64, tile_overlap=24).predict_raw(image)
    assert len(seen) > 4 and max(max(s) for s in seen) == 64
    # test.tile_size reaches the predictor; 0 is off
    q = build_predictor(STUB, Cfg(tile_size=96, tile_overlap=30, score_thresh=(0.3, 0.2)), device="cpu")
    assert (q.tile_size, q.tile_overlap, q.tile_score_thresh) == (96, 30, 0.2)
    assert build_predictor(STUB, Cfg(), device="cpu").tile_size == 0


def test_predictor_tiles_use_the_whole_image_percentiles():
    from maskrcnn.inference.predictor import Predictor
    from maskrcnn.model import build_model
    from tests.model.helpers import disks_sample, tiny_model_config

    torch.manual_seed(0)
    model = build_model(tiny_model_config("model.input.normalize=percentile")).eval()
    # cells in one corner only: a tile's own percentiles would stretch an empty tile's background
    image, _ = disks_sample(160, 200, disks=((30, 30, 8, 0), (40, 60, 10, 1)))
    image = 0.6 * image + 0.2 * torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    ranges = model.input_ranges([image])

    def with_whole_ranges(tile):
        with torch.no_grad():
            return model([tile], input_ranges=ranges)[0]

    def with_own_ranges(tile):
        with torch.no_grad():
            return model([tile])[0]

    got = Predictor(model, device="cpu", tile_size=64, tile_overlap=24).predict_raw(image)
    expect = tiled_predict(with_whole_ranges, image, 64, 24)
    assert len(got) == len(expect)
    assert len(expect) > 0
    assert torch.allclose(got.scores, expect.scores) and torch.allclose(got.boxes, expect.boxes)
    own = tiled_predict(with_own_ranges, image, 64, 24)
    assert len(own) != len(expect) or not torch.allclose(own.scores, expect.scores)


def test_predict_py_tile_options_become_test_settings():
    from maskrcnn.cli.predict import build_parser
    from maskrcnn.inference.predict_run import resolve_test_config

    args = build_parser().parse_args(["--weights", "w.pth", "--images", "d", "--tile", "96", "--tile-overlap", "40"])
    t = resolve_test_config(args, Cfg(tile_overlap=64))
    assert (t.tile_size, t.tile_overlap) == (96, 40)
    args = build_parser().parse_args(["--weights", "w.pth", "--images", "d"])
    assert resolve_test_config(args, Cfg(tile_size=128)).tile_size == 128  # the checkpoint's setting stays
    args = build_parser().parse_args(["--weights", "w.pth", "--images", "d", "--tile", "32"])
    with pytest.raises(ConfigError, match="test.tile_size"):
        resolve_test_config(args, Cfg())
