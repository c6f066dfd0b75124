"""Process-group set-up and the few collectives the trainer needs.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
``init_distributed()`` reads them (``env://``). Tests pass ``init_method="file://..."`` or
``tcp://127.0.0.1:PORT`` with explicit ranks. Every helper works unchanged in a single process
(no process group), so the trainer has one code path.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from maskrcnn.device import resolve_device


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(
    backend: Optional[str] = None,
    init_method: str = "env://",
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    device: str = "auto",
) -> torch.device:
    """Join the process group and return this process's device.

    Args:
        backend: ``nccl`` (CUDA) or ``gloo`` (CPU); default from the device.
        init_method: ``env://`` under torchrun; ``file://`` or ``tcp://`` for explicit set-ups.
        rank, world_size: read from the environment when None.
        device: ``auto`` | ``cpu`` | ``cuda``; CUDA processes take ``cuda:LOCAL_RANK``.
    """
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device, local_rank, key="train.device")
    if world_size <= 1:
        return dev
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not is_distributed():
        store = _elastic_store(rank, world_size) if init_method == "env://" else None
        if store is not None:
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)
        else:
            dist.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world_size)
    return dev


def _elastic_store(rank: int, world_size: int) -> Optional["dist.Store"]:
    """Under torchrun, the process group's store with keys of this restart only (None otherwise).

    torchrun (c10d rendezvous) shares one TCP store across restarts, and ``env://`` reads it without
    a per-restart prefix: after ``--max-restarts`` restarts the group, a rank can read the address a
    dead process of the last attempt published and wait on it until gloo's connect times out
    (seen with torch 2.13, 2 CPU processes). ``TORCHELASTIC_RESTART_COUNT`` names the attempt.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or "MASTER_ADDR" not in os.environ:
        return None
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=rank == 0 and not agent_hosts)
    return dist.PrefixStore(f"maskrcnn/attempt_{restart}", store)


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _reduce_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_mean(values: Dict[str, float]) -> Dict[str, float]:
    """Mean of each scalar over all ranks (same keys, in the same order, on every rank)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t)
    t /= get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def any_true(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (so all ranks stop together)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_reduce_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_object(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
