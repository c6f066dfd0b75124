"""Shared fixtures for data tests: tiny synthetic datasets written in real layouts."""
import os

import pytest

from maskrcnn.data.synthetic import SyntheticCells, write_layout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# ../shared beside the repository (CI, /work/main); worktrees sit one level deeper (/work/wt/<name>).
_CANDIDATES = [os.path.join(base, "shared", "data", "dsb2018", "stage1_train")
               for base in (os.path.dirname(REPO), os.path.dirname(os.path.dirname(REPO)))]
DSB_ROOT = next((c for c in _CANDIDATES if os.path.isdir(c)), _CANDIDATES[0])


@pytest.fixture(scope="session")
def synth():
    return SyntheticCells(num_images=6, height=64, width=80, cells_per_image=(3, 8), seed=7)


@pytest.fixture(scope="session")
def sartorius_dir(tmp_path_factory, synth):
    d = tmp_path_factory.mktemp("sartorius")
    write_layout(synth, str(d), "sartorius")
    return d


@pytest.fixture(scope="session")
def dsb_dir(tmp_path_factory, synth):
    d = tmp_path_factory.mktemp("dsb")
    write_layout(synth, str(d), "dsb2018")
    return d


@pytest.fixture(scope="session")
def coco_dir(tmp_path_factory, synth):
    d = tmp_path_factory.mktemp("coco")
    write_layout(synth, str(d), "coco")
    return d
