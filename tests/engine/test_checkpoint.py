import os
import random

import numpy as np
import pytest
import torch

from maskrcnn.engine.resume import capture_rng_state, restore_rng_state
from maskrcnn.engine.run_directory import BEST, RunDirectory
from maskrcnn.inference.checkpoint import atomic_save, load_checkpoint


def test_atomic_save_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    atomic_save({"model": {"w": torch.ones(3)}}, str(path))
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        f.write(b"partial bytes")  # a write that dies half-way, as on a full disk
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        atomic_save({"model": {"w": torch.zeros(3)}}, str(path))
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(tmp_path)) == ["model.pth"]
    assert torch.equal(load_checkpoint(str(path))["model"]["w"], torch.ones(3))


def test_atomic_save_failure_without_old_file(tmp_path):
    path = tmp_path / "new.pth"
    with pytest.raises(Exception):
        atomic_save({"model": {}, "bad": lambda x: x}, str(path))  # lambdas do not pickle
    assert os.listdir(tmp_path) == []


def test_rng_state_round_trip_and_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state()
    atomic_save({"model": {}, "rng": [state]}, str(tmp_path / "c.pth"))
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    loaded = load_checkpoint(str(tmp_path / "c.pth"))  # weights_only=True
    restore_rng_state(loaded["rng"][0])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_run_directory_refuses_nan_weights(tmp_path):
    rd = RunDirectory(str(tmp_path))
    rd.save({"model": {"w": torch.ones(2)}, "iteration": 2}, "model_0000002.pth")
    with pytest.raises(FloatingPointError, match="w"):
        rd.save({"model": {"w": torch.tensor([1.0, float("nan")])}, "iteration": 4}, "model_0000004.pth")
    assert not (tmp_path / "model_0000004.pth").exists()
    assert rd.latest() == str(tmp_path / "model_0000002.pth")


def test_run_directory_keeps_last_k(tmp_path):
    rd = RunDirectory(str(tmp_path), keep=2)
    for it in (2, 4, 6, 8):
        rd.save({"model": {"w": torch.ones(1) * it}}, rd.periodic_name(it))
    rd.save({"model": {"w": torch.ones(1)}}, BEST, mark_last=False)
    names = sorted(os.listdir(tmp_path))
    assert names == ["last_checkpoint", "model_0000006.pth", "model_0000008.pth", "model_best.pth"]
    assert rd.latest().endswith("model_0000008.pth")


def test_last_checkpoint_naming_a_missing_file(tmp_path):
    (tmp_path / "last_checkpoint").write_text("model_0000010.pth\n")
    with pytest.raises(FileNotFoundError, match="model_0000010.pth"):
        RunDirectory(str(tmp_path)).latest()
