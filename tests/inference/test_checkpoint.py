import os

import pytest
import torch

from maskrcnn.config import ConfigError, load_config, to_dict
from maskrcnn.inference.checkpoint import atomic_save, load_checkpoint, load_model
from maskrcnn.model import build_model
from tests.inference.stub_model import TINY_MODEL


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_checkpoint(str(tmp_path / "nothere.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="junk.pth"):
        load_checkpoint(str(tmp_path / "junk.pth"))


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model(str(tmp_path / "nope.pth"))
    torch.save({"w": torch.zeros(2)}, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="bare state dict without a config: pass --config"):
        load_model(str(tmp_path / "bare.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(RuntimeError, match=r"a text file .*not a checkpoint .*junk\.pth"):
        load_model(str(tmp_path / "junk.pth"))
    (tmp_path / "cfg.yaml").write_text(TINY_MODEL)
    with pytest.raises(ValueError, match="do not fit the model .*missing"):
        load_model(str(tmp_path / "bare.pth"), config=str(tmp_path / "cfg.yaml"))


def _tiny_checkpoint(tmp_path, **config_changes):
    (tmp_path / "tiny.yaml").write_text(TINY_MODEL)
    cfg = load_config(str(tmp_path / "tiny.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg.model, load_weights=False, verbose=False)
    saved = to_dict(cfg)
    for key, value in config_changes.items():
        *parents, leaf = key.split(".")
        node = saved
        for p in parents:
            node = node[p]
        node[leaf] = value
    path = str(tmp_path / "tiny.pth")
    torch.save({"model": model.state_dict(), "config": saved, "iteration": 3}, path)
    return path, model, cfg


def test_load_model_with_overrides_of_the_saved_config(tmp_path):
    path, model, cfg = _tiny_checkpoint(tmp_path)
    loaded, got = load_model(path, "cpu", overrides=["model.input.pixel_std=[0.5]"])
    assert not loaded.training and got.model.input.pixel_std == (0.5,) and got.test == cfg.test
    assert torch.equal(loaded.pixel_std.flatten(), torch.full((1,), 0.5))  # the override took effect
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match=r"tiny\.pth: .*model\.bogus"):
        load_model(path, "cpu", overrides=["model.bogus=1"])


def test_checkpoints_with_a_retired_config_key_still_load(tmp_path):
    # Checkpoints written before test.mask_thresh became the one mask threshold hold the model key.
    path, model, cfg = _tiny_checkpoint(tmp_path, **{"model.mask_head.mask_threshold": 0.5})
    loaded, got = load_model(path)
    assert got == cfg and all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    path, _, _ = _tiny_checkpoint(tmp_path, **{"model.mask_head.mask_threshold": 0.3})
    with pytest.warns(UserWarning, match="mask_threshold=0.3 is ignored"):
        _, got = load_model(path)
    assert got.test.mask_thresh == cfg.test.mask_thresh  # it changed nothing before either


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
