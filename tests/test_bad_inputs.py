"""Every row of the bad-input table (tests/bad_inputs.py) through its front end: one `error:` line
and exit 2 naming the thing, or the documented behaviour; predict's checks before any image."""

import pytest
import torch

from tests.bad_inputs import CASES, attempt_subprocess, build_files, judge, run_case, skip_reason


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
    assert {c.tool for c in CASES} == {"predict", "evaluate", "train", "viz", "make_cache", "synthetic",
                                        "pseudo_label"}
    assert len({c.name for c in CASES}) == len(CASES)


# A few rows again as a user runs them: the real scripts, in their own process.
AS_SCRIPTS = ["weights: NaN in a tensor", "image: not an image", "score: submission of random bytes",
              "viz: --id not in the CSV files", "train: config is binary"]


@pytest.mark.parametrize("name", AS_SCRIPTS)
def test_bad_input_through_the_script(name, files, tmp_path):
    case = next(c for c in CASES if c.name == name)
    outcome = attempt_subprocess(case.tool, case.argv(files, str(tmp_path)))
    case = case if not case.before_images else type(case)(**{**case.__dict__, "before_images": False})
    judge(case, outcome, files, str(tmp_path))
