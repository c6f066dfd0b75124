"""Every row of the bad-input table (tests/bad_inputs.py) through its front end: one `error:` line
and exit 2 naming the thing, or the documented behaviour; predict's checks before any image."""
import os

import pytest
import torch

from tests.bad_inputs import CASES, build_files, judge, run_case, skip_reason


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return build_files(str(tmp_path_factory.mktemp("bad_inputs")))


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, files, tmp_path):
    if skip_reason(case):
        pytest.skip(skip_reason(case))
    outcome = run_case(case, files, str(tmp_path))
    judge(case, outcome, files, str(tmp_path))


def test_the_table_covers_every_front_end():
    assert {c.tool for c in CASES} == {"predict", "evaluate", "train", "viz", "make_cache", "synthetic"}
    assert len({c.name for c in CASES}) == len(CASES)
