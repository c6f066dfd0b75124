"""The model zoo: weights by name in every front end, tuned thresholds beside the weights, and
``python -m maskrcnn zoo export`` (fp16 weights that load as float32 and predict as the original)."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.inference.checkpoint import load_model
from maskrcnn.inference.zoo import ZOO_ENV, WeightsNotFound, resolve_weights, thresholds_beside, zoo_names
from maskrcnn.zoo.export import ExportError, export
from maskrcnn.cli.zoo import main as zoo_main
from tests.inference.stub_model import TINY_RGB_MODEL, save_tiny_checkpoint


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """An empty zoo folder in place of the package's (``$MASKRCNN_ZOO``)."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    monkeypatch.setenv(ZOO_ENV, str(folder))
    return folder


@pytest.fixture
def tiny(tmp_path):
    """A random tiny RGB model's checkpoint and the model itself."""
    path = tmp_path / "run" / "model_final.pth"
    path.parent.mkdir()
    model, cfg = save_tiny_checkpoint(path, TINY_RGB_MODEL)
    return str(path), model


def _image(seed=0, h=64, w=80):
    g = np.random.default_rng(seed)
    a = g.integers(0, 40, (h, w, 3), dtype=np.uint8)
    for _ in range(6):  # bright discs, so the random model sees some structure
        y, x, r = g.integers(8, h - 8), g.integers(8, w - 8), g.integers(3, 8)
        yy, xx = np.ogrid[:h, :w]
        a[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = 200
    return a


def test_names_resolve_in_the_zoo_and_paths_keep_working(zoo, tiny, tmp_path, monkeypatch):
    src, _ = tiny
    assert resolve_weights(src) == src  # a path is used as it is
    with pytest.raises(WeightsNotFound, match=r"nucleus is neither a file nor a model name .*none yet"):
        resolve_weights("nucleus")
    (zoo / "nuclei.pth").write_bytes(open(src, "rb").read())
    (zoo / "other.pth").write_bytes(b"x")
    (zoo / "notes.txt").write_text("not an entry")
    assert zoo_names() == ["nuclei", "other"]
    assert resolve_weights("nuclei") == str(zoo / "nuclei.pth")
    # a folder of that name in the working directory (an image folder called nuclei) is not weights
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nuclei").mkdir()
    assert resolve_weights("nuclei") == str(zoo / "nuclei.pth")
    with pytest.raises(WeightsNotFound, match=r"nucleus .*did you mean nuclei\? .*: nuclei, other\)"):
        resolve_weights("nucleus")
    with pytest.raises(FileNotFoundError, match="missing.pth"):  # still a FileNotFoundError for old callers
        resolve_weights(str(tmp_path / "missing.pth"))
    # the checkpoint loader (predict, ablations, notebooks) takes names
    model, cfg = load_model("nuclei")
    assert cfg.model.roi_heads.num_classes == 1


def test_thresholds_beside_the_weights_are_found(tmp_path):
    w = tmp_path / "model_final.pth"
    w.write_bytes(b"")
    assert thresholds_beside(str(w)) is None
    (tmp_path / "model_final.thresholds.yaml").write_text("test: {score_thresh: [0.5]}\n")
    assert thresholds_beside(str(w)) == str(tmp_path / "model_final.thresholds.yaml")


def test_unknown_weights_are_one_error_line_in_every_front_end(zoo, tiny, tmp_path, capsys):
    import train
    from maskrcnn.cli.predict import main as predict_main
    from maskrcnn.cli.pseudo_label import main as pseudo_main

    src, _ = tiny
    (zoo / "nuclei.pth").write_bytes(open(src, "rb").read())
    (tmp_path / "images").mkdir()
    Image.fromarray(_image()).save(tmp_path / "images" / "a.png")
    runs = {
        "predict": lambda: predict_main(["--weights", "nucleii", "--images", str(tmp_path / "images"),
                                         "--out", str(tmp_path / "s.csv"), "--device", "cpu"]),
        "eval-only": lambda: train.main([os.path.join(os.path.dirname(src), "model_final.yaml"),
                                         "--eval-only", "nucleii"]),
        "pseudo_label": lambda: pseudo_main(["label", "--weights", "nucleii", "--images", str(tmp_path / "images"),
                                             "--out", str(tmp_path / "pl"), "--device", "cpu"]),
    }
    for name, run in runs.items():
        assert run() == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: checkpoint not found: nucleii"), (name, err)
        assert "did you mean nuclei?" in err[0] and "Traceback" not in err[0], name
    assert not os.path.exists(tmp_path / "s.csv") and not os.path.exists(tmp_path / "pl")


def test_export_writes_half_size_fp16_weights_that_load_as_float32_and_predict_the_same(zoo, tiny, capsys):
    src, model = tiny
    assert zoo_main(["export", src, "--name", "cells"]) == 0
    out = capsys.readouterr().out
    entry = torch.load(zoo / "cells.pth", weights_only=True)
    # every float tensor stored in fp16, the rest unchanged; the config travels with it
    orig = model.state_dict()
    assert set(entry["model"]) == set(orig)
    for k, v in orig.items():
        assert entry["model"][k].dtype == (torch.float16 if v.is_floating_point() else v.dtype), k
    assert entry["config"]["model"]["roi_heads"]["num_classes"] == 1 and entry["iteration"] == 7
    ratio = os.path.getsize(zoo / "cells.pth") / os.path.getsize(src)  # the test's checkpoint: weights only
    assert 0.45 < ratio < 0.55 and f"({ratio:.3f}x: no optimizer state)" in out
    floats = sum(v.numel() for v in orig.values() if v.is_floating_point())
    others = sum(v.numel() * v.element_size() for v in orig.values() if not v.is_floating_point())
    assert f"the tensors {(2 * floats + others) / 2**20:.2f} MiB in float16, {(4 * floats + others) / 2**20:.2f} MiB" in out
    # loaded back (by name) as float32, each value the fp16 rounding of the original
    loaded, _ = load_model("cells")
    for k, v in loaded.state_dict().items():
        if v.is_floating_point():
            assert v.dtype == torch.float32 and torch.equal(v, orig[k].half().float()), k
    # predictions: the same detections within fp16 tolerance
    image = torch.from_numpy(_image()).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        a, b = model.eval()([image])[0], loaded([image])[0]
    assert len(a) == len(b) > 0
    assert torch.allclose(a.scores, b.scores, atol=2e-3)
    assert torch.allclose(a.boxes, b.boxes, atol=0.5)
    assert (a.masks.to_dense() - b.masks.to_dense()).abs().max() < 0.02
    # the card: from the template, with the facts filled in, and TBD where a person must measure
    card = (zoo / "cells.md").read_text()
    assert "# Model card: `cells`" in card and "model_final.pth" in card and "TBD" in card and "$" not in card
    assert "all but fold 0 of 5 (data.fold 0)" in card  # the tiny config's default split
    assert not [f for f in os.listdir(zoo) if f.endswith(".tmp")]


def test_export_refuses_what_it_cannot_ship(zoo, tiny, tmp_path):
    src, model = tiny
    export(src, "cells")
    (zoo / "cells.md").write_text("a hand-written card\n")
    with pytest.raises(ExportError, match="already has 'cells': pass --overwrite"):
        export(src, "cells")
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("test:\n  score_thresh: [0.3]\n")
    r = export(src, "cells", overwrite=True, thresholds=str(tuned))
    assert r["card"] is None and (zoo / "cells.md").read_text() == "a hand-written card\n"
    assert (zoo / "cells.thresholds.yaml").read_text() == tuned.read_text()
    with pytest.raises(ExportError, match="--name must be"):
        export(src, "../escape")
    # a weight beyond fp16's range would become inf: refused, naming the tensor, nothing written
    state = dict(model.state_dict())
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone().fill_(1e5)
    ck = torch.load(src, weights_only=True)
    torch.save({**ck, "model": state}, tmp_path / "big.pth")
    with pytest.raises(ExportError, match=rf"{name} holds 1e\+05, beyond float16's range"):
        export(str(tmp_path / "big.pth"), "big")
    assert not os.path.exists(zoo / "big.pth")
    # thresholds for more classes than the model has
    (tmp_path / "three.yaml").write_text("test:\n  score_thresh: [0.3, 0.4, 0.5]\n")
    with pytest.raises(ValueError, match="score_thresh"):
        export(src, "three", thresholds=str(tmp_path / "three.yaml"))
    assert not os.path.exists(zoo / "three.pth") and not os.path.exists(zoo / "three.thresholds.yaml")


def test_predict_applies_the_thresholds_beside_the_weights_unless_given_others(zoo, tiny, tmp_path, capsys):
    from maskrcnn.cli.predict import main as predict_main

    src, _ = tiny
    export(src, "cells")
    (tmp_path / "images").mkdir()
    for k in range(2):
        Image.fromarray(_image(k)).save(tmp_path / "images" / f"im{k}.png")

    def objects(*extra):
        out = tmp_path / f"labels{len(os.listdir(tmp_path))}"
        assert predict_main(["--weights", "cells", "--images", str(tmp_path / "images"), "--format", "labels",
                             "--out", str(out), "--device", "cpu", "--no-progress", *extra]) == 0
        err = capsys.readouterr().err
        counts = [int(np.array(Image.open(out / f"im{k}.png")).max()) for k in range(2)]
        return sum(counts), err

    plain, err = objects()
    assert plain > 0 and "thresholds from" not in err
    # a score threshold no random detection reaches, beside the weights: applied, and logged
    (zoo / "cells.thresholds.yaml").write_text("test:\n  score_thresh: [0.999]\n")
    n, err = objects()
    assert n == 0 and f"thresholds from {zoo / 'cells.thresholds.yaml'} (beside the weights)" in err
    # an explicit --thresholds wins
    (tmp_path / "open.yaml").write_text("test:\n  score_thresh: [0.0]\n")
    n, err = objects("--thresholds", str(tmp_path / "open.yaml"))
    assert n == plain and f"thresholds from {tmp_path / 'open.yaml'} (--thresholds)" in err
    # a broken file beside the weights is an error before any image, naming it
    (zoo / "cells.thresholds.yaml").write_text("test:\n  score_thresh: [2.0]\n")
    assert predict_main(["--weights", "cells", "--images", str(tmp_path / "images"), "--out",
                         str(tmp_path / "x.csv"), "--device", "cpu"]) == 2
    assert "score_thresh" in capsys.readouterr().err and not os.path.exists(tmp_path / "x.csv")


def test_the_shipped_nuclei_model_loads_by_name(monkeypatch):
    monkeypatch.delenv(ZOO_ENV, raising=False)
    if "nuclei" not in zoo_names():
        pytest.skip("maskrcnn/zoo/nuclei.pth is not there yet")
    model, cfg = load_model("nuclei")
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())
    assert cfg.model.roi_heads.num_classes == 1
    assert os.path.getsize(resolve_weights("nuclei")) < 12 * 2**20  # the issue's ~10 MB
    assert os.path.isfile(resolve_weights("nuclei")[: -len(".pth")] + ".md")  # its model card


def test_an_ablation_variant_takes_a_zoo_name(zoo, tmp_path):
    import yaml

    from maskrcnn.config import ConfigError
    from maskrcnn.evaluation.ablation_spec import load_ablation_spec

    (zoo / "cells.pth").write_text("weights")
    (tmp_path / "cfg.yaml").write_text("{}\n")
    (tmp_path / "local.pth").write_text("weights")
    spec = tmp_path / "a.yaml"
    spec.write_text(yaml.safe_dump({"config": "cfg.yaml", "variants": [
        {"name": "zoo", "weights": "cells"}, {"name": "file", "weights": "local.pth"}]}))
    s = load_ablation_spec(str(spec))
    assert s.variants[0].weights == [str(zoo / "cells.pth")] and s.variants[1].weights == [str(tmp_path / "local.pth")]
    (tmp_path / "cells").write_text("a file beside the spec wins over the zoo name")
    assert load_ablation_spec(str(spec)).variants[0].weights == [str(tmp_path / "cells")]
    spec.write_text(yaml.safe_dump({"config": "cfg.yaml", "variants": [{"name": "v", "weights": "cellz"}]}))
    with pytest.raises(ConfigError, match="weights: cellz not found"):
        load_ablation_spec(str(spec))
