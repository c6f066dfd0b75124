"""The kernel cell of docs/kaggle.md, run as written in a fake /kaggle tree: without the optional
extension dataset, with it, and without a GPU (``--device auto``)."""
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.ops._ext import fallback_message, in_kaggle_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kernel_cell() -> str:
    text = open(os.path.join(ROOT, "docs", "kaggle.md")).read()
    m = re.search(r"\n(    import os, shutil, subprocess, sys\n.*?\n    assert r.returncode[^\n]*\n)", text, re.S)
    assert m, "docs/kaggle.md: the kernel cell was not found"
    return textwrap.dedent(m.group(1))


def test_the_fallback_warning_points_a_kernel_at_the_docs(monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    assert in_kaggle_kernel()
    msg = fallback_message("No module named 'maskrcnn._C'")
    assert "docs/kaggle.md" in msg and "maskrcnn-ext" in msg and "build_ext" not in msg
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    if not os.path.isdir("/kaggle/input"):
        assert "build_ext --inplace" in fallback_message("x")


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    from maskrcnn.config import load_config, to_dict
    from maskrcnn.model import build_model
    from tests.inference.stub_model import TINY_MODEL

    root = tmp_path_factory.mktemp("fake") / "kaggle"
    code = root / "input" / "maskrcnn-code"
    shutil.copytree(os.path.join(ROOT, "maskrcnn"), code / "maskrcnn",
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    shutil.copy(os.path.join(ROOT, "predict.py"), code)
    weights = root / "input" / "maskrcnn-weights"
    weights.mkdir(parents=True)
    cfg_path = weights / "tiny.yaml"
    cfg_path.write_text(TINY_MODEL)
    cfg = load_config(str(cfg_path))
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg.model, load_weights=False, verbose=False).state_dict(), "config": to_dict(cfg)},
               weights / "model_best.pth")
    (weights / "tuned.yaml").write_text("score_thresh: [0.0]\nmin_area: [1]\n")
    test = root / "input" / "sartorius-cell-instance-segmentation" / "test"
    test.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("7ae19de7bc2a", "d8bfd1dafdc4"):
        Image.fromarray((rng.random((64, 80)) * 255).astype(np.uint8)).save(test / f"{name}.png")
    (root / "working").mkdir()
    return root


def _run_cell(root):
    shutil.rmtree(root / "working" / "code", ignore_errors=True)  # each run starts from a fresh kernel
    cell = kernel_cell().replace("/kaggle/", f"{root}/")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(CUDA_VISIBLE_DEVICES="", KAGGLE_KERNEL_RUN_TYPE="Batch", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", cell], cwd=str(root), env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_kernel_cell_runs_without_the_extension_dataset_and_without_a_gpu(kaggle):
    res = _run_cell(kaggle)
    assert res.returncode == 0, res.stderr[-3000:]
    sub = (kaggle / "working" / "submission.csv").read_text().splitlines()
    assert sub[0] == "id,predicted" and {r.split(",")[0] for r in sub[1:]} == {"7ae19de7bc2a", "d8bfd1dafdc4"}
    assert res.stderr.count("compiled ops not available") == 1 and "docs/kaggle.md" in res.stderr
    assert "on cpu" in res.stderr and "predict: 2/2 img (100%)" in res.stderr


def test_the_kernel_cell_uses_the_extension_dataset_when_attached(kaggle):
    built = [f for f in os.listdir(os.path.join(ROOT, "maskrcnn")) if f.startswith("_C") and f.endswith(".so")]
    if not built:
        pytest.skip("the extension is not built here")
    ext = kaggle / "input" / "maskrcnn-ext"
    ext.mkdir(exist_ok=True)
    shutil.copy(os.path.join(ROOT, "maskrcnn", built[0]), ext)
    try:
        res = _run_cell(kaggle)
    finally:
        shutil.rmtree(ext)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "compiled ops not available" not in res.stderr
