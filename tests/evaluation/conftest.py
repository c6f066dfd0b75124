import warnings

import pytest


@pytest.fixture(autouse=True)
def _quiet_fallback_warning():
    # Without the compiled ops the twins warn once; the warning is not what these tests check.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="maskrcnn: compiled ops not available")
        yield
