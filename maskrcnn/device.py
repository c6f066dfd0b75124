"""The one rule that turns a ``device`` setting (``train.device``, ``predict.py --device``, an
ablation's ``device``) into a ``torch.device``, and what a device computes natively."""
from __future__ import annotations

from typing import Union

import torch

from maskrcnn.errors import UserError


class DeviceError(UserError, ValueError, RuntimeError):
    """A device setting that names no device of this machine."""


def resolve_device(device: Union[str, torch.device, None] = "auto", local_rank: int = 0,
                   key: str = "device") -> torch.device:
    """``auto`` (or None) -> CUDA when available, else CPU; ``cuda`` -> ``cuda:local_rank`` (one GPU
    per process under torchrun); ``cpu`` and ``cuda:N`` as given.

    Raises DeviceError (a ValueError and a RuntimeError) for any other value, for CUDA on a machine
    without it ("CUDA is not available: turn on the GPU accelerator or use --device auto", the
    option or key being ``key``) and for a GPU index the machine does not have.
    """
    device = "auto" if device is None else str(device)
    index = device[5:] if device.startswith("cuda:") else None
    if device not in ("auto", "cpu", "cuda") and not (index is not None and index.isdigit()):
        raise DeviceError(f"unknown device {device!r}: choose auto, cpu, cuda or cuda:N ({key})")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            use = f"{key} auto" if key.startswith("-") else f"{key}=auto"
            raise DeviceError(f"CUDA is not available: turn on the GPU accelerator or use {use}")
        if device == "cuda":
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        if int(index) >= torch.cuda.device_count():
            raise DeviceError(f"{device} does not exist: this machine has {torch.cuda.device_count()} GPU(s) ({key})")
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 products in hardware: a CUDA GPU that supports bf16, or
    a CPU with AVX512-BF16 or AMX tiles (oneDNN then runs bf16 convolutions natively). On other
    CPUs bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(bool(check()) for check in checks if check is not None)
    return False
