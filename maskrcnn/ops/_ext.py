"""Loads the compiled extension ``maskrcnn._C`` once; the pure-PyTorch twins stand in without it.

Loading it registers the ops ``torch.ops.maskrcnn.*`` on PyTorch's dispatcher (schemas and
kernels from C++, fake kernels and autograd from ``maskrcnn.ops._library``); the public ops call
those. ``MASKRCNN_FORCE_FALLBACK=1`` forces the twins (tests and benchmarks compare the two).
"""
from __future__ import annotations

import os
import warnings

_C = None
_with_cuda = False  # read once: a pybind11 call inside a compiled region would break its graph
_load_error = None
_warned = False


def _load():
    global _C, _load_error, _with_cuda
    if os.environ.get("MASKRCNN_FORCE_FALLBACK", "0") not in ("", "0"):
        _load_error = "MASKRCNN_FORCE_FALLBACK is set"
        return
    try:
        import torch  # noqa: F401  # loads libc10/libtorch, which _C links against without an rpath

        from maskrcnn import _C as ext  # noqa: F401
        from maskrcnn.ops import _library

        _library.register(ext)
        _C = ext
        _with_cuda = bool(ext.with_cuda())
    except ImportError as e:  # not built, or built for another torch
        _load_error = str(e)


_load()


def in_kaggle_kernel() -> bool:
    """True in a Kaggle notebook or submission kernel (Kaggle sets ``KAGGLE_KERNEL_RUN_TYPE``)."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or os.path.isdir("/kaggle/input")


def fallback_message(error) -> str:
    """The one warning when the twins stand in. In a Kaggle kernel there is no compiler to build
    with (and no internet): the message points at the prebuilt-extension dataset instead."""
    head = f"maskrcnn: compiled ops not available ({error}); using the pure-PyTorch fallbacks (same results, slower). "
    if in_kaggle_kernel():
        return head + ("In a Kaggle kernel, attach the maskrcnn-ext dataset built for this Kaggle image "
                       "(docs/kaggle.md, section 1) and copy its _C*.so next to maskrcnn/__init__.py; "
                       "without it predictions run as they are.")
    return head + "Build them with `python setup.py build_ext --inplace`."


def get_ext():
    """The compiled module, or ``None`` (warning once) when the twins must be used."""
    global _warned
    if _C is None and not _warned and os.environ.get("MASKRCNN_FORCE_FALLBACK", "0") in ("", "0"):
        warnings.warn(fallback_message(_load_error), RuntimeWarning, stacklevel=3)
        _warned = True
    return _C


def has_cuda_ops() -> bool:
    """Whether the loaded ``maskrcnn._C`` has CUDA kernels."""
    return _C is not None and _with_cuda
