"""Models for the Dask tests, importable by worker processes (top-level functions)."""
import os

from tests.inference.stub_model import IdStubModel

FAULT_FLAG = "MASKRCNN_TEST_FAULT_FLAG"  # a file: while it exists, the first model call removes it and kills its process


def stub_models():
    return [IdStubModel(num_classes=1)]


class DyingOnceStub(IdStubModel):
    """IdStubModel whose worker process dies (``os._exit``, no cleanup) on its first call while the
    file named by ``$MASKRCNN_TEST_FAULT_FLAG`` exists (the file is removed first: it dies once)."""

    def forward(self, images, targets=None):
        flag = os.environ.get(FAULT_FLAG, "")
        if flag and os.path.exists(flag):
            os.remove(flag)
            os._exit(1)
        return super().forward(images, targets)


def dying_once_models():
    return [DyingOnceStub(num_classes=1)]
