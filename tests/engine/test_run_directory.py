"""One run per output directory: the lock, stale locks, orphan temp files, and an earlier run's
checkpoints (refused unless resume or overwrite; a stale model_best never survives)."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from maskrcnn.engine.run_directory import BEST, RunDirectory, RunDirectoryError
from maskrcnn.inference.checkpoint import load_checkpoint
from maskrcnn.engine.curves import read_metrics
from maskrcnn.engine.trainer import Trainer
from tests.engine.standins import TinyDataset, tiny_config
from tests.engine.standins import TinyModel as _TinyModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(1)


def TinyModel(**faults):
    torch.manual_seed(7)
    return _TinyModel(**faults)


def _trainer(cfg, model=None, **kwargs):
    return Trainer(cfg, model=model or TinyModel(), train_dataset=TinyDataset(5, augment=True),
                   val_dataset=TinyDataset(3, seed=1), progress=False, **kwargs)


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def _killed_lock_holder(lock_path) -> int:
    """Pid of a process that took ``lock_path`` and was then killed (SIGKILL: no clean-up ran)."""
    proc = _python(
        "import os, signal\n"
        "from maskrcnn.fileio import FolderLock\n"
        f"FolderLock({str(lock_path)!r}).acquire()\n"
        "print(os.getpid(), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return int(proc.stdout.split()[0])


def test_a_second_run_on_the_same_directory_is_refused_naming_the_holder(tmp_path):
    out = str(tmp_path / "run")
    first = _trainer(tiny_config(out))  # holds the directory from construction to the end of train()
    holder = json.loads(open(os.path.join(out, "run.lock")).read())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(RunDirectoryError) as e:
        _trainer(tiny_config(out, lr=0.05))
    msg = str(e.value)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg and "run.lock" in msg and "\n" not in msg
    first.train()  # the refused run changed nothing: the first one runs on undisturbed
    recs = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r]
    assert [r["iteration"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert not os.path.exists(os.path.join(out, "run.lock"))  # released at the end


@pytest.mark.parametrize("fault", [RuntimeError, KeyboardInterrupt])
def test_the_lock_is_released_on_errors_and_interrupts(tmp_path, fault):
    out = str(tmp_path)
    with pytest.raises(fault):
        _trainer(tiny_config(out), TinyModel(fail_at=3, fail_with=fault)).train()
    assert not os.path.exists(os.path.join(out, "run.lock"))
    assert _trainer(tiny_config(out), resume=True).train()["iteration"] == 6


def test_a_stale_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path):
    out = tmp_path / "run"
    pid = _killed_lock_holder(out / "run.lock")
    assert json.loads((out / "run.lock").read_text())["pid"] == pid  # its lock file is left behind
    _trainer(tiny_config(str(out))).train()
    log = (out / "log.txt").read_text()
    assert f"took over {out / 'run.lock'} from pid {pid} on host {socket.gethostname()}" in log
    assert not (out / "run.lock").exists()


def test_orphan_temp_files_of_a_killed_checkpoint_write_are_removed_at_the_next_start(tmp_path):
    out = tmp_path / "run"
    # A writer killed in the middle of a checkpoint write, through the real atomic-write helper.
    proc = _python(
        "import os, signal\n"
        "from maskrcnn.fileio import atomic_open\n"
        f"with atomic_open({str(out / 'model_0000004.pth')!r}, 'wb', fsync=True) as f:\n"
        "    f.write(b'half a checkpoint'); f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    orphans = [n for n in os.listdir(out) if n.startswith(".model_0000004.pth.")]
    assert len(orphans) == 1
    (out / "notes.txt").write_text("mine")
    (out / ".notes.txt.123.abcdef12.tmp").write_text("not the trainer's file: left alone")
    _trainer(tiny_config(str(out)), resume=True).train()
    names = set(os.listdir(out))
    assert orphans[0] not in names and {"notes.txt", ".notes.txt.123.abcdef12.tmp"} <= names
    assert not [n for n in names if n.endswith(".tmp") and "notes" not in n]
    assert f"removed 1 temp file(s) of writes killed before they finished: {orphans[0]}" in (out / "log.txt").read_text()


def test_a_new_run_over_an_earlier_runs_checkpoints_is_refused_and_overwrite_replaces_them(tmp_path):
    out = str(tmp_path)
    _trainer(tiny_config(out)).train()
    before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out) if n != "log.txt"}
    other = tiny_config(out, "train.eval_period=0", lr=0.05)  # another config, no validation
    with pytest.raises(RunDirectoryError) as e:
        _trainer(other)
    msg = str(e.value)
    assert "--resume" in msg and "--overwrite" in msg and "model_final.pth" in msg and out in msg
    assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out) if n != "log.txt"} == before

    _trainer(other, overwrite=True).train()
    names = set(os.listdir(out))
    assert "model_best.pth" not in names  # the earlier run's best does not survive a run without validation
    final = load_checkpoint(os.path.join(out, "model_final.pth"))
    assert final["config"]["solver"]["lr"] == 0.05
    assert "val/mAP" not in open(os.path.join(out, "metrics.jsonl")).read()
    assert "--overwrite: removed the earlier run's" in open(os.path.join(out, "log.txt")).read()


def test_a_run_that_died_before_its_first_checkpoint_can_be_started_again(tmp_path):
    out = str(tmp_path)
    with pytest.raises(RuntimeError, match="injected failure"):
        _trainer(tiny_config(out), TinyModel(fail_at=1)).train()
    assert _trainer(tiny_config(out)).train()["iteration"] == 6  # nothing to lose: no refusal


def test_resume_with_nothing_to_resume_but_an_earlier_best_is_refused(tmp_path):
    out = str(tmp_path)
    cfg = tiny_config(out, "train.eval_period=1", "train.checkpoint_period=5")
    with pytest.raises(RuntimeError, match="injected failure"):
        _trainer(cfg, TinyModel(fail_at=3)).train()  # model_best at 1 and 2, no checkpoint yet
    assert "model_best.pth" in os.listdir(out) and "last_checkpoint" not in os.listdir(out)
    with pytest.raises(RunDirectoryError, match="nothing to resume.*model_best.pth"):
        _trainer(cfg, resume=True)
    assert _trainer(cfg, overwrite=True).train()["iteration"] == 6


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    with pytest.raises(ValueError, match="exclude"):
        _trainer(tiny_config(str(tmp_path)), resume=True, overwrite=True)


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
