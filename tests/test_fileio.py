"""Atomic writes: the target appears whole or not at all, no temp file is left, usual permissions."""
import os

import pytest

from maskrcnn.fileio import atomic_json, atomic_open, atomic_write_bytes, atomic_write_text


def test_failure_keeps_old_content_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_open(path, "w") as f:
            f.write("half of the new con")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_new_folder_bytes_json_and_permissions(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    atomic_json({"b": 1, "a": [1, 2]}, tmp_path / "c.json")
    assert (tmp_path / "c.json").read_text().startswith('{\n "a"')
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert os.stat(tmp_path / "c.json").st_mode == os.stat(plain).st_mode  # not mkstemp's 0600
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "d.txt", "a"):
            pass
