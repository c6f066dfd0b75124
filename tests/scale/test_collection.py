"""``python -m maskrcnn scale collection``: predict.py's outputs, byte for byte, from Dask workers;
resumable; a worker lost mid-run loses and duplicates nothing."""
import os
import shutil

import pytest
import torch

distributed = pytest.importorskip("distributed")
pytest.importorskip("zarr")
pytest.importorskip("tifffile")

from maskrcnn.config import TestConfig as Cfg  # noqa: E402
from maskrcnn.inference.outputs import SubmissionWriter  # noqa: E402
from maskrcnn.cli.predict import main as predict_main  # noqa: E402
from maskrcnn.scale.collection import assemble, claim_work_dir, list_inputs, manifest, run_collection  # noqa: E402
from maskrcnn.cli.scale import main  # noqa: E402
from maskrcnn.scale.workers import ModelSpec  # noqa: E402
from tests.inference.stub_model import random_blobs  # noqa: E402
from tests.inference.test_outputs import _dsb_folder  # noqa: E402
from tests.scale.helpers import FAULT_FLAG, dying_once_models  # noqa: E402

SPECS = {"a1": random_blobs(9, 48, 52, seed=1), "b2": random_blobs(5, 40, 36, seed=2),
         "c3": torch.zeros((0, 40, 40), dtype=torch.bool), "d4": random_blobs(12, 64, 60, seed=4),
         "e5": random_blobs(7, 44, 50, seed=5)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny real model (random weights: it finds things) and a DSB2018 folder of 5 images + 1 unreadable."""
    from maskrcnn.config import load_config, to_dict
    from maskrcnn.model import build_model
    from tests.inference.stub_model import TINY_MODEL

    tmp = tmp_path_factory.mktemp("collection")
    (tmp / "tiny.yaml").write_text(TINY_MODEL.replace("num_classes: 3", "num_classes: 1"))
    cfg = load_config(str(tmp / "tiny.yaml"))
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg.model, load_weights=False, verbose=False).state_dict(), "config": to_dict(cfg)},
               tmp / "tiny.pth")
    folder = _dsb_folder(tmp / "dsb", SPECS)
    os.makedirs(tmp / "dsb" / "z9" / "images")
    (tmp / "dsb" / "z9" / "images" / "z9.png").write_bytes(b"not a png")
    return tmp, str(tmp / "tiny.pth"), folder


def test_outputs_are_byte_identical_to_predict_py_and_a_rerun_resumes(tiny, capsys):
    tmp, weights, folder = tiny
    common = ["--weights", weights, "--images", folder, "--device", "cpu", "--no-progress"]
    for fmt in ("csv", "dsb", "coco"):
        assert predict_main(common + ["--format", fmt, "--out", str(tmp / f"ref.{fmt}")]) == 3  # z9: skipped
    for fmt in ("labels", "geojson"):  # folder formats, one file per image
        assert predict_main(common + ["--format", fmt, "--out", str(tmp / f"ref_{fmt}")]) == 3
    ref = (tmp / "ref.csv").read_text()
    assert ref.count("\n") > 10 and "z9," in ref  # detections to compare, and the empty row of the bad image
    capsys.readouterr()
    run = ["collection"] + common + ["--work-dir", str(tmp / "work"), "--images-per-task", "2"]
    assert main(run + ["--out", str(tmp / "got.csv"), "--workers", "2"]) == 3
    captured = capsys.readouterr()
    assert "6 image(s), 0 done before, 5 predicted now" in captured.err and "z9.png" in captured.err
    assert (tmp / "got.csv").read_bytes() == (tmp / "ref.csv").read_bytes()
    # the other formats come from the same parts: nothing predicted again, and byte-identical too
    for fmt in ("dsb", "coco"):
        assert main(run + ["--format", fmt, "--out", str(tmp / f"got.{fmt}"), "--workers", "1"]) == 3
        assert "6 done before, 0 predicted now" in capsys.readouterr().err
        assert (tmp / f"got.{fmt}").read_bytes() == (tmp / f"ref.{fmt}").read_bytes(), fmt
    for fmt in ("labels", "geojson"):
        assert main(run + ["--format", fmt, "--out", str(tmp / f"got_{fmt}"), "--workers", "1"]) == 3
        names = sorted(os.listdir(tmp / f"ref_{fmt}"))
        assert names and sorted(os.listdir(tmp / f"got_{fmt}")) == names
        for name in names:
            assert (tmp / f"got_{fmt}" / name).read_bytes() == (tmp / f"ref_{fmt}" / name).read_bytes(), (fmt, name)
    # resume after a crash: the parts of two images are gone; only they are predicted again
    parts = tmp / "work" / "parts"
    kept = {n: os.stat(parts / n).st_mtime_ns for n in os.listdir(parts) if n not in ("b2.pt", "d4.pt")}
    os.remove(parts / "b2.pt")
    os.remove(parts / "d4.pt")
    capsys.readouterr()
    assert main(run + ["--out", str(tmp / "again.csv"), "--workers", "1"]) == 3
    assert "4 done before, 2 predicted now" in capsys.readouterr().err
    assert {n: os.stat(parts / n).st_mtime_ns for n in kept} == kept
    assert (tmp / "again.csv").read_bytes() == (tmp / "ref.csv").read_bytes()
    # a rerun with other settings is refused before anything is predicted
    assert main(run + ["--out", str(tmp / "x.csv"), "--set", "test.score_thresh=[0.9]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and "test" in err[0] and not (tmp / "x.csv").exists()


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path):
    """Two worker processes; the first model call while the flag file exists kills its process
    (``os._exit``). Dask's nanny restarts it and the scheduler runs its task again."""
    specs = {f"im{k:02d}": random_blobs(6, 40, 44, seed=k) for k in range(12)}
    folder = _dsb_folder(tmp_path / "dsb", specs)
    paths = list_inputs(folder)
    ids = [os.path.basename(p)[:-4] for p in paths]
    spec = ModelSpec(test=Cfg(score_thresh=(0.0,)), factory=dying_once_models)
    flag = tmp_path / "die_once"
    outs = {}
    for name, fault in (("clean", False), ("faulty", True)):
        work = str(tmp_path / name)
        claim_work_dir(work, manifest(spec, {}))
        if fault:
            flag.write_text("")
        os.environ[FAULT_FLAG] = str(flag)
        try:
            # the clean run in threads (no process dies there); the faulty one in two processes
            with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=fault,
                                          dashboard_address=":0") as cl, distributed.Client(cl) as client:
                stats = run_collection(client, spec, paths, ids, work, images_per_task=2, progress="off")
        finally:
            del os.environ[FAULT_FLAG]
        assert stats == {"images": 12, "already_done": 0, "predicted": stats["predicted"]}
        writer = SubmissionWriter(str(tmp_path / f"{name}.csv"))
        assemble(work, ids, writer, progress="off")
        outs[name] = (tmp_path / f"{name}.csv").read_text()
    assert not flag.exists()  # a process did die
    assert outs["faulty"] == outs["clean"]
    rows = outs["clean"].splitlines()[1:]
    assert sorted({r.split(",")[0] for r in rows}) == sorted(ids)
    assert len(rows) == sum(int(m.flatten(1).any(1).sum()) for m in specs.values())  # every object once


