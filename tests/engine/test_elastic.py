"""Training that survives a lost worker: ``torchrun --max-restarts 1 --rdzv-backend c10d`` with
``--resume`` restarts every process from the last checkpoint when one dies, and the run ends as
an uninterrupted one (same iterations, same weights)."""
import os
import socket
import subprocess
import sys

import torch

from maskrcnn.engine.curves import read_metrics
from maskrcnn.inference.checkpoint import load_checkpoint
from tests.engine.test_train_cli import ROOT, TINY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, out, fault_after=None):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    script = os.path.join(ROOT, "tests", "engine", "fault_train.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--max-restarts=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{_free_port()}", "--monitor-interval=0.5",
           script, str(cfg), "--resume", "--no-progress",
           "--set", f"train.output_dir={out}", "solver.max_iter=4", "solver.steps=[3]", "train.checkpoint_period=2",
           "train.eval_period=0", "train.num_threads=1"]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", FAULT_AFTER=str(fault_after or -1))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_a_rank_killed_mid_run_is_restarted_and_the_run_resumes_exactly(tmp_path):
    clean = _torchrun(tmp_path, tmp_path / "clean")
    faulty = _torchrun(tmp_path, tmp_path / "faulty", fault_after=2)
    # the first attempt lost rank 1 (SIGKILL) and torchrun restarted the group once
    assert "Signals.SIGKILL" in faulty.stderr or "exitcode: -9" in faulty.stderr, faulty.stderr[-3000:]
    assert "resumed from" in (tmp_path / "faulty" / "log.txt").read_text()
    assert "resumed from" not in (tmp_path / "clean" / "log.txt").read_text()
    assert clean.stdout.count("done: 4 iterations") == faulty.stdout.count("done: 4 iterations") == 1
    a = load_checkpoint(str(tmp_path / "clean" / "model_final.pth"))
    b = load_checkpoint(str(tmp_path / "faulty" / "model_final.pth"))
    assert a["iteration"] == b["iteration"] == 4 and b["world_size"] == 2
    for k, v in a["model"].items():  # exact resume: the same weights as the uninterrupted run
        assert torch.equal(v, b["model"][k]), k
    # each iteration logged once: the metrics of the lost attempt after its checkpoint were cut
    its = [r["iteration"] for r in read_metrics(str(tmp_path / "faulty" / "metrics.jsonl")) if "loss" in r]
    assert its == [1, 2, 3, 4]
