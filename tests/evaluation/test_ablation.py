import csv
import json
import os

import pytest
import torch
import yaml

from maskrcnn.config import ConfigError, from_dict
from maskrcnn.evaluation.ablation import Backend, run_ablation
from maskrcnn.evaluation.ablation_spec import load_ablation_spec
from maskrcnn.structures import Instances, MaskList, Sample
from tests.evaluation.shapes import dense, rect

H, W = 32, 40


def make_dataset():
    out = []
    for i in range(4):
        cells = [rect(H, W, 2 + 9 * k, 8 + 9 * k, 3 + 5 * i, 12 + 5 * i) for k in range(3)]
        m = dense(cells)
        inst = Instances((H, W), m.tight_boxes(), torch.full((3,), i % 2, dtype=torch.long), None, m)
        out.append(Sample(torch.zeros(1, H, W), inst, f"img{i}", {"cell_type": ["astro", "cort"][i % 2]}))
    return out


class FakePredictor:
    """Returns the ground truth as soft masks; a weights file saying 'drop' loses one cell per image."""

    def __init__(self, backend, weights):
        self.backend, self.drop = backend, any("drop" in open(w).read() for w in weights)

    def predict_raw(self, image):
        s = self.backend.by_image[id(image)]
        m = s.instances.masks
        keep = torch.arange(len(m) - (1 if self.drop else 0))
        self.backend.calls += 1
        soft = MaskList(m.crops[keep].float() * 0.9, m.origins[keep], m.image_size)
        return Instances((H, W), s.instances.boxes[keep], s.instances.labels[keep], torch.full((len(keep),), 0.7), soft)


class FakeBackend(Backend):
    def __init__(self):
        self.calls = 0
        self.ds = make_dataset()
        self.by_image = {id(s.image): s for s in self.ds}

    def dataset(self, cfg, split):
        return self.ds

    def checkpoint_info(self, path):
        return from_dict({"model": {"backbone": {"name": "resnet50", "norm": "gn"}}}), 1200

    def predictor(self, variant, test_cfg, device):
        return FakePredictor(self, variant.weights)

    def filter_predictions(self, inst, test_cfg):
        keep = inst.scores >= test_cfg.score_thresh[0]
        inst = inst[torch.nonzero(keep)[:, 0]]
        return inst.replace(masks=inst.masks.threshold(test_cfg.mask_thresh[0]))


@pytest.fixture
def spec_file(tmp_path):
    (tmp_path / "cfg.yaml").write_text("data: {classes: [astro, cort]}\ntest: {score_thresh: [0.5]}\n")
    (tmp_path / "good.pth").write_text("good")
    (tmp_path / "drop.pth").write_text("drop")
    spec = {
        "config": "cfg.yaml", "output_dir": "out", "device": "cpu",
        "variants": [
            {"name": "base", "weights": "good.pth"},
            {"name": "high score", "weights": "good.pth", "test": {"score_thresh": [0.8]}},
            {"name": "tta", "weights": "good.pth", "tta": ["hflip"]},
            {"name": "ens", "weights": ["good.pth", "drop.pth"], "columns": {"Backbone": "R50 x2"}},
        ],
    }
    (tmp_path / "ablation.yaml").write_text(yaml.safe_dump(spec))
    return str(tmp_path / "ablation.yaml")


