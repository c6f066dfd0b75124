import numpy as np
import pytest
import torch

from maskrcnn import config
from maskrcnn.evaluation.kaggle import image_score
from maskrcnn.evaluation.tuning import TuneItem, prepare_image, sweep_group, tune_thresholds, write_thresholds
from maskrcnn.inference.filtering import remove_overlaps
from maskrcnn.structures import Instances, MaskList
from tests.evaluation.shapes import dense, random_blobs, rect

H, W = 48, 64


def soft_instances(masks: np.ndarray, scores, labels=None, value=0.9) -> Instances:
    soft = torch.from_numpy(masks.astype(np.float32)) * value
    ml = MaskList.from_dense(soft) if len(masks) else MaskList.empty((H, W), dtype=torch.float32)
    n = len(masks)
    lab = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels, dtype=torch.long)
    return Instances(ml.image_size, ml.tight_boxes(), lab, torch.as_tensor(scores, dtype=torch.float32), ml)


@pytest.mark.parametrize("seed", range(3))
def test_overlap_resolution_of_a_score_prefix_is_the_prefix_of_the_resolution(seed):
    # The property the sweep relies on: a mask's fate depends only on better-ranked masks.
    rng = np.random.default_rng(seed)
    masks = dense(random_blobs(rng, 30, H, W, rmin=3, rmax=10))
    full, alive = remove_overlaps(masks, 0.5, torch.zeros(len(masks), dtype=torch.long))
    for k in (1, 7, 18, 29):
        part, alive_k = remove_overlaps(masks[torch.arange(k)], 0.5, torch.zeros(k, dtype=torch.long))
        assert torch.equal(alive_k, alive[:k])
        assert torch.equal(part.crops, full.crops[:k])


@pytest.mark.parametrize("seed", range(3))
def test_sweep_equals_scoring_each_subset_directly(seed):
    rng = np.random.default_rng(seed)
    items, prepared = [], []
    for i in range(3):
        gt = random_blobs(rng, 12, H, W, rmin=2, rmax=9, overlap=False)
        gt = gt[gt.reshape(len(gt), -1).any(1)]
        pred = np.concatenate([np.roll(gt, int(rng.integers(-1, 2)), axis=2), random_blobs(rng, 6, H, W, rmin=1, rmax=6)])
        it = TuneItem(f"im{i}", soft_instances(pred, rng.random(len(pred))), dense(gt))
        items.append(it)
        prepared.append(prepare_image(it, 0.5, True, 0.5))
    scores, areas = [0.0, 0.3, 0.6], [0, 20, 60]
    got = sweep_group(prepared, scores, areas)
    for si, s in enumerate(scores):
        for ai, a in enumerate(areas):
            total = 0.0
            for it in items:
                order = torch.sort(it.pred.scores, descending=True, stable=True).indices
                binary = it.pred.masks[order].threshold(0.5)
                resolved, alive = remove_overlaps(binary, 0.5, torch.zeros(len(binary), dtype=torch.long))
                keep = alive & (it.pred.scores[order] >= s) & (resolved.areas() >= max(a, 1))
                total += image_score(resolved[torch.nonzero(keep)[:, 0]], it.gt)
            assert got[si, ai] == pytest.approx(total / len(items), abs=1e-12)


def test_tuning_finds_score_area_and_mask_thresholds(tmp_path):
    items = []
    for i in range(4):
        # Class 0 images: real cells score 0.8, false positives score 0.35.
        gt = [rect(H, W, 4 + 12 * k, 12 + 12 * k, 4, 14) for k in range(3)]
        fp = [rect(H, W, 4 + 12 * k, 12 + 12 * k, 40, 50) for k in range(3)]
        items.append(TuneItem(f"a{i}", soft_instances(np.array(gt + fp), [0.8] * 3 + [0.35] * 3, [0] * 6), dense(gt), "a"))
        # Class 1 images: real cells are big (80 px), false positives tiny (4 px) but confident.
        gt = [rect(H, W, 4 + 12 * k, 12 + 12 * k, 4, 14) for k in range(3)]
        fp = [rect(H, W, 4 + 12 * k, 6 + 12 * k, 40, 42) for k in range(3)]
        items.append(TuneItem(f"b{i}", soft_instances(np.array(gt + fp), [0.9] * 6, [1] * 6), dense(gt), "b"))
    base = config.TestConfig(score_thresh=(0.1,), mask_thresh=(0.5,), min_area=(0,))
    res = tune_thresholds(items, ["a", "b"], base, score_grid=[0.1, 0.3, 0.5, 0.7, 0.85], mask_grid=[0.5],
                          area_grid=[0, 10, 50, 100], verify=False)
    assert res.thresholds["score_thresh"][0] in (0.5, 0.7)
    assert res.thresholds["min_area"][1] == 10
    assert res.per_class["a"]["mAP"] == pytest.approx(1.0) and res.per_class["b"]["mAP"] == pytest.approx(1.0)
    assert res.per_class["a"]["base_mAP"] == pytest.approx(0.5)  # 3 TP, 3 FP
    assert res.sweep_mAP == pytest.approx(1.0) and res.base_mAP == pytest.approx(0.5)
    path = str(tmp_path / "tuned.yaml")
    write_thresholds(res, path, ["a", "b"])
    loaded = config.apply_thresholds(config.TestConfig(), path)
    assert loaded.min_area == tuple(res.thresholds["min_area"])
    assert loaded.score_thresh == tuple(res.thresholds["score_thresh"])


