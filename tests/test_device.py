import pytest
import torch

from maskrcnn.device import resolve_device


def test_resolve_device_rules_and_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expect = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expect and resolve_device("auto").type == expect
    with pytest.raises(ValueError, match=r"train\.device: unknown device 'gpu'"):
        resolve_device("gpu", key="train.device")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="--device is 'cuda:1' but CUDA is not available"):
            resolve_device("cuda:1", key="--device")
