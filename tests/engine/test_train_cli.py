"""The real model and data through ``train.py``: a few iterations on tiny synthetic images."""
import os

import pytest
import torch

import train as train_cli
from maskrcnn.inference.checkpoint import load_checkpoint, load_model
from maskrcnn.engine.curves import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = """
model:
  backbone: {name: resnet18, norm: gn, freeze_at: 0, stem_out_channels: 32, res2_out_channels: 32}
  fpn: {out_channels: 32, norm: gn}
  rpn: {pre_nms_topk_train: 200, post_nms_topk_train: 100, pre_nms_topk_test: 200, post_nms_topk_test: 100,
        batch_size_per_image: 64}
  roi_heads: {num_classes: 1, batch_size_per_image: 32, box_fc_dim: 64, detections_per_image: 50}
  mask_head: {num_convs: 1, conv_dim: 32, norm: gn}
  input: {in_channels: 1, pixel_mean: [0.5], pixel_std: [0.25]}
data:
  format: synthetic
  class_agnostic: true
  batch_size: 2
  num_workers: 0
  synthetic: {num_images: 10, height: 64, width: 64, cells_per_image: [3, 6]}
solver: {optimizer: adamw, lr: 0.001, max_iter: 3, steps: [2], warmup_iters: 1}
train: {device: cpu, checkpoint_period: 2, eval_period: 3, log_period: 1, max_eval_images: 2}
test: {score_thresh: [0.0]}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp / "out"
    torch.set_num_threads(1)
    rc = train_cli.main([str(cfg), "--no-progress", "--set", f"train.output_dir={out}"])
    return rc, out, cfg


def test_train_cli_writes_a_run(run):
    rc, out, _ = run
    assert rc == 0
    names = set(os.listdir(out))
    assert {"model_0000002.pth", "model_final.pth", "model_best.pth", "last_checkpoint", "metrics.jsonl",
            "curves.png", "config.yaml", "log.txt"} <= names
    records = read_metrics(str(out / "metrics.jsonl"))
    train = [r for r in records if "loss" in r]
    assert [r["iteration"] for r in train] == [1, 2, 3]
    for key in ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"):
        assert key in train[0]
    val = [r for r in records if "val/mAP" in r]
    assert len(val) == 1 and val[0]["val/num_images"] == 2 and "val/mAP@0.50" in val[0]


def test_load_model_rebuilds_the_trained_model(run):
    _, out, _ = run
    model, cfg = load_model(str(out / "model_final.pth"), "cpu")
    ck = load_checkpoint(str(out / "model_final.pth"))
    assert not model.training and cfg.solver.max_iter == 3
    for k, v in model.state_dict().items():
        if k in ck["model"]:
            assert torch.equal(v, ck["model"][k]), k
    with torch.no_grad():
        (pred,) = model([torch.rand(1, 64, 64)])
    assert pred.image_size == (64, 64) and pred.masks is not None and pred.masks.is_soft


def test_train_cli_config_errors(run, capsys):
    _, out, cfg = run
    assert train_cli.main([str(cfg), "--set", "solver.optimizer=rmsprop", f"train.output_dir={out}_bad"]) == 2
    assert "solver.optimizer" in capsys.readouterr().err
    assert train_cli.main([str(cfg), "--set", "solver.bogus=1"]) == 2
    assert "solver.bogus" in capsys.readouterr().err


def test_torchrun_two_cpu_processes(tmp_path):
    """``torchrun --nproc_per_node=2 train.py``: the env:// set-up, gloo on CPU, rank 0 alone writes."""
    import subprocess
    import sys

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), str(cfg), "--no-progress",
           "--set", f"train.output_dir={out}", "solver.max_iter=2", "solver.steps=[1]", "train.eval_period=2",
           "train.num_threads=1"]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("done: 2 iterations") == 1  # rank 0 alone reports
    ck = load_checkpoint(str(out / "model_final.pth"))
    assert ck["world_size"] == 2 and ck["iteration"] == 2
    records = read_metrics(str(out / "metrics.jsonl"))
    assert [r["iteration"] for r in records if "loss" in r] == [1, 2]
    assert [r["val/num_images"] for r in records if "val/mAP" in r] == [2]


def _files(folder):
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder)) if n != "log.txt"}


def test_train_cli_resume_that_changes_the_model_is_one_error_line(run, capsys):
    _, out, cfg = run
    before = _files(out)
    rc = train_cli.main([str(cfg), "--resume", "--no-progress", "--set", f"train.output_dir={out}",
                         "model.fpn.out_channels=16"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "model.fpn.out_channels: 32 -> 16" in err and "model_final.pth" in err
    assert _files(out) == before


def test_train_cli_new_run_over_a_finished_run_is_refused(run, capsys):
    _, out, cfg = run
    before = _files(out)
    assert train_cli.main([str(cfg), "--no-progress", "--set", f"train.output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--resume" in err and "--overwrite" in err and str(out) in err
    assert _files(out) == before
    capsys.readouterr()
    assert train_cli.main([str(cfg), "--resume", "--overwrite"]) == 2  # argparse: the two exclude each other
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--overwrite" in err[0] and "--help" in err[0]


def test_train_cli_resume_with_a_larger_max_iter_on_the_real_model(run, tmp_path, capsys):
    import shutil

    _, out, cfg = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    rc = train_cli.main([str(cfg), "--resume", "--no-progress", "--set", f"train.output_dir={copy}",
                         "solver.max_iter=4", "solver.lr=0.0005"])
    assert rc == 0, capsys.readouterr().err
    ck = load_checkpoint(str(copy / "model_final.pth"))
    assert ck["iteration"] == 4 and ck["config"]["solver"]["lr"] == 0.0005
    train = [r for r in read_metrics(str(copy / "metrics.jsonl")) if "loss" in r]
    assert [r["iteration"] for r in train] == [1, 2, 3, 4]
    assert train[-1]["lr"] == pytest.approx(0.0005 * 0.1)  # solver.steps=[2]: gamma 0.1 after iteration 2


def test_train_cli_directory_in_use_is_refused_naming_the_holder(run, tmp_path, capsys):
    import subprocess
    import sys

    _, _, cfg = run
    busy = tmp_path / "busy"
    code = ("import sys\nfrom maskrcnn.fileio import FolderLock\n"
            f"FolderLock({str(busy / 'run.lock')!r}).acquire()\nprint('ready', flush=True)\nsys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        rc = train_cli.main([str(cfg), "--no-progress", "--set", f"train.output_dir={busy}"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and f"pid {holder.pid} on host" in err, err
        assert sorted(os.listdir(busy)) == ["run.lock"]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
