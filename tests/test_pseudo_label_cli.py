"""``python -m maskrcnn pseudo_label``: label a folder end to end (flat and DSB2018 layouts, TTA
agreement), read the written dataset back, the summary, and user errors as one line with exit 2.

The model is the id stub (``tests/inference/stub_model.py``): it detects exactly the objects drawn
into the image, object ``k`` with the known score ``object_score(k)``, so the expected cells and
ignore regions are worked out from the drawing.
"""
import json
import os

import pytest
import torch

import maskrcnn.inference.checkpoint as checkpoint
from maskrcnn.config import load_config
from maskrcnn.formats.dataset_cache import CacheDataset
from maskrcnn.formats.image_files import write_image
from maskrcnn.cli.pseudo_label import main
from maskrcnn.structures import IGNORE_LABEL
from tests.inference.stub_model import IdStubModel, draw_objects, object_score

H, W = 40, 60


def _squares(corners):
    m = torch.zeros((len(corners), H, W), dtype=torch.bool)
    for k, (x, y) in enumerate(corners):  # test set-up only
        m[k, y:y + 6, x:x + 6] = True
    return m


# Image "a": objects 1, 2, 3; image "astro[x]_1": object 1 only.
# Scores: object_score(1) = 0.3 + 0.69 * 0.37 = 0.555, (2) = 0.3 + 0.69 * 0.74 = 0.811,
# (3) = 0.3 + 0.69 * 0.10 = 0.369. With --keep 0.7 --ignore 0.4: object 2 is a cell, object 1 an
# ignore region, object 3 background.
A = _squares([(2, 2), (12, 2), (22, 2)])
B = _squares([(30, 10)])


@pytest.fixture
def stub(monkeypatch):
    cfg = load_config(None, ["model.roi_heads.num_classes=1", "model.input.in_channels=1",
                           "model.input.pixel_mean=[0.5]", "model.input.pixel_std=[0.25]"])
    monkeypatch.setattr(checkpoint, "load_model", lambda path, device="cpu", config=None, overrides=(): (IdStubModel(1), cfg))
    return cfg


def _flat(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    write_image(str(d / "a.png"), draw_objects(A))
    write_image(str(d / "astro[x]_1.png"), draw_objects(B))
    return d


def _run(*args):
    return main(["label", "--weights", "w.pth", "--no-progress", "--threads", "1", *map(str, args)])


def test_scores_of_the_drawing():
    torch.testing.assert_close(object_score(torch.tensor([1, 2, 3])), torch.tensor([0.5553, 0.8106, 0.3690]))


def test_flat_folder_round_trip(tmp_path, stub, capsys):
    out = tmp_path / "pl"
    assert _run("--images", _flat(tmp_path), "--out", out, "--keep", 0.7, "--ignore", 0.4, "--tta", "hflip") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 2 and summary["cells"] == 1 and summary["ignored_regions"] == 2
    assert summary["images_without_cells"] == 1 and summary["views"] == 2 and summary["agree"] == 2
    ds = CacheDataset(str(out / "pseudo_labels.npz"))
    assert ds.image_ids == ["a", "astro[x]_1"] and ds.class_names == ("cell",)
    a, b = ds.load(0), ds.load(1)
    assert a.instances.labels.tolist() == [0, IGNORE_LABEL]
    dense = a.instances.masks.to_dense()
    assert torch.equal(dense[0], A[1]) and torch.equal(dense[1], A[0])  # cell = object 2, region = object 1
    assert b.instances.labels.tolist() == [IGNORE_LABEL] and torch.equal(b.instances.masks.to_dense()[0], B[0])
    assert b.meta["cell_type"] == "astro" and a.meta["unlabeled"] is True
    assert ds.strata() == ["None", "astro"]
    assert torch.equal(a.image, draw_objects(A))  # the image itself, unchanged
    assert "1 cells, 2 ignore regions" in capsys.readouterr().out


def test_dsb_layout_and_ids_file(tmp_path, stub):
    root = tmp_path / "dsb"
    for name, objs in (("i1", A), ("i2", B)):
        (root / name / "images").mkdir(parents=True)
        write_image(str(root / name / "images" / f"{name}.png"), draw_objects(objs, channels=3))
    (tmp_path / "ids.json").write_text(json.dumps({"ids": ["i1"]}))
    out = tmp_path / "pl"
    assert _run("--images", root, "--ids", tmp_path / "ids.json", "--out", out, "--keep", 0.5, "--ignore", 0.3) == 0
    ds = CacheDataset(str(out / "pseudo_labels.npz"))
    # keep 0.5: objects 1 (0.555) and 2 (0.811) are cells, 3 (0.369) an ignore region
    assert ds.image_ids == ["i1"] and sorted(ds.load(0).instances.labels.tolist()) == [IGNORE_LABEL, 0, 0]


def _one_error_line(capsys):
    # stderr: at most the run's one-line header, then one error line, no traceback (progress lines,
    # printed instead of a bar when stderr is not a terminal, aside)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("pseudo-label: ")]
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    assert len(err) == 1 or (len(err) == 2 and err[0].startswith("pseudo_label: "))
    return err[-1]


def test_missing_or_empty_images_folder_is_one_error_line(tmp_path, stub, capsys):
    assert _run("--images", tmp_path / "nope", "--out", tmp_path / "pl") == 2
    assert "nope" in _one_error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert _run("--images", tmp_path / "empty", "--out", tmp_path / "pl") == 2
    assert "no images" in _one_error_line(capsys)
    assert not (tmp_path / "pl").exists()


def test_bad_ids_thresholds_and_no_cells_are_one_error_line(tmp_path, stub, capsys):
    images = _flat(tmp_path)
    (tmp_path / "ids.json").write_text(json.dumps(["a", "zzz"]))
    assert _run("--images", images, "--out", tmp_path / "pl", "--ids", tmp_path / "ids.json") == 2
    assert "zzz" in _one_error_line(capsys)
    assert _run("--images", images, "--out", tmp_path / "pl", "--keep", 0.3, "--ignore", 0.5) == 2
    assert "ignore" in _one_error_line(capsys)
    assert _run("--images", images, "--out", tmp_path / "pl", "--keep", 0.9, "--ignore", 0.5) == 2
    assert "nothing written" in _one_error_line(capsys)
    assert not os.path.exists(tmp_path / "pl" / "pseudo_labels.npz")


def test_split_writes_disjoint_labelled_and_unlabelled_ids(tmp_path, capsys):
    folds = {f"i{n:02d}": n % 5 for n in range(40)}
    (tmp_path / "folds.json").write_text(json.dumps({"num_folds": 5, "folds": folds}))
    lab, unl = tmp_path / "l.json", tmp_path / "u.json"
    assert main(["split", "--split-file", str(tmp_path / "folds.json"), "--fold", "0", "--fraction", "0.25",
                 "--labeled", str(lab), "--unlabeled", str(unl)]) == 0
    l_ids, u_ids = json.loads(lab.read_text())["ids"], json.loads(unl.read_text())["ids"]
    assert len(l_ids) == 8 and len(u_ids) == 24 and not set(l_ids) & set(u_ids)
    assert all(folds[i] != 0 for i in l_ids + u_ids)
    assert main(["split", "--split-file", str(tmp_path / "folds.json"), "--fold", "7",
                 "--labeled", str(lab), "--unlabeled", str(unl)]) == 2
    assert "--fold 7" in _one_error_line(capsys)
