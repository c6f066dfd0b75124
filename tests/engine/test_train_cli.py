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
