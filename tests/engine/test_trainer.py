import os

import pytest
import torch
from PIL import Image

from maskrcnn.config import ConfigError
from maskrcnn.inference.checkpoint import load_checkpoint
from maskrcnn.engine.curves import read_metrics
from maskrcnn.engine.hooks import NonFiniteLossError
from maskrcnn.engine.trainer import Trainer, check_train_config
from tests.engine.standins import TinyDataset, assert_same_weights_and_optimizer, tiny_config
from tests.engine.test_validation_values import kaggle_score_by_hand
from tests.engine.standins import TinyModel as _TinyModel

torch.set_num_threads(1)


def TinyModel(**faults):
    torch.manual_seed(7)  # the same initial weights in every run (a built model is seeded by the caller)
    return _TinyModel(**faults)


def _run(cfg, model, resume=False, overwrite=False):
    torch.rand(int(torch.randint(1, 9, ()).item()))  # the trainer must not depend on the caller's RNG state
    return Trainer(
        cfg,
        resume=resume,
        overwrite=overwrite,
        model=model,
        train_dataset=TinyDataset(5, augment=True),
        val_dataset=TinyDataset(3, seed=1),
        progress=False,
    ).train()


def _losses(path):
    return [(r["iteration"], r["loss_mask"], r["loss_cls"], r["lr"]) for r in read_metrics(path) if "loss" in r]


@pytest.mark.parametrize("solver", [{}, {"accum_steps": 2, "optimizer": "adamw", "lr": 0.01, "clip_grad_norm": 1.0}])
def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, solver):
    ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    ref = _run(tiny_config(ref_dir, **solver), TinyModel())
    accum = solver.get("accum_steps", 1)
    # Crash during iteration 5: after the checkpoint at 4, mid-epoch (5 images, batches of 2).
    with pytest.raises(RuntimeError, match="injected failure"):
        _run(tiny_config(run_dir, **solver), TinyModel(fail_at=4 * accum + 1))
    assert open(os.path.join(run_dir, "last_checkpoint")).read().strip() == "model_0000004.pth"
    assert not os.path.exists(os.path.join(run_dir, "model_final.pth"))
    out = _run(tiny_config(run_dir, **solver), TinyModel(), resume=True)

    a = load_checkpoint(os.path.join(ref_dir, "model_final.pth"))
    b = load_checkpoint(os.path.join(run_dir, "model_final.pth"))
    assert a["iteration"] == b["iteration"] == 6
    assert_same_weights_and_optimizer(a, b)
    assert a["loader"] == b["loader"]
    # The metrics file reads as one run: the crashed run's records are replaced, none doubled.
    assert _losses(os.path.join(ref_dir, "metrics.jsonl")) == _losses(os.path.join(run_dir, "metrics.jsonl"))
    assert [r["iteration"] for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "loss" in r] == list(range(1, 7))
    assert out["best_iteration"] == ref["best_iteration"] and out["best_score"] == ref["best_score"]


def test_resume_of_a_finished_run_does_nothing(tmp_path):
    cfg = tiny_config(str(tmp_path))
    _run(cfg, TinyModel())
    before = load_checkpoint(str(tmp_path / "model_final.pth"))["model"]
    model = TinyModel()
    out = _run(cfg, model, resume=True)
    assert out["iteration"] == 6 and model.calls == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_config(str(tmp_path))
    with pytest.raises(NonFiniteLossError) as e:
        _run(cfg, TinyModel(nan_at=3))
    msg = str(e.value)
    assert "iteration 3" in msg and "loss_mask=nan" in msg and "loss_cls=" in msg
    assert "model_0000002.pth" in msg
    names = os.listdir(tmp_path)
    assert "model_0000002.pth" in names and "model_final.pth" not in names
    assert not [n for n in names if n.startswith(".")]  # no temp files left
    ck = load_checkpoint(str(tmp_path / "model_0000002.pth"))
    assert ck["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_metrics_and_curves_files(tmp_path):
    # one_piece off: the by-hand score below takes the stand-in's whole binarised mask
    cfg = tiny_config(str(tmp_path), "test.one_piece=false")
    out = _run(cfg, TinyModel())
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val/mAP" in r]
    assert [r["iteration"] for r in train] == [1, 2, 3, 4, 5, 6]
    for r in train:
        assert {"lr", "loss_mask", "loss_cls", "it_per_s", "img_per_s", "time", "data_time"} <= set(r)
        assert r["loss"] == pytest.approx(r["loss_mask"] + r["loss_cls"])
    # The rate each step used, by hand: lr 0.1, linear warmup over 2 iterations from factor 0.001
    # (0.001, then 0.001 * 0.5 + 0.5), 1 until the step at iteration 4, then x 0.1.
    assert [r["lr"] for r in train] == pytest.approx([0.1 * 0.001, 0.1 * 0.5005, 0.1, 0.1, 0.01, 0.01])
    assert [r["iteration"] for r in val] == [3, 6]
    assert all(r["val/num_images"] == 3 for r in val)
    # The last validation scores the final weights: recompute it with a brute-force metric. The
    # stand-in predicts one mask per image (its sigmoid >= 0.5, score 0.9 >= test.score_thresh).
    final = TinyModel()
    final.load_state_dict(load_checkpoint(str(tmp_path / "model_final.pth"))["model"])
    final.eval()
    by_hand = []
    for i in range(3):
        s = TinyDataset(3, seed=1)[i]
        with torch.no_grad():
            (pred,) = final([s.image])
        mask = (pred.masks.to_dense() >= 0.5).numpy()
        mask = mask[mask.reshape(len(mask), -1).any(1)]  # an empty mask is dropped by post-processing
        by_hand.append(kaggle_score_by_hand(mask, s.instances.masks.to_dense().numpy()))
    assert val[-1]["val/mAP"] == pytest.approx(sum(by_hand) / 3)
    assert out["last_val"]["val/mAP"] == val[-1]["val/mAP"]
    best = load_checkpoint(str(tmp_path / "model_best.pth"))
    assert best["iteration"] == out["best_iteration"] and best["score"] == max(r["val/mAP"] for r in val)
    img = Image.open(tmp_path / "curves.png").convert("RGB")
    assert img.size[0] >= 800
    colors = {c for _, c in img.getcolors(maxcolors=1 << 20)}
    assert (31, 119, 180) in colors and (255, 127, 14) in colors  # first two series' lines are drawn
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "log.txt").stat().st_size > 0


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cpu(tmp_path, amp):
    cfg = tiny_config(str(tmp_path), amp=amp, max_iter=3, steps=[2])
    _run(cfg, TinyModel())
    ck = load_checkpoint(str(tmp_path / "model_final.pth"))
    if amp == "fp16":
        assert ck["scaler"] is not None and ck["scaler"]["scale"] > 0
    else:
        assert ck["scaler"] is None
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


