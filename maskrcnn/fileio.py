"""Atomic file writes: every file the package writes (checkpoints, configs, caches, splits, curves,
submissions, tables) goes through a temp file in the same folder and ``os.replace``.

A reader never sees a partial file: on any failure (disk full, a pickling error, an interrupt)
the temp file is removed and the target keeps its old content, if any. Temp files are named
``.<name>.<pid>.<random>.tmp`` (several writers of one folder never collide) and created with the
usual permissions (not ``mkstemp``'s 0600).
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import IO, Any, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", fsync: bool = False, **kwargs: Any) -> Iterator[IO]:
    """``open()`` for writing that lands on ``path`` only when the ``with`` block succeeds.

    Args:
        mode: ``"w"`` or ``"wb"`` (the file is always new).
        fsync: flush the data to disk before the rename (checkpoints: survive a power loss).
        kwargs: passed to ``open`` (``newline=""`` for csv, ``encoding``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_json(obj: Any, path: PathLike) -> None:
    """``obj`` as indented JSON with sorted keys (values JSON cannot hold are written as ``str``)."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=str)
