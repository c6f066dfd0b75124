import pytest
import torch

from maskrcnn.device import resolve_device


def test_resolve_device_rules_and_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expect = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expect and resolve_device("auto").type == expect
    with pytest.raises(ValueError, match=r"unknown device 'gpu'.*\(train\.device\)"):
        resolve_device("gpu", key="train.device")
    with pytest.raises(ValueError, match=r"unknown device 'cuda:x'"):
        resolve_device("cuda:x", key="train.device")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="^CUDA is not available: turn on the GPU accelerator or use --device auto$"):
            resolve_device("cuda:1", key="--device")
        with pytest.raises(RuntimeError, match="or use train.device=auto$"):
            resolve_device("cuda", key="train.device")
