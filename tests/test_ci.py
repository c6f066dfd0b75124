"""CI runs exactly the README's test command, and that command requires the compiled extension."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_test_command():
    with open(os.path.join(REPO, "README.md")) as f:
        lines = f.read().splitlines()
    k = next(i for i, line in enumerate(lines) if line.strip().startswith("# 2."))
    return lines[k + 1].strip()


def test_ci_runs_the_readme_test_command_with_the_extension_required():
    cmd = _readme_test_command()
    with open(os.path.join(REPO, ".ci", "run")) as f:
        ci = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert ci[-1] == cmd
    # A missing or failed build must fail the run, not skip the compiled-op tests.
    assert "python setup.py build_ext --inplace && MASKRCNN_REQUIRE_EXT=1 python -m pytest" in cmd
    assert "set -euo pipefail" in ci