def test_ablation_tables_and_cache(spec_file, tmp_path):
    backend = FakeBackend()
    rows = run_ablation(load_ablation_spec(spec_file), backend=backend, log=lambda *a: None)
    # base / high score share one cache (post-processing only); tta and the ensemble need their own.
    assert backend.calls == 3 * 4
    by_name = {r["Variant"]: r for r in rows}
    assert by_name["base"]["mAP"] == "1.0000"
    assert by_name["high score"]["mAP"] == "0.0000"  # every prediction scores 0.7 < 0.8
    assert by_name["ens"]["mAP"] == "0.6667" and by_name["ens"]["Backbone"] == "R50 x2"
    assert by_name["ens"]["Ensemble"] == "2 models" and by_name["base"]["Ensemble"] == "no"
    assert by_name["tta"]["TTA"] == "hflip" and by_name["base"]["TTA"] == "none"
    assert by_name["base"]["Normalization"] == "GN" and by_name["base"]["Iterations"] == "1200"
    assert by_name["base"]["astro"] == "1.0000" and "cort" in by_name["base"]
    out = tmp_path / "out"
    md = (out / "ablation.md").read_text().splitlines()
    assert md[0] == "| Variant | Backbone | Iterations | Ensemble | Normalization | Color aug | TTA | mAP | astro | cort |"
    assert len(md) == 2 + 4
    with open(out / "ablation.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["mAP"] for r in table] == ["1.0000", "0.0000", "1.0000", "0.6667"]
    results = json.load(open(out / "results.json"))["results"]
    assert results["base"]["cache"] == results["high score"]["cache"] != results["tta"]["cache"]
    # A second run predicts nothing and reads the ground truth from the label file it wrote.
    again = FakeBackend()
    again.dataset = None  # would fail if called
    assert run_ablation(load_ablation_spec(spec_file), backend=again, log=lambda *a: None) == rows
    assert again.calls == 0


def test_interrupted_cache_resumes(spec_file, tmp_path):
    spec = load_ablation_spec(spec_file)
    spec.variants = spec.variants[:1]
    backend = FakeBackend()
    run_ablation(spec, backend=backend, log=lambda *a: None)
    cache_dir = json.load(open(tmp_path / "out" / "results.json"))["results"]["base"]["cache"]
    os.remove(os.path.join(cache_dir, "preds", "img2.pt"))
    os.remove(os.path.join(cache_dir, "meta.json"))
    backend = FakeBackend()
    run_ablation(spec, backend=backend, log=lambda *a: None)
    assert backend.calls == 1


def test_changed_weights_file_invalidates_the_cache(spec_file, tmp_path):
    spec = load_ablation_spec(spec_file)
    spec.variants = spec.variants[:1]
    run_ablation(spec, backend=FakeBackend(), log=lambda *a: None)
    (tmp_path / "good.pth").write_text("good, retrained")
    backend = FakeBackend()
    run_ablation(spec, backend=backend, log=lambda *a: None)
    assert backend.calls == 4


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"config": "c.yaml", "variants": [{"name": "a", "weights": "w", "bogus": 1}]}, "bogus"),
        ({"config": "c.yaml", "variants": [{"name": "a", "weights": "w"}, {"name": "a", "weights": "w"}]}, "duplicate"),
        ({"config": "c.yaml", "variants": [{"name": "a"}]}, "weights"),
        ({"variants": [{"name": "a", "weights": "w"}]}, "config"),
        ({"config": "c.yaml", "variants": []}, "non-empty"),
        ({"config": "c.yaml", "split": "test", "variants": [{"name": "a", "weights": "w"}]}, "split"),
    ],
)
def test_spec_errors(tmp_path, spec, match):
    p = tmp_path / "a.yaml"
    p.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=match):
        load_ablation_spec(str(p))


def test_labels_command_writes_the_split_ground_truth(tmp_path):
    import evaluate
    from maskrcnn.data import build_dataset
    from maskrcnn.config import load_config
    from maskrcnn.formats.kaggle_csv import label_masks, read_labels

    cfg = tmp_path / "syn.yaml"
    cfg.write_text("data: {format: synthetic, synthetic: {num_images: 3, height: 40, width: 48, cells_per_image: [2, 5]}}\n")
    out = str(tmp_path / "labels.csv")
    assert evaluate.main(["labels", "--config", str(cfg), "--split", "all", "--out", out]) == 0
    labels = read_labels(out)
    ds = build_dataset(load_config(str(cfg)).data, split="all")
    assert list(labels) == [str(ds[k].image_id) for k in range(len(ds))]
    for k in range(len(ds)):
        s = ds[k]
        img = labels[str(s.image_id)]
        assert img.cell_type == s.meta["cell_type"]
        assert torch.equal(label_masks(img).to_dense(), s.instances.masks.to_dense())


def test_backend_reads_checkpoints_with_overrides(tmp_path):
    from maskrcnn.config import load_config, to_dict
    from maskrcnn.model import build_model

    cfg = load_config(None, ["model.backbone.name=resnet18", "model.fpn.out_channels=32", "model.roi_heads.box_fc_dim=64",
                             "model.mask_head.conv_dim=16", "model.mask_head.num_convs=1", "solver.max_iter=5"])
    model = build_model(cfg.model, load_weights=False, verbose=False)
    path = str(tmp_path / "ck.pth")
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "iteration": 5}, path)
    b = Backend()
    got_cfg, it = b.checkpoint_info(path)
    assert it == 5 and got_cfg.model.backbone.name == "resnet18"
    loaded = b.load_model(path, "cpu", ["model.input.pixel_std=[0.5,0.5,0.5]"])
    assert not loaded.training
    assert torch.equal(loaded.pixel_std.flatten(), torch.full((3,), 0.5))  # the override took effect
    sd = loaded.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="bogus"):
        b.load_model(path, "cpu", ["model.bogus=1"])


