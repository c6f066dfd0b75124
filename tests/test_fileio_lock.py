"""FolderLock (flock, and the pid check where a file system has no flock) and orphan temp files."""
import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from maskrcnn import fileio
from maskrcnn.fileio import FolderLock, FolderLocked, atomic_open, orphan_temp_files


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _write_holder(path, pid, host=None):
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "2026-12-01 10:00:00"}))


def test_lock_excludes_a_second_holder_and_release_removes_the_file(tmp_path):
    path = tmp_path / "run.lock"
    a = FolderLock(path)
    assert a.acquire() is None
    with pytest.raises(FolderLocked) as e:
        FolderLock(path).acquire()
    assert e.value.holder["pid"] == os.getpid() and f"pid {os.getpid()}" in str(e.value)
    a.release()
    a.release()  # twice is harmless
    assert not path.exists()
    with FolderLock(path):
        assert path.exists()
    assert not path.exists()


def test_flock_takes_over_a_file_no_live_process_locks(tmp_path):
    path = tmp_path / "run.lock"
    _write_holder(path, _dead_pid())
    lock = FolderLock(path)
    stale = lock.acquire()
    assert stale["started"] == "2026-12-01 10:00:00"
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_release_leaves_a_lock_file_that_is_no_longer_ours(tmp_path):
    path = tmp_path / "run.lock"
    lock = FolderLock(path)
    lock.acquire()
    os.remove(path)  # removed by hand while held ...
    other = FolderLock(path)
    other.acquire()  # ... and taken by another run
    lock.release()
    assert json.loads(path.read_text())["token"] == other._token
    other.release()


@pytest.fixture
def no_flock(monkeypatch):
    monkeypatch.setattr(fileio, "fcntl", None)


def test_without_flock_a_dead_pid_on_this_host_is_stale(tmp_path, no_flock):
    path = tmp_path / "run.lock"
    pid = _dead_pid()
    _write_holder(path, pid)
    lock = FolderLock(path)
    assert lock.acquire()["pid"] == pid
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()


def test_without_flock_a_live_pid_or_another_host_is_refused(tmp_path, no_flock):
    path = tmp_path / "run.lock"
    _write_holder(path, os.getppid())
    with pytest.raises(FolderLocked, match=f"pid {os.getppid()}"):
        FolderLock(path).acquire()
    _write_holder(path, _dead_pid(), host="another-machine")  # cannot tell whether it lives: refuse
    with pytest.raises(FolderLocked, match="another-machine"):
        FolderLock(path).acquire()
    assert json.loads(path.read_text())["host"] == "another-machine"


def test_a_file_system_without_flock_falls_back_to_the_pid_check(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fileio.fcntl, "flock", no_locks)
    path = tmp_path / "run.lock"
    lock = FolderLock(path)
    assert lock.acquire() is None
    with pytest.raises(FolderLocked):
        FolderLock(path).acquire()
    lock.release()
    assert not path.exists()


def test_orphan_temp_files_finds_the_temp_of_an_unfinished_write(tmp_path):
    target = tmp_path / "model_0000004.pth"
    with atomic_open(target, "wb") as f:
        f.write(b"half")
        during = orphan_temp_files(tmp_path, lambda name: name == "model_0000004.pth")
        assert [os.path.basename(p) for p in during] == [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
        assert orphan_temp_files(tmp_path, lambda name: name == "other.pth") == []
    assert orphan_temp_files(tmp_path, lambda name: True) == []