@pytest.mark.parametrize(
    "override, words",
    [
        ("solver.optimizer=lamb", ["solver.optimizer", "lamb"]),
        ("solver.steps=[3,9]", ["solver.steps", "9"]),
        ("solver.accum_steps=0", ["solver.accum_steps"]),
        ("train.checkpoint_period=0", ["train.checkpoint_period"]),
        ("train.eval_period=-1", ["train.eval_period"]),
        ("data.batch_size=0", ["data.batch_size"]),
    ],
)
def test_bad_config_values(tmp_path, override, words):
    from maskrcnn.config import load_config

    base = tiny_config(str(tmp_path))
    from maskrcnn.config import to_dict
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(to_dict(base)))
    cfg = None
    with pytest.raises(ConfigError) as e:  # data.* keys are checked when the config loads, solver/train at training
        cfg = load_config(str(p), [override])
        check_train_config(cfg)
    for w in words:
        assert w in str(e.value)
    if cfg is not None:
        with pytest.raises(ConfigError):
            Trainer(cfg, model=TinyModel(), train_dataset=TinyDataset(2), val_dataset=TinyDataset(1), progress=False)


def test_unknown_config_key_is_an_error():
    from maskrcnn.config import load_config

    with pytest.raises(ConfigError, match="solver.warmup_iter"):
        load_config(None, ["solver.warmup_iter=5"])


def test_a_new_run_in_an_old_folder_forgets_the_old_checkpoint(tmp_path):
    cfg = tiny_config(str(tmp_path))
    _run(cfg, TinyModel())
    assert (tmp_path / "last_checkpoint").exists()
    with pytest.raises(RuntimeError, match="injected failure"):
        _run(cfg, TinyModel(fail_at=1), overwrite=True)  # replaces the old run, dies before its first checkpoint
    assert not (tmp_path / "last_checkpoint").exists()
    model = TinyModel()
    out = _run(cfg, model, resume=True)  # so --resume starts over instead of "resuming" the old run
    assert out["iteration"] == 6 and model.calls == 6


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_takes_bf16_only_where_it_is_native(tmp_path, monkeypatch, native):
    import maskrcnn.device
    import maskrcnn.engine.hooks
    from maskrcnn.engine.trainer import amp_context, resolve_amp

    monkeypatch.setattr(maskrcnn.device, "native_bf16", lambda device: native)
    monkeypatch.setattr(maskrcnn.engine.hooks, "native_bf16", lambda device: native)
    cpu = torch.device("cpu")
    assert resolve_amp(cpu, "auto") == ("bf16" if native else "")
    assert resolve_amp(cpu, "fp16") == "fp16" and resolve_amp(cpu, "") == ""
    with amp_context(cpu, "auto")():
        assert torch.is_autocast_enabled("cpu") == native
        if native:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    _run(tiny_config(str(tmp_path / "auto"), amp="auto", max_iter=2, steps=[1]), TinyModel())
    log = (tmp_path / "auto" / "log.txt").read_text()
    assert ("bf16 autocast (solver.amp auto)" if native else "float32 (solver.amp auto)") in log
    assert "emulated" not in log
    # bf16 asked for by name on a CPU without it: it runs, with a warning that it is slow.
    _run(tiny_config(str(tmp_path / "bf16"), amp="bf16", max_iter=2, steps=[1]), TinyModel())
    assert ("emulated and slower than float32" in (tmp_path / "bf16" / "log.txt").read_text()) == (not native)


@pytest.mark.parametrize("avx512_bf16, amx, want", [(True, False, True), (False, True, True), (False, False, False)])
def test_native_bf16_on_the_cpu_reads_its_instruction_sets(monkeypatch, avx512_bf16, amx, want):
    from maskrcnn.device import native_bf16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_bf16(torch.device("cpu")) is want
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # a torch without the probe: not native
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert native_bf16(torch.device("cpu")) is False