# ----------------------------------------------------------------------- relative paths
def test_relative_paths_are_relative_to_the_ablation_file(tmp_path, monkeypatch):
    (tmp_path / "specs").mkdir()
    (tmp_path / "cfg.yaml").write_text("data: {classes: [astro, cort]}\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "w.pth").write_text("good")
    spec = tmp_path / "specs" / "a.yaml"
    spec.write_text(yaml.safe_dump({"config": "../cfg.yaml", "output_dir": "../out",
                                    "variants": [{"name": "v", "weights": "../runs/w.pth"}]}))
    monkeypatch.chdir(tmp_path / "runs")  # any current directory
    s = load_ablation_spec(str(spec))
    assert s.config == str(tmp_path / "cfg.yaml") and s.output_dir == str(tmp_path / "out")
    assert s.variants[0].weights == [str(tmp_path / "runs" / "w.pth")]


def test_a_wrong_path_is_one_error_naming_both_places(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "cfg.yaml").write_text("{}\n")
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "w.pth").write_text("good")
    spec = tmp_path / "configs" / "a.yaml"
    # written as if relative to the current directory (the repository root)
    spec.write_text(yaml.safe_dump({"config": "cfg.yaml", "variants": [{"name": "v", "weights": "output/w.pth"}]}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_ablation_spec("configs/a.yaml")
    msg = str(e.value)
    assert "variants[0] (v): weights: output/w.pth not found" in msg
    assert str(tmp_path / "configs" / "output" / "w.pth") in msg  # where it was looked for
    assert "exists relative to the current directory: write ../output/w.pth" in msg  # and the fix
    spec.write_text(yaml.safe_dump({"config": "cfg.yaml", "variants": [{"name": "v", "weights": "../output/w.pth",
                                                                       "thresholds": "tuned.yaml"}]}))
    with pytest.raises(ConfigError, match=r"thresholds: tuned.yaml not found.*configs/tuned.yaml$"):
        load_ablation_spec("configs/a.yaml")
    spec.write_text(yaml.safe_dump({"config": "configs/cfg.yaml", "variants": [{"name": "v", "weights": "../output/w.pth"}]}))
    with pytest.raises(ConfigError, match="config: configs/cfg.yaml not found.*write cfg.yaml"):
        load_ablation_spec("configs/a.yaml")


def test_the_example_ablation_file_resolves_next_to_the_repository(tmp_path, monkeypatch):
    import shutil

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    (tmp_path / "configs").mkdir()
    for name in ("ablation_example.yaml", "small.yaml"):
        shutil.copy(os.path.join(root, "configs", name), tmp_path / "configs" / name)
    (tmp_path / "output" / "small").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "output")  # not the repository root: the file's folder counts
    with pytest.raises(ConfigError, match="model_final.pth not found"):  # before training
        load_ablation_spec(str(tmp_path / "configs" / "ablation_example.yaml"))
    for name in ("model_final.pth", "model_best.pth"):
        (tmp_path / "output" / "small" / name).write_text("")
    spec = load_ablation_spec(str(tmp_path / "configs" / "ablation_example.yaml"))
    assert spec.config == str(tmp_path / "configs" / "small.yaml")
    assert spec.output_dir == str(tmp_path / "output" / "ablation_example")
    assert spec.variants[-1].weights == [str(tmp_path / "output" / "small" / n) for n in ("model_best.pth", "model_final.pth")]


# -------------------------------------------------------------------- class names, tune
class NamedBackend(FakeBackend):
    """A dataset that knows its class names (as every reader does), and a config without data.classes."""

    def __init__(self):
        super().__init__()

        class DS(list):
            class_names = ("astro", "cort")

        self.ds = DS(self.ds)
        self.by_image = {id(s.image): s for s in self.ds}


def test_class_names_come_from_the_dataset_and_tune_needs_no_options(tmp_path, capsys):
    import evaluate

    (tmp_path / "cfg.yaml").write_text("test: {score_thresh: [0.5]}\n")  # no data.classes
    (tmp_path / "w.pth").write_text("good")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"config": "cfg.yaml", "output_dir": "out",
                                                     "variants": [{"name": "v", "weights": "w.pth"}]}))
    rows = run_ablation(load_ablation_spec(str(tmp_path / "a.yaml")), backend=NamedBackend(), log=lambda *a: None,
                        progress="lines")
    assert rows[0]["astro"] == "1.0000" and rows[0]["cort"] == "1.0000"  # per-class columns by name
    assert "[v] predict: 4/4 img (100%)" in capsys.readouterr().err
    cache = json.load(open(tmp_path / "out" / "results.json"))["results"]["v"]["cache"]
    meta = json.load(open(os.path.join(cache, "meta.json")))
    assert meta["class_names"] == ["astro", "cort"] and meta["labels"].startswith(str(tmp_path / "out" / "labels_"))
    out = str(tmp_path / "tuned.yaml")
    assert evaluate.main(["tune", "--predictions", cache, "--out", out, "--score-grid", "0.5", "--mask-grid", "0.5",
                          "--area-grid", "0", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("class astro") and lines[1].startswith("class cort") and lines[-1] == "mAP 1.0000"
