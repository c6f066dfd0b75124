"""Faults while writing (issue 23): a full disk (a real small tmpfs where this process may mount
one, an injected ENOSPC otherwise), an interrupted label folder, file names near the length limit,
and outputs that are inputs."""
import errno
import io
import os
import subprocess

import numpy as np
import pytest
import torch

from maskrcnn.errors import user_error_message
from maskrcnn.fileio import OutputPathError, WriteError, atomic_open, atomic_write_text, check_not_input


class _FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, room: int):
        self.room, self.pos = room, 0

    def writable(self):
        return True

    def write(self, data):
        if self.pos + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.pos += len(data)
        return len(data)


def _full_open(room):
    real = open

    def fake(path, mode="r", *a, **k):
        if "x" in mode:  # atomic_open's temp file
            real(path, mode, *a, **k).close()  # it exists, as a real partial write's would
            raw = io.BufferedWriter(_FullDisk(room))
            return raw if "b" in mode else io.TextIOWrapper(raw)
        return real(path, mode, *a, **k)
    return fake


def test_disk_full_mid_write_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from maskrcnn import fileio

    target = tmp_path / "sub.csv"
    target.write_text("old content\n")
    monkeypatch.setattr(fileio, "open", _full_open(10), raising=False)
    with pytest.raises(WriteError) as e:
        with atomic_open(target, "w") as f:
            f.write("x" * 100_000)
    assert str(e.value) == f"disk full writing {target}"
    assert user_error_message(e.value) == f"disk full writing {target}"
    assert target.read_text() == "old content\n"
    assert sorted(os.listdir(tmp_path)) == ["sub.csv"]  # the temp file is gone


def test_torch_save_on_a_full_disk_names_the_checkpoint(tmp_path, monkeypatch):
    """torch's zip writer turns the short write into ``RuntimeError: ... unexpected pos``."""
    from maskrcnn import fileio
    from maskrcnn.inference.checkpoint import atomic_save

    monkeypatch.setattr(fileio, "open", _full_open(1000), raising=False)
    path = tmp_path / "model_0000100.pth"
    with pytest.raises(WriteError, match=f"^disk full writing {path}$"):
        atomic_save({"model": {"w": torch.zeros(50_000)}}, str(path))
    assert os.listdir(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KB tmpfs mounted in ``tmp_path`` (skips where this process may not mount)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()[:100]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_real_full_disk_during_a_checkpoint(small_tmpfs):
    from maskrcnn.inference.checkpoint import atomic_save

    path = small_tmpfs / "model_final.pth"
    atomic_save({"w": torch.zeros(1000)}, str(path))  # fits
    before = path.read_bytes()
    with pytest.raises(WriteError, match=f"^disk full writing {path}$"):
        atomic_save({"w": torch.zeros(200_000)}, str(path))  # 800 KB on a 256 KB disk
    assert path.read_bytes() == before  # the earlier checkpoint survives
    assert sorted(os.listdir(small_tmpfs)) == ["model_final.pth"]


def test_temp_names_of_long_file_names_fit(tmp_path):
    name = "y" * 250 + ".png"  # 254 bytes: the temp suffix alone would pass the 255-byte limit
    atomic_write_text(tmp_path / name, "ok")
    assert os.listdir(tmp_path) == [name]


def test_outputs_that_are_inputs_through_links(tmp_path):
    src = tmp_path / "image.png"
    src.write_bytes(b"png")
    os.link(src, tmp_path / "hard.png")
    os.symlink(src, tmp_path / "soft.png")
    for out in ("hard.png", "soft.png", "image.png"):
        with pytest.raises(OutputPathError, match="input"):
            check_not_input(tmp_path / out, [str(src)])
    check_not_input(tmp_path / "other.csv", [str(src)])  # a new file: fine
    with pytest.raises(OutputPathError, match="holds an input"):
        check_not_input(tmp_path, [str(src)], folder=True)
    check_not_input(tmp_path / "labels", [str(src)], folder=True)


def _instances(h=8, w=8):
    from maskrcnn.structures import Instances, MaskList

    m = np.zeros((1, h, w), bool)
    m[0, 2:5, 2:5] = True
    masks = MaskList(torch.from_numpy(m), torch.zeros(1, 2, dtype=torch.long), (h, w))
    return Instances((h, w), torch.tensor([[2.0, 2, 5, 5]]), torch.zeros(1, dtype=torch.long), torch.ones(1), masks)


def test_the_label_folder_appears_only_complete(tmp_path):
    from maskrcnn.inference.outputs import LabelImageWriter

    out = tmp_path / "labels"
    out.mkdir()
    (out / "mine.txt").write_text("a file of the user's")
    w = LabelImageWriter(str(out))
    w.add("a", _instances())
    assert os.listdir(out) == ["mine.txt"]  # nothing lands before finish
    w.abort()  # the run was interrupted
    assert sorted(os.listdir(tmp_path)) == ["labels"] and os.listdir(out) == ["mine.txt"]
    w = LabelImageWriter(str(out))
    w.add("a", _instances())
    w.add("b", _instances())
    w.finish()
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "mine.txt"]
    assert sorted(os.listdir(tmp_path)) == ["labels"]  # the staging folder is gone
