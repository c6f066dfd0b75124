"""--resume with a changed config: allowed solver/train keys apply from the resume point, other
changes and non-finite or mismatched checkpoints are refused before anything is written."""
import os
import random

import numpy as np
import pytest
import torch

from maskrcnn.config import may_change_on_resume
from maskrcnn.engine.resume import capture_rng_state, restore_rng_state
from maskrcnn.engine.run_directory import ResumeError
from maskrcnn.inference.checkpoint import atomic_save, load_checkpoint
from maskrcnn.engine.curves import read_metrics
from maskrcnn.engine.schedule import lr_factor
from maskrcnn.engine.hooks import NonFiniteLossError
from maskrcnn.engine.trainer import Trainer
from tests.engine.standins import TinyDataset, tiny_config
from tests.engine.standins import TinyModel as _TinyModel

torch.set_num_threads(1)


def TinyModel(**faults):
    torch.manual_seed(7)
    return _TinyModel(**faults)


def _run(cfg, model, resume=False, n_train=5):
    return Trainer(cfg, resume=resume, model=model, train_dataset=TinyDataset(n_train, augment=True),
                   val_dataset=TinyDataset(3, seed=1), progress=False).train()


def _train_records(out):
    return [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r]


def _snapshot(out):
    """Every file's bytes: a refused resume must leave the directory exactly as it was."""
    return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out)) if n != "log.txt"}


def test_a_larger_max_iter_continues_a_finished_cosine_run(tmp_path):
    out = str(tmp_path)
    _run(tiny_config(out, schedule="cosine", steps=[]), TinyModel())
    final6 = load_checkpoint(os.path.join(out, "model_final.pth"))
    assert final6["iteration"] == 6

    longer = tiny_config(out, schedule="cosine", steps=[], max_iter=10)
    model = TinyModel()
    summary = _run(longer, model, resume=True)

    assert summary["iteration"] == 10 and model.calls == 4
    recs = _train_records(out)
    assert [r["iteration"] for r in recs] == list(range(1, 11))
    extra = [r["lr"] for r in recs[6:]]
    # The rates of the 10-iteration cosine from iteration 6 on; before the fix these were all 0
    # (the restored scheduler kept the old horizon of 6).
    assert extra == pytest.approx([longer.solver.lr * lr_factor(longer.solver, i) for i in range(6, 10)])
    assert all(lr > 0 for lr in extra)
    final10 = load_checkpoint(os.path.join(out, "model_final.pth"))
    assert final10["iteration"] == 10
    assert any(not torch.equal(final6["model"][k], final10["model"][k]) for k in final6["model"])
    # the old final is kept as the periodic checkpoint of its iteration, not as a second "final"
    assert load_checkpoint(os.path.join(out, "model_0000006.pth"))["iteration"] == 6
    assert open(os.path.join(out, "last_checkpoint")).read().strip() == "model_final.pth"
    log = open(os.path.join(out, "log.txt")).read()
    assert "solver.max_iter changed: 6 -> 10" in log


def test_a_lower_lr_after_a_nan_stop_takes_effect(tmp_path):
    out = str(tmp_path)
    # The stand-in turns NaN once its weights move 0.3 from their start: at iteration 4 with lr 0.1.
    with pytest.raises(NonFiniteLossError, match="iteration 4"):
        _run(tiny_config(out), TinyModel(diverge_above=0.3))
    assert open(os.path.join(out, "last_checkpoint")).read().strip() == "model_0000002.pth"

    lower = tiny_config(out, lr=0.01)
    summary = _run(lower, TinyModel(diverge_above=0.3), resume=True)  # before the fix: NaN again at 4

    assert summary["iteration"] == 6
    recs = _train_records(out)
    assert [r["iteration"] for r in recs] == list(range(1, 7))
    assert [r["lr"] for r in recs[2:]] == pytest.approx([0.01 * lr_factor(lower.solver, i) for i in range(2, 6)])
    final = load_checkpoint(os.path.join(out, "model_final.pth"))
    assert all(g["initial_lr"] == 0.01 for g in final["optimizer"]["param_groups"])
    assert final["config"]["solver"]["lr"] == 0.01
    assert "solver.lr changed: 0.1 -> 0.01" in open(os.path.join(out, "log.txt")).read()


