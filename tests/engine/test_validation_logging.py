"""Validation's COCO switch and progress, and the trainer's log.txt with the progress bar on."""
import pytest
import torch

from maskrcnn.engine.curves import read_metrics
from maskrcnn.engine.trainer import Trainer
from maskrcnn.engine.validate import run_validation
from maskrcnn.config import TestConfig as Cfg
from tests.engine.standins import TinyDataset, TinyModel, tiny_config
from tests.engine.test_eval_only import HalfDrawnDataset
from tests.inference.stub_model import IdStubModel

torch.set_num_threads(1)


def test_validation_coco_ap_of_the_raw_detections(capsys):
    # One of two cells found per image (see test_eval_only): COCO AP 51/101 for masks and boxes.
    scores = run_validation(IdStubModel(1), HalfDrawnDataset(), Cfg(score_thresh=(0.1,)), torch.device("cpu"),
                            batch_size=2, coco=True, class_names=["cell"], progress="lines", details=True)
    assert scores["val/mAP"] == pytest.approx(0.5)
    assert scores["val/segm/AP"] == pytest.approx(51 / 101) and scores["val/bbox/AP"] == pytest.approx(51 / 101)
    assert scores["val/segm/AR1000"] == pytest.approx(0.5)
    assert "validate: 2/2 batch (100%)" in capsys.readouterr().err
    plain = run_validation(IdStubModel(1), HalfDrawnDataset(), Cfg(score_thresh=(0.1,)), torch.device("cpu"))
    assert not any(k.startswith(("val/segm", "val/bbox")) for k in plain)


def test_coco_ap_ignores_the_submission_thresholds():
    # A score threshold above every detection empties the submission (Kaggle 0) but not COCO AP,
    # which scores the model's detections before post-processing.
    scores = run_validation(IdStubModel(1), HalfDrawnDataset(), Cfg(score_thresh=(0.999,)),
                            torch.device("cpu"), coco=True)
    assert scores["val/mAP"] == 0.0 and scores["val/segm/AP"] == pytest.approx(51 / 101)


def test_log_txt_holds_the_loss_lines_also_with_the_bar(tmp_path, capsys):
    cfg = tiny_config(str(tmp_path), "train.eval_coco=true")
    Trainer(cfg, model=TinyModel(), train_dataset=TinyDataset(4), val_dataset=TinyDataset(2, seed=1),
            progress=True).train()
    log = (tmp_path / "log.txt").read_text()
    assert [f"iter {i}/6  loss:" in log for i in range(1, 7)] == [True] * 6
    assert "ETA 0:00" in log.splitlines()[-1] or any(line.rstrip().endswith("ETA 0:00") for line in log.splitlines())
    err = capsys.readouterr().err
    assert "iter 1/6  loss:" not in err  # on the console the bar shows the losses
    assert "validation mAP" in err and "COCO segm AP" in log
    val = [r for r in read_metrics(str(tmp_path / "metrics.jsonl")) if "val/mAP" in r]
    assert val and all("val/segm/AP" in r and "val/bbox/AP" in r for r in val)


def test_kaggle_scores_per_class_and_threshold():
    from maskrcnn.engine.validate import kaggle_scores
    from maskrcnn.structures import Instances, MaskList

    gt = torch.zeros((2, 16, 16), dtype=torch.bool)
    gt[0, 1:6, 1:6] = True
    gt[1, 9:14, 9:14] = True
    shifted = gt[1:].roll(1, dims=2)  # IoU with gt[1] = 20 / 30: a match at 0.50 .. 0.65 only

    def inst(dense):
        m = MaskList.from_dense(dense)
        return Instances((16, 16), m.tight_boxes(), torch.zeros(len(m), dtype=torch.long), torch.ones(len(m)), m)

    scores = kaggle_scores([("a", inst(gt), inst(gt), "astro"), ("b", inst(shifted), inst(gt), "cort")], details=True)
    assert scores["val/mAP/astro@0.50"] == 1.0 and scores["val/mAP/astro@0.95"] == 1.0
    # cort: 1 TP / (1 + 0 + 1) up to IoU 0.65 (0.667 > t), then 0 / (0 + 1 + 2)
    assert [scores[f"val/mAP/cort@{t:.2f}"] for t in (0.5, 0.65, 0.7)] == pytest.approx([0.5, 0.5, 0.0])
    assert scores["val/mAP/cort"] == pytest.approx(4 * 0.5 / 10)
