"""evaluate.py crossval: per-fold runs summarised overall, per domain and domain-weighted."""
import json
import math
import os

import pytest

from maskrcnn.evaluation.crossval import final_validation, fold_dir, format_table, summarize
from maskrcnn.cli.evaluate import main as evaluate_main

THR = ("0.50", "0.55", "0.60", "0.65", "0.70", "0.75", "0.80", "0.85", "0.90", "0.95")


def _record(it, m, fluo, hist, bright=None, strict=0.1):
    rec = {"iteration": it, "val/mAP": m, "val/num_images": 10, "val/mAP/fluorescence": fluo,
           "val/mAP/histology": hist}
    if bright is not None:
        rec["val/mAP/brightfield"] = bright
    for t in THR:
        rec[f"val/mAP@{t}"] = strict if float(t) >= 0.75 else 0.9
    return rec


def _write_run(root, fold, *records):
    d = fold_dir(str(root), fold)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"iteration": 10, "loss": 1.0}) + "\n")
        for r in records:
            f.write(json.dumps(r) + "\n")
    return d


def test_summary_is_the_mean_and_sample_std_with_each_domain_counted_once():
    recs = {1: _record(700, 0.50, 0.60, 0.20, 0.40, strict=0.10), 2: _record(700, 0.40, 0.50, 0.10, 0.30, strict=0.20)}
    s = summarize(recs)
    assert s["folds"][1]["domain-weighted"] == pytest.approx((0.60 + 0.20 + 0.40) / 3)
    assert s["folds"][2]["domain-weighted"] == pytest.approx(0.30)
    assert s["mean"]["mAP"] == pytest.approx(0.45)
    assert s["std"]["mAP"] == pytest.approx(math.sqrt(2 * 0.05 ** 2))  # sample std of 0.5, 0.4
    assert s["mean"]["histology"] == pytest.approx(0.15)
    assert s["mean"]["mAP@0.75+"] == pytest.approx(0.15)
    assert s["columns"][:2] == ["mAP", "domain-weighted"]


def test_a_domain_missing_in_a_fold_is_averaged_over_the_folds_that_have_it():
    s = summarize({0: _record(5, 0.5, 0.6, 0.2, 0.4), 1: _record(5, 0.5, 0.6, 0.2)})
    assert s["mean"]["brightfield"] == pytest.approx(0.4)
    assert s["folds"][1]["domain-weighted"] == pytest.approx(0.4)  # (0.6 + 0.2) / 2
    assert "| 1 |" in format_table(s) and "-" in format_table(s).splitlines()[3]


def test_the_last_validation_record_is_the_runs_figure(tmp_path):
    d = _write_run(tmp_path, 0, _record(350, 0.3, 0.3, 0.1), _record(700, 0.5, 0.6, 0.2))
    assert final_validation(d)["val/mAP"] == 0.5
    assert final_validation(str(tmp_path / "nothing")) is None


def test_cli_summarises_finished_runs_and_writes_the_report(tmp_path, capsys):
    root = tmp_path / "cv"
    _write_run(root, 1, _record(700, 0.50, 0.60, 0.20))
    _write_run(root, 2, _record(700, 0.40, 0.50, 0.10))
    rc = evaluate_main(["crossval", "configs/dsb2018_cpu.yaml", "--folds", "1,2", "--out", str(root), "--no-train"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| mean of 2 | **0.4500** | **0.3500** |" in out
    data = json.loads((root / "crossval.json").read_text())
    assert data["mean"]["domain-weighted"] == pytest.approx(0.35)
    assert (root / "crossval.md").read_text().startswith("# configs/dsb2018_cpu.yaml")


def test_cli_refuses_a_missing_run_with_no_train_and_a_fold_out_of_range(tmp_path, capsys):
    rc = evaluate_main(["crossval", "configs/dsb2018_cpu.yaml", "--folds", "3", "--out", str(tmp_path), "--no-train"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: fold 3: no finished run in ")
    rc = evaluate_main(["crossval", "configs/dsb2018_cpu.yaml", "--folds", "0,7", "--out", str(tmp_path)])
    assert rc == 2 and "--folds: [7] outside 0..4" in capsys.readouterr().err


def test_cli_trains_each_unfinished_fold_and_resumes_an_interrupted_one(tmp_path, monkeypatch, capsys):
    import maskrcnn.cli.train as launch

    root = tmp_path / "cv"
    _write_run(root, 0, _record(700, 0.5, 0.6, 0.2))                     # finished: not trained again
    d1 = _write_run(root, 1, _record(350, 0.3, 0.3, 0.1))                # interrupted at 350 of 700
    open(os.path.join(d1, "last_checkpoint"), "w").close()
    calls = []

    def fake_train(cfg, resume=False, progress=True, overwrite=False):
        calls.append((cfg.data.fold, cfg.train.output_dir, resume, cfg.model.input.invert_bright))
        _write_run(root, cfg.data.fold, _record(cfg.solver.max_iter, 0.4, 0.5, 0.3))
        return 0

    monkeypatch.setattr(launch, "main_train", fake_train)
    rc = evaluate_main(["crossval", "configs/dsb2018_cpu.yaml", "--folds", "0,1,2", "--out", str(root),
                        "--set", "model.input.invert_bright=true"])
    assert rc == 0
    assert calls == [(1, fold_dir(str(root), 1), True, True), (2, fold_dir(str(root), 2), False, True)]
    assert "| mean of 3 |" in capsys.readouterr().out


def test_cli_refuses_an_out_folder_that_is_an_input(capsys):
    # The fold runs would be written into the image folder, the report over the split file.
    for out in ("../shared/data/dsb2018/stage1_train", "output/splits/dsb2018_folds.json"):
        rc = evaluate_main(["crossval", "configs/dsb2018_cpu.yaml", "--folds", "1", "--out", out, "--no-train"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert err[0].startswith("error: --out is an input of this run") and out in err[0]