def test_inputs_as_glob_and_list_file_and_their_errors(tiny, tmp_path, capsys):
    _, _, folder = tiny
    pngs = sorted(os.path.join(folder, n, "images", n + ".png") for n in SPECS)
    assert list_inputs(os.path.join(folder, "*", "images", "[a-e]*.png")) == pngs
    (tmp_path / "list.txt").write_text("# plate 1\n" + "\n".join(reversed(pngs[:3])) + "\n\n")
    assert list_inputs(str(tmp_path / "list.txt")) == list(reversed(pngs[:3]))
    shutil.copy(pngs[0], tmp_path / "a1.png")
    (tmp_path / "rel.txt").write_text("a1.png\nmissing.png\n")
    cases = [(str(tmp_path / "rel.txt"), "rel.txt, line 2: no such image file: missing.png"),
             (str(tmp_path / "nothing*.png"), "no file matches"),
             (str(tmp_path / "nope"), "not a folder, a list file")]
    for spec, text in cases:
        assert main(["collection", "--weights", "w.pth", "--images", spec]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and text in err[0], err


def test_a_cap_reached_on_a_worker_is_said_as_predict_py_says_it(tiny, tmp_path, capsys):
    """A detection cap reached on a Dask worker gets predict.py's per-image warning and summary line
    (the worker writes them into the image's part; nothing is hidden by the distribution)."""
    _, weights, folder = tiny
    common = ["--weights", weights, "--images", folder, "--device", "cpu", "--no-progress",
              "--set", "model.roi_heads.detections_per_image=2", "--set", "test.min_area=0"]
    assert predict_main(common + ["--out", str(tmp_path / "ref.csv")]) == 3
    ref = capsys.readouterr().err
    ref_warnings = sorted(line for line in ref.splitlines() if line.startswith("warning:") and "cells may be missing" in line)
    ref_summary = [line for line in ref.splitlines() if "reached a detection cap" in line]
    assert ref_warnings and len(ref_summary) == 1  # the random model's detections exceed 2 on some image
    assert main(["collection"] + common + ["--work-dir", str(tmp_path / "work"), "--workers", "1",
                                           "--out", str(tmp_path / "got.csv")]) == 3
    got = capsys.readouterr().err
    assert sorted(line for line in got.splitlines() if line.startswith("warning:") and "cells may be missing" in line) \
        == ref_warnings
    assert [line for line in got.splitlines() if "reached a detection cap" in line] == ref_summary
    assert (tmp_path / "got.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()
