"""Reading weight files safely: ``.pth`` through ``torch.load(weights_only=True)`` and ``.pkl``
through a restricted unpickler; the one check for NaN/inf weights (``nonfinite_tensors``).

Loading never runs code from the file: ``.pth`` files go through ``torch.load(weights_only=True)``
and ``.pkl`` files through a restricted unpickler that builds only containers, numbers, strings
and numpy arrays (``SafeWeightsUnpickler``); any other global a pickle names (``os.system``, a
class, a torch tensor) is refused with ``UnsafePickleError`` before it is looked up.
"""
from __future__ import annotations

import codecs
import collections
import os
import pickle
import re
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from maskrcnn.errors import UserError


class WeightsError(UserError, ValueError):
    """A weights file that cannot be read or recognised; the message names the file."""


class UnsafePickleError(WeightsError):
    """A ``.pkl`` names a global outside what weights pickles hold; nothing in it was run."""


def _numpy_internals() -> Tuple[object, object]:
    """numpy's ``multiarray`` and ``numeric`` modules (``numpy._core`` in 2.x, ``numpy.core`` in 1.x),
    imported here rather than by the name a pickle gives (numpy 2 warns on ``numpy.core``)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    return multiarray, numeric


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as pickles of ``bytes`` with protocol < 3 use it, and nothing else."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise UnsafePickleError(f"refused _codecs.encode({type(text).__name__}, {encoding!r}): only latin1 text is expected")
    return codecs.encode(text, "latin1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as protocol < 3 pickles of ``b""`` call it; never ``bytes(n)`` (an allocation bomb)."""
    if args:
        raise UnsafePickleError(f"refused bytes({type(args[0]).__name__}, ...): only bytes() is expected")
    return b""


def _safe_globals() -> Dict[Tuple[str, str], object]:
    """The globals numpy arrays and scalars, dicts and strings reference in a pickle, by every
    name numpy 1.x / 2.x and Python 2 / 3 write them under, mapped to the objects themselves."""
    multiarray, numeric = _numpy_internals()
    table: Dict[Tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _latin1_bytes,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct  # ndarray, protocols 0-4
        table[(f"{core}.multiarray", "scalar")] = multiarray.scalar  # np.float32(1.0) and friends
        if hasattr(numeric, "_frombuffer"):  # contiguous arrays, protocol 5
            table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    for builtins in ("builtins", "__builtin__"):  # Python 2 pickles name the module __builtin__
        table[(builtins, "set")] = set
        table[(builtins, "frozenset")] = frozenset
        table[(builtins, "bytes")] = _empty_bytes
    return table


class SafeWeightsUnpickler(pickle.Unpickler):
    """An unpickler for weights pickles (detectron2 ``.pkl``, Caffe2/MSRA ``.pkl``) that builds
    only dicts, lists, tuples, numbers, strings, bytes and numpy arrays/scalars/dtypes.

    A pickle calls a global only after ``find_class`` returns it, so refusing there means a
    crafted file (``__reduce__`` returning ``os.system``) runs nothing. numpy's own globals are
    returned from a fixed table, never imported by the name the file gives.
    """

    _allowed: Optional[Dict[Tuple[str, str], object]] = None

    def __init__(self, file, path: str):
        super().__init__(file, encoding="latin1")  # Python 2 str blobs (Caffe2) are bytes as latin1
        self.path = path
        if SafeWeightsUnpickler._allowed is None:
            SafeWeightsUnpickler._allowed = _safe_globals()

    def find_class(self, module: str, name: str):
        found = self._allowed.get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"refused to load the global {module}.{name} from a weights pickle: a .pkl may hold only dicts, "
                f"lists, numbers, strings and numpy arrays, so nothing in the file was run ({self.path})"
            )
        return found


def load_weights_pickle(path: str) -> object:
    """The object in the weights pickle ``path``, built by ``SafeWeightsUnpickler``.

    Raises:
        UnsafePickleError: the file names a global weights pickles do not hold (the message names it).
        WeightsError: the file is not a readable pickle.
    """
    try:
        with open(path, "rb") as f:
            return SafeWeightsUnpickler(f, path).load()
    except WeightsError:
        raise
    except Exception as e:  # corrupt, truncated or not a pickle
        raise WeightsError(why_unreadable(path, e, "weights pickle")) from None


def why_unreadable(path: str, exc: BaseException, kind: str = "weights file") -> str:
    """One line saying why ``path`` is not a ``kind`` (``exc``: what the loader raised): an empty
    file, a text file (a YAML config or a CSV passed as weights), a damaged zip archive (a
    truncated ``.pth``), or the loader's first line."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        size, head = -1, b""
    if size == 0:
        return f"empty file (0 bytes), not a {kind} ({path})"
    if head.startswith(b"PK\x03\x04"):
        return f"damaged or truncated {kind}: its zip archive cannot be read ({path})"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\0" not in text:
        guess = "a YAML config" if ":" in text and "," not in text.splitlines()[0] else "a CSV or text file"
        return f"a text file ({guess}?), not a {kind} ({path})"
    message = str(exc)
    if "Weights only load failed" in message:  # torch's long advice; its one useful line is the reason
        found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(\n\n|$)", message, re.S)
        reason = found.group(1).strip().splitlines()[0][:120] if found else "not tensors and plain values"
        return f"not a {kind}: torch.load(weights_only=True) refused it ({reason}); nothing in it was run ({path})"
    first = (message.strip().splitlines() or [""])[0][:160]
    return f"not a {kind}: {type(exc).__name__}: {first} ({path})"


def nonfinite_tensors(state: Dict[str, Tensor]) -> List[str]:
    """Names of the floating-point tensors of ``state`` that hold NaN or inf, in order: the one
    finite-values check of weights files, checkpoints and optimiser states (other values are skipped)."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def nonfinite_kind(tensor: Tensor) -> str:
    """``NaN`` when ``tensor`` holds a NaN, else ``inf`` (for messages about ``nonfinite_tensors``)."""
    return "NaN" if bool(torch.isnan(tensor).any()) else "inf"


def read_weights_file(path: str) -> Tuple[Dict[str, Tensor], Dict[str, object]]:
    """Tensors of a ``.pth``/``.pt`` (torch) or ``.pkl`` (pickled numpy) file, and its extra fields
    (e.g. detectron2's ``__author__``). WeightsError names the file when it is missing, a folder,
    not a weights file (``why_unreadable``), or holds NaN/inf."""
    if os.path.isdir(path):
        raise WeightsError(f"weights file expected, got a folder ({path})")
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path} (weights are read from local files only)")
    if path.endswith(".pkl"):
        data = load_weights_pickle(path)
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(why_unreadable(path, e)) from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    extras = {k: v for k, v in data.items() if isinstance(v, (str, int, float, bool))}
    for key in ("model", "state_dict", "blobs"):  # checkpoint wrappers
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    tensors: Dict[str, Tensor] = {}
    for k, v in data.items():
        if isinstance(v, np.ndarray) and (v.dtype.kind in "biuf"):  # not strings or objects
            tensors[k] = torch.from_numpy(np.ascontiguousarray(v))
        elif isinstance(v, Tensor):
            tensors[k] = v
    if not tensors:
        raise WeightsError(f"{path}: no tensors or arrays found (keys: {list(data)[:8]})")
    bad = nonfinite_tensors(tensors)
    if bad:
        raise WeightsError(f"non-finite values (NaN or inf) in {bad[0]}" + (f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else "")
                           + f" ({path})")
    return tensors, extras