def test_tuning_the_mask_threshold():
    # Soft masks: the cell at 0.8, a halo around it at 0.45 that is not part of the cell.
    gt = [rect(H, W, 10, 20, 10, 20)]
    halo = np.zeros((1, H, W), np.float32)
    halo[0, 6:24, 6:24] = 0.45
    halo[0, 10:20, 10:20] = 0.8
    ml = MaskList.from_dense(torch.from_numpy(halo))
    inst = Instances((H, W), ml.tight_boxes(), torch.zeros(1, dtype=torch.long), torch.ones(1), ml)
    items = [TuneItem("x", inst, dense(gt))]
    res = tune_thresholds(items, [], config.TestConfig(mask_thresh=(0.4,)), score_grid=[0.5], mask_grid=[0.4, 0.5],
                          area_grid=[0], verify=False)
    assert res.thresholds["mask_thresh"] == [0.5]
    assert res.sweep_mAP == pytest.approx(1.0) and res.base_mAP == pytest.approx(0.0)


def test_tune_cli_reads_a_cache_and_labels(tmp_path, capsys):
    import evaluate
    from maskrcnn.formats.prediction_cache import PredictionCache
    from maskrcnn.formats.kaggle_csv import write_labels

    cache = PredictionCache(str(tmp_path / "cache"), {"weights": "x"})
    gts = []
    for i in range(3):
        gt = [rect(H, W, 4 + 12 * k, 12 + 12 * k, 4 + 3 * i, 14 + 3 * i) for k in range(3)]
        fp = [rect(H, W, 4 + 12 * k, 12 + 12 * k, 40, 50) for k in range(3)]
        cache.put(f"im{i}", soft_instances(np.array(gt + fp), [0.8] * 3 + [0.3] * 3))
        gts.append((f"im{i}", dense(gt), "astro"))
    cache.mark_complete([g[0] for g in gts], ["astro"])
    labels = str(tmp_path / "labels.csv")
    write_labels(labels, gts)
    out = str(tmp_path / "tuned.yaml")
    rc = evaluate.main(["tune", "--predictions", cache.dir, "--labels", labels, "--out", out,
                        "--score-grid", "0.2", "0.5", "--mask-grid", "0.5", "--area-grid", "0", "--no-verify"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "mAP 1.0000"
    assert config.apply_thresholds(config.TestConfig(), out).score_thresh == (0.5,)


def test_tune_without_class_names_is_one_error_naming_the_fix(tmp_path, capsys):
    import evaluate
    from maskrcnn.formats.prediction_cache import PredictionCache
    from maskrcnn.formats.kaggle_csv import write_labels

    cache = PredictionCache(str(tmp_path / "cache"), {"weights": "y"})
    gt = [rect(H, W, 4, 12, 4, 14)]
    cache.put("im0", soft_instances(np.array(gt), [0.8], labels=[2]))  # class 2 of 3
    cache.mark_complete(["im0"], [])  # a cache written without class names
    labels = str(tmp_path / "labels.csv")
    write_labels(labels, [("im0", dense(gt), None)])
    args = ["tune", "--predictions", cache.dir, "--labels", labels, "--out", str(tmp_path / "t.yaml"),
            "--score-grid", "0.5", "--mask-grid", "0.5", "--area-grid", "0", "--no-verify", "--no-progress"]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--classes" in err and "--config" in err and err.count("\n") == 1
    # the class names of a synthetic config's dataset (its reader's built-in cell types)
    (tmp_path / "syn.yaml").write_text("data: {format: synthetic}\n")
    assert evaluate.main(args + ["--config", str(tmp_path / "syn.yaml")]) == 0
    captured = capsys.readouterr()
    assert "class cort" in captured.out and "tune: 1/1 img (100%)" in captured.err

def test_tuning_with_mask_rescore_sweeps_the_rescored_scores():
    # Real cells: box score 0.6, mask probability 0.95 (rescored 0.57). False positives: box score
    # 0.8 but unsure masks at 0.55 (rescored 0.44). Only the rescored score separates them.
    items = []
    for i in range(3):
        gt = [rect(H, W, 4 + 12 * k, 12 + 12 * k, 4, 14) for k in range(3)]
        fp = [rect(H, W, 4 + 12 * k, 12 + 12 * k, 40, 50) for k in range(3)]
        soft = torch.from_numpy(np.array(gt + fp).astype(np.float32))
        soft = soft * torch.tensor([0.95] * 3 + [0.55] * 3)[:, None, None]
        ml = MaskList.from_dense(soft)
        inst = Instances((H, W), ml.tight_boxes(), torch.zeros(6, dtype=torch.long),
                         torch.tensor([0.6] * 3 + [0.8] * 3), ml)
        items.append(TuneItem(f"im{i}", inst, dense(gt)))
    grid = dict(score_grid=[0.1, 0.5, 0.7], mask_grid=[0.5], area_grid=[0])
    plain = tune_thresholds(items, [], config.TestConfig(score_thresh=(0.1,)), **grid)
    assert plain.sweep_mAP == pytest.approx(0.5)  # 3 TP + 3 FP, or nothing at 0.7
    res = tune_thresholds(items, [], config.TestConfig(score_thresh=(0.1,), mask_rescore=True), **grid)
    assert res.thresholds["score_thresh"] == [0.5]
    assert res.sweep_mAP == pytest.approx(1.0) and res.exact_mAP == pytest.approx(1.0)