def test_changed_optimizer_hyperparameters_apply_on_resume(tmp_path):
    out = str(tmp_path)
    with pytest.raises(RuntimeError, match="injected failure"):
        _run(tiny_config(out, optimizer="adamw", lr=0.01), TinyModel(fail_at=5))
    _run(tiny_config(out, optimizer="adamw", lr=0.01, weight_decay=0.5, betas=[0.8, 0.99], clip_grad_norm=0.5),
         TinyModel(), resume=True)
    final = load_checkpoint(os.path.join(out, "model_final.pth"))
    decayed, no_decay = final["optimizer"]["param_groups"]
    assert decayed["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    assert all(tuple(g["betas"]) == (0.8, 0.99) for g in final["optimizer"]["param_groups"])
    assert [r for r in _train_records(out) if r["iteration"] > 4][0]["grad_norm"] > 0  # clipping is on


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.fpn.out_channels=16", "model.fpn.out_channels"),
        ("model.roi_heads.num_classes=3", "model.roi_heads.num_classes"),
        ("data.fold=1", "data.fold"),
        ("solver.optimizer=adamw", "solver.optimizer"),
        ("train.seed=1", "train.seed"),
    ],
)
def test_changes_a_resume_cannot_honour_are_refused_and_nothing_is_written(tmp_path, override, key):
    out = str(tmp_path)
    with pytest.raises(RuntimeError, match="injected failure"):
        _run(tiny_config(out), TinyModel(fail_at=5))
    before = _snapshot(out)
    cfg = tiny_config(out, override)
    with pytest.raises(ResumeError) as e:
        _run(cfg, TinyModel(), resume=True)
    msg = str(e.value)
    assert key in msg and "model_0000004.pth" in msg and "\n" not in msg
    assert _snapshot(out) == before and not os.path.exists(os.path.join(out, "run.lock"))
    assert not may_change_on_resume(key)


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_tensor(tmp_path):
    out = str(tmp_path)
    with pytest.raises(RuntimeError, match="injected failure"):
        _run(tiny_config(out), TinyModel(fail_at=5))
    path = os.path.join(out, "model_0000004.pth")
    ck = load_checkpoint(path)
    ck["model"]["conv2.weight"][0, 1] = float("nan")  # e.g. a checkpoint written by another tool
    torch.save(ck, path)
    with pytest.raises(ResumeError) as e:
        _run(tiny_config(out), TinyModel(), resume=True)
    msg = str(e.value)
    assert "conv2.weight holds NaN" in msg and path in msg and "model_0000002.pth" in msg


def test_a_checkpoint_with_inf_optimizer_state_is_refused(tmp_path):
    out = str(tmp_path)
    with pytest.raises(RuntimeError, match="injected failure"):
        _run(tiny_config(out, optimizer="adamw", lr=0.01), TinyModel(fail_at=5))
    path = os.path.join(out, "model_0000004.pth")
    ck = load_checkpoint(path)
    first = next(iter(ck["optimizer"]["state"].values()))
    first["exp_avg_sq"].view(-1)[0] = float("inf")
    torch.save(ck, path)
    with pytest.raises(ResumeError, match="exp_avg_sq of conv1.weight"):
        _run(tiny_config(out, optimizer="adamw", lr=0.01), TinyModel(), resume=True)


def test_a_changed_training_set_is_refused(tmp_path):
    out = str(tmp_path)
    with pytest.raises(RuntimeError, match="injected failure"):
        _run(tiny_config(out), TinyModel(fail_at=5))
    with pytest.raises(ResumeError, match="6 images but the checkpoint was trained on 5"):
        _run(tiny_config(out), TinyModel(), resume=True, n_train=6)


def test_a_best_model_from_after_the_resume_point_is_set_aside(tmp_path):
    out = str(tmp_path)
    # validation (and model_best) at 3, checkpoint at 2, crash during 4
    with pytest.raises(RuntimeError, match="injected failure"):
        _run(tiny_config(out), TinyModel(fail_at=4))
    assert load_checkpoint(os.path.join(out, "model_best.pth"))["iteration"] == 3
    _run(tiny_config(out, lr=0.05), TinyModel(), resume=True)
    old = load_checkpoint(os.path.join(out, "model_best_0000003_before_resume.pth"))
    assert old["iteration"] == 3 and old["config"]["solver"]["lr"] == 0.1
    best = load_checkpoint(os.path.join(out, "model_best.pth"))
    assert best["config"]["solver"]["lr"] == 0.05  # chosen among the resumed run's validations only


def test_the_policy_table():
    for key in ("solver.lr", "solver.max_iter", "solver.steps", "solver.clip_grad_norm", "train.eval_period",
                "train.num_threads", "data.batch_size", "data.augment.hflip", "test.score_thresh",
                "model.backbone.weights"):
        assert may_change_on_resume(key), key
    for key in ("model.backbone.name", "model.anchors.sizes", "data.format", "data.classes", "data.synthetic.seed",
                "solver.no_decay_norm_bias", "train.seed"):
        assert not may_change_on_resume(key), key


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
