"""``python -m maskrcnn scale slide``: a large image in blocks on Dask, cells joined across block borders."""
import csv
import os

import numpy as np
import pytest
import torch

zarr = pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")

from maskrcnn.config import TestConfig as Cfg  # noqa: E402
from maskrcnn.inference.tile_grid import plan_tiles  # noqa: E402
from maskrcnn.scale.slide import neighbourhood, run_slide  # noqa: E402
from maskrcnn.scale.sources import open_source  # noqa: E402
from maskrcnn.scale.workers import ModelSpec  # noqa: E402
from tests.inference.stub_model import draw_objects, random_blobs  # noqa: E402
from tests.scale.helpers import stub_models  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cl, \
            distributed.Client(cl) as c:
        yield c


def _slide(tmp_path, masks, chunks=(64, 64)):
    """The objects ``masks`` drawn as ids k (uint8) into a zarr array."""
    ids = (draw_objects(masks)[0] * 255).round().numpy().astype(np.uint8)
    path = str(tmp_path / "slide.zarr")
    zarr.open_array(path, mode="w", shape=ids.shape, chunks=chunks, dtype="uint8")[:] = ids
    return path


def _read_table(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_objects_cut_by_block_borders_come_out_whole_and_once(client, tmp_path):
    masks = random_blobs(220, 300, 340, seed=3, rmin=4, rmax=12)  # up to 27 px across < the overlap of 40
    src = open_source(_slide(tmp_path, masks))
    spec = ModelSpec(test=Cfg(score_thresh=(0.0,)), factory=stub_models)
    stats = run_slide(client, src, spec, str(tmp_path / "out.zarr"), str(tmp_path / "cells.csv"), block=128,
                      overlap=40, chunk=96, skip_contrast=0, progress="off")
    grid = plan_tiles((300, 340), 128, 40)
    assert stats["blocks"] == len(grid) == 12 and stats["skipped"] == 0
    lab = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert lab.chunks == (96, 96) and lab.dtype == np.uint32
    lab = lab[:]
    m = masks.numpy()
    # objects cut by a block border, seen in two or four blocks: the test is about them
    cut = sum(1 for k in range(len(m)) if len({t for t in range(len(grid)) if m[k][grid.window(t)[1]:grid.window(t)[3],
                                                                                   grid.window(t)[0]:grid.window(t)[2]].any()}) > 1)
    assert cut > 40
    assert lab.max() == len(m) and len(np.unique(lab)) == len(m) + 1  # ids 1..N, no gap, no duplicate
    for k in range(len(m)):  # each drawn object is exactly one label, pixel for pixel
        vals = np.unique(lab[m[k]])
        assert len(vals) == 1 and vals[0] > 0 and np.array_equal(lab == vals[0], m[k]), k
    header, rows = _read_table(tmp_path / "cells.csv")
    assert header == ["id", "x0", "y0", "x1", "y1", "centroid_x", "centroid_y", "area", "score", "class"]
    assert [int(r[0]) for r in rows] == list(range(1, len(m) + 1))
    for r in rows:  # every row against the label image, computed here with numpy
        ys, xs = np.nonzero(lab == int(r[0]))
        assert [int(v) for v in r[1:5]] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert abs(float(r[5]) - xs.mean()) < 0.006 and abs(float(r[6]) - ys.mean()) < 0.006
        assert int(r[7]) == len(xs) and r[9] == "0"


def test_background_blocks_are_skipped_and_change_nothing(client, tmp_path):
    masks = random_blobs(30, 260, 260, seed=5, rmin=4, rmax=9)
    masks[:, :, 120:] = False  # objects only in the left part; the rest is empty background
    keep = masks.flatten(1).any(1)
    masks = masks[keep]
    masks = masks[(masks[:, :, 110:120].flatten(1).sum(1) == 0)]  # and clear of the seam
    src = open_source(_slide(tmp_path, masks))
    spec = ModelSpec(test=Cfg(score_thresh=(0.0,)), factory=stub_models)
    out = {}
    for skip in (0.0, 0.01):
        stats = run_slide(client, src, spec, str(tmp_path / f"o{skip}.zarr"), str(tmp_path / f"c{skip}.csv"), block=96,
                          overlap=24, chunk=128, skip_contrast=skip, progress="off")
        out[skip] = (stats, zarr.open_array(str(tmp_path / f"o{skip}.zarr"), mode="r")[:])
    grid = plan_tiles((260, 260), 96, 24)
    m = masks.numpy().any(0)
    empty = sum(1 for t in range(len(grid)) if not m[grid.window(t)[1]:grid.window(t)[3], grid.window(t)[0]:grid.window(t)[2]].any())
    assert empty >= 4
    assert out[0.0][0]["skipped"] == 0 and out[0.01][0]["skipped"] == empty
    assert np.array_equal(out[0.0][1], out[0.01][1]) and out[0.01][1].max() == len(masks)


def test_neighbourhoods_hold_every_block_that_overlaps(tmp_path):
    grid = plan_tiles((970, 1500), 512, 64)  # 970 px: three rows whose first and last overlap
    for t in range(len(grid)):
        blocks, sub = neighbourhood(grid, t)
        a = grid.window(t)
        overlapping = {u for u in range(len(grid))
                       if grid.window(u)[0] < a[2] and a[0] < grid.window(u)[2] and grid.window(u)[1] < a[3] and a[1] < grid.window(u)[3]}
        assert overlapping <= set(blocks) and len(sub) == len(blocks)
        # the sub-grid's cores are the slide grid's, and points outside them have no owner
        pts = torch.tensor([[float(x), float(y)] for x in range(0, 1500, 37) for y in range(0, 970, 29)])
        own = sub.owner(pts)
        glob = grid.owner(pts)
        inside = own >= 0
        assert torch.equal(torch.tensor(blocks)[own[inside]], glob[inside])
        assert set(glob[~inside].tolist()).isdisjoint(blocks)


def test_slide_matches_single_process_tiled_prediction_of_a_real_model(tmp_path):
    """The CLI end to end (a local cluster of 1 process) against ``Predictor`` with the same tiles,
    both post-processed: the same cells, pixel for pixel, on a tiny model with percentile normalisation."""
    from maskrcnn.config import load_config, to_dict
    from maskrcnn.formats.label_images import to_label_image
    from maskrcnn.inference.filtering import filter_predictions
    from maskrcnn.inference.predictor import build_predictor
    from maskrcnn.inference.checkpoint import load_model
    from maskrcnn.model import build_model
    from maskrcnn.cli.scale import main
    from tests.inference.stub_model import TINY_MODEL

    text = TINY_MODEL.replace("num_classes: 3", "num_classes: 1").replace(
        "pixel_std: [0.25]}", "pixel_std: [0.25], normalize: percentile}")
    text = text.replace("test: {score_thresh: [0.0]}", "test: {score_thresh: [0.0], min_area: [4]}")
    (tmp_path / "tiny.yaml").write_text(text)
    cfg = load_config(str(tmp_path / "tiny.yaml"))
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg.model, load_weights=False, verbose=False).state_dict(), "config": to_dict(cfg)},
               tmp_path / "tiny.pth")
    g = torch.Generator().manual_seed(1)
    img = (torch.rand(1, 200, 230, generator=g) * 3000 + 1000).to(torch.int32)
    img[:, 40:70, 50:90] += 20000
    img[:, 120:160, 100:125] += 30000
    a = img.numpy().astype(np.uint16)
    zarr.open_array(str(tmp_path / "s.zarr"), mode="w", shape=a.shape, chunks=(1, 64, 64), dtype="uint16")[:] = a
    rc = main(["slide", "--weights", str(tmp_path / "tiny.pth"), "--image", str(tmp_path / "s.zarr"), "--out",
               str(tmp_path / "l.zarr"), "--table", str(tmp_path / "c.csv"), "--block", "96", "--overlap", "32",
               "--skip-contrast", "0", "--workers", "1", "--no-progress"])
    assert rc == 0
    got = zarr.open_array(str(tmp_path / "l.zarr"), mode="r")[:].astype(np.int64)
    model, mcfg = load_model(str(tmp_path / "tiny.pth"), "cpu")
    test = mcfg.test.__class__(**{**mcfg.test.__dict__, "tile_size": 96, "tile_overlap": 32})
    pred = build_predictor([model], test, device="cpu")
    ref = filter_predictions(pred.predict_raw(torch.from_numpy(a.astype(np.float32) / 65535.0)), test)
    want = to_label_image(ref).astype(np.int64)
    assert want.max() > 5  # the random model finds things to compare
    pairs = set(zip(got.ravel().tolist(), want.ravel().tolist()))
    # one to one: every label of one image covers exactly one label of the other
    assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})


def test_slide_command_errors_are_one_line(tmp_path, capsys):
    from maskrcnn.cli.scale import main

    zarr.open_array(str(tmp_path / "s.zarr"), mode="w", shape=(100, 100), chunks=(50, 50), dtype="uint8")[:] = 0
    (tmp_path / "exists.zarr").mkdir()
    base = ["slide", "--weights", "nope.pth", "--table", str(tmp_path / "c.csv")]
    cases = [
        (["--image", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "o.zarr")], "no such image"),
        (["--image", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "exists.zarr")], "--overwrite"),
        (["--image", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "o.zarr"), "--block", "128", "--overlap", "65"],
         "half the block"),
        (["--image", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "o.zarr")], "nope.pth"),
    ]
    for extra, text in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and text in err[0], err
    assert main(["slid"]) == 2 and "slide, collection" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.zarr") and not os.path.exists(tmp_path / "c.csv")
