"""Shared fixtures of the op tests: the compiled module, and the devices to run on."""
import os

import pytest
import torch

from maskrcnn.ops import get_ext, has_cuda_ops


@pytest.fixture(scope="session")
def ext():
    """``maskrcnn._C``; skips the test when it is not built (fails instead with MASKRCNN_REQUIRE_EXT=1)."""
    module = get_ext()
    if module is None:
        if os.environ.get("MASKRCNN_REQUIRE_EXT", "0") == "1":
            pytest.fail("maskrcnn._C is not built (python setup.py build_ext --inplace)")
        pytest.skip("maskrcnn._C is not built")
    return module


CUDA_OK = torch.cuda.is_available() and has_cuda_ops()
# Compiled-op tests run on each device; CUDA ones are skipped without a GPU and a CUDA build.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_OK, reason="needs CUDA and a CUDA build"))]
cuda_only = pytest.mark.skipif(not CUDA_OK, reason="needs CUDA and a CUDA build of maskrcnn._C")
