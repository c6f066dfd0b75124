"""Suite-wide rule: with ``MASKRCNN_REQUIRE_EXT=1`` (CI and the README's test command) the compiled
extension ``maskrcnn._C`` must load, or the run stops before any test with the reason.

Without the variable a missing extension only skips the compiled-vs-twin tests (the ``ext``
fixture of ``tests/ops``), which is what a developer without a compiler wants, and what CI must
never accept: a failed or missing build would otherwise land green.
"""
import os

import pytest


def pytest_collection_finish(session):
    if os.environ.get("MASKRCNN_REQUIRE_EXT", "0") != "1":
        return
    from maskrcnn.ops import _ext

    if _ext._C is None:
        pytest.exit(
            f"MASKRCNN_REQUIRE_EXT=1 but maskrcnn._C did not load ({_ext._load_error}); "
            "build it with `python setup.py build_ext --inplace`",
            returncode=1,
        )
