"""Large images read lazily, one window at a time: zarr arrays, OME-Zarr groups and (pyramidal) TIFF.

``open_source(path)`` returns an ``ImageSource``: the image's ``shape`` ``(C, H, W)`` and dtype
without reading pixels, and ``read(x0, y0, x1, y1, step)`` for one window (only the zarr chunks or
TIFF tiles it touches are read). A source is small and picklable: it holds the path and where the
array is inside it, and each process opens the file on first use and keeps it open (a Dask worker
opens it once, not once per block).

Layouts (the array's axes are mapped to ``(C, H, W)``):

- a zarr array: ``(H, W)``, ``(C, H, W)`` with ``C <= 4``, or ``(H, W, C)`` with ``C`` 3 or 4;
- an OME-Zarr group (NGFF 0.4 ``multiscales`` in the group's attributes, or 0.5 under ``ome``):
  the first (full-resolution) dataset, its ``axes`` naming ``c``, ``y``, ``x`` (``t`` and ``z``
  must have one plane: a 2-D image);
- a TIFF (``tifffile``, tiled or striped, pyramidal or not): the first series at level 0, its axes
  ``Y``, ``X`` and ``C`` or ``S`` (others must have length 1).

Pixel values are what ``maskrcnn.formats.image_files.read_image`` gives for the same data: uint8 / 255,
uint16 / 65535, floats as stored (``maskrcnn.inference.tiling`` converts one window at a time).

zarr and tifffile are the ``[distributed]`` extra (``pip install --no-build-isolation .[distributed]``);
they are imported only here, when a source is opened.
"""
from __future__ import annotations

import math
import os
from typing import Dict, Optional, Tuple

import numpy as np

from maskrcnn.errors import UserError

TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf")
_OPEN: Dict[Tuple[str, str, str], object] = {}  # per process: (path, kind, inner) -> the opened array


class SourceError(UserError, ValueError):
    """An image that cannot be read as a large 2-D image; the message names the file."""


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise SourceError(f"reading large images needs {module}: pip install --no-build-isolation .[distributed]") from None


class ImageSource:
    """A 2-D image (``shape = (C, H, W)``) in a zarr array, OME-Zarr group or TIFF, read by window.

    Args:
        path: the file or folder.
        kind: ``"zarr"`` or ``"tiff"``.
        inner: the array's path inside a zarr group ("" for an array at the root).
        axes: the stored axes as a string of ``c``, ``y``, ``x`` and length-1 others (``"yx"``,
            ``"cyx"``, ``"yxc"``, ``"tczyx"``...).
        shape_: the stored shape; dtype: its numpy dtype (str).
    """

    def __init__(self, path: str, kind: str, inner: str, axes: str, stored_shape: Tuple[int, ...], dtype: str):
        self.path, self.kind, self.inner, self.axes = path, kind, inner, axes
        self.stored_shape = tuple(int(s) for s in stored_shape)
        self.dtype = np.dtype(dtype)
        sizes = dict(zip(axes, self.stored_shape))
        self.shape = (sizes.get("c", 1), sizes["y"], sizes["x"])

    def __repr__(self) -> str:
        return f"ImageSource({self.path!r}, {self.kind}, axes={self.axes}, shape={self.shape}, {self.dtype})"

    def _array(self):
        key = (self.path, self.kind, self.inner)
        arr = _OPEN.get(key)
        if arr is None:
            arr = _open_array(self.path, self.kind, self.inner)
            _OPEN[key] = arr
        return arr

    def read(self, x0: int, y0: int, x1: int, y1: int, step: int = 1) -> np.ndarray:
        """The window ``[y0:y1:step, x0:x1:step]`` of every channel as ``ndarray[C, h, w]`` (stored dtype)."""
        index = []
        for a in self.axes:
            index.append(slice(y0, y1, step) if a == "y" else slice(x0, x1, step) if a == "x"
                         else slice(None) if a == "c" else 0)
        a = np.asarray(self._array()[tuple(index)])
        kept = [ax for ax in self.axes if ax in "cyx"]
        if "c" not in kept:
            a, kept = a[None], ["c"] + kept
        return np.transpose(a, [kept.index(ax) for ax in "cyx"])

    def subsample(self, max_pixels: int = 4_000_000) -> np.ndarray:
        """Every ``s``-th pixel along y and x (``s`` the smallest step giving at most ``max_pixels``
        per channel): ``ndarray[C, h, w]``, for percentiles of the whole image."""
        _, H, W = self.shape
        step = max(1, math.ceil(math.sqrt(H * W / max_pixels)))
        while math.ceil(H / step) * math.ceil(W / step) > max_pixels:  # the slices round up
            step += 1
        return self.read(0, 0, W, H, step)


def _open_array(path: str, kind: str, inner: str):
    if kind == "tiff":
        tifffile = _need("tifffile")
        zarr = _need("zarr")
        store = tifffile.imread(path, aszarr=True, series=0, level=0)
        return zarr.open(store, mode="r")
    zarr = _need("zarr")
    node = zarr.open(path, mode="r")
    return node[inner] if inner else node


def _ome_axes(attrs) -> Optional[Tuple[str, str]]:
    """``(dataset path, axes)`` of an OME-Zarr group's first multiscale, or None."""
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not ms:
        return None
    m = ms[0]
    axes = m.get("axes") or ["t", "c", "z", "y", "x"][-len(m.get("datasets", [{}])):]  # NGFF 0.3 had no axes
    names = "".join((a["name"] if isinstance(a, dict) else str(a)).lower()[0] for a in axes)
    return str(m["datasets"][0]["path"]), names


def _plain_axes(shape: Tuple[int, ...], path: str) -> str:
    if len(shape) == 2:
        return "yx"
    if len(shape) == 3 and shape[0] <= 4:
        return "cyx"
    if len(shape) == 3 and shape[2] in (3, 4):
        return "yxc"
    raise SourceError(f"{path}: a zarr array of shape {shape} is not (H, W), (C<=4, H, W) or (H, W, 3|4); "
                      "write an OME-Zarr group with named axes instead")


def _check(src: ImageSource) -> ImageSource:
    for a, n in zip(src.axes, src.stored_shape):
        if a not in "cyx" and n != 1:
            raise SourceError(f"{src.path}: axis {a!r} has {n} planes; only 2-D images (one t, one z) are supported")
    if len(set(src.axes)) != len(src.axes) or "y" not in src.axes or "x" not in src.axes:
        raise SourceError(f"{src.path}: axes {src.axes!r} need one y and one x")
    if src.shape[0] not in (1, 3, 4):
        raise SourceError(f"{src.path}: {src.shape[0]} channels; the models take 1 or 3 (4: RGBA)")
    if src.dtype.kind != "f" and src.dtype not in (np.uint8, np.uint16):
        raise SourceError(f"{src.path}: pixels of type {src.dtype}; need uint8, uint16 or float")
    return src


def open_source(path: str) -> ImageSource:
    """The ``ImageSource`` of a zarr array / OME-Zarr group (a folder, or ``.zarr``) or a TIFF file.

    Raises SourceError naming the file when it is missing, of another kind, or not a 2-D image.
    """
    if not os.path.exists(path):
        raise SourceError(f"no such image: {path}")
    if path.lower().endswith(TIFF_SUFFIXES):
        tifffile = _need("tifffile")
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes = series.axes.lower().replace("s", "c")
                shape, dtype = tuple(series.levels[0].shape), str(series.dtype)
        except Exception as e:  # tifffile raises several types for a file it cannot parse
            raise SourceError(f"{path}: not a readable TIFF ({type(e).__name__}: {e})") from None
        return _check(ImageSource(path, "tiff", "", axes, shape, dtype))
    zarr = _need("zarr")
    try:
        node = zarr.open(path, mode="r")
    except Exception as e:  # zarr raises several types for a folder that is not a store
        raise SourceError(f"{path}: not a zarr array or group ({type(e).__name__}: {e})") from None
    if hasattr(node, "shape"):
        return _check(ImageSource(path, "zarr", "", _plain_axes(tuple(node.shape), path), node.shape, str(node.dtype)))
    found = _ome_axes(dict(node.attrs))
    if found is None:
        raise SourceError(f"{path}: a zarr group without OME-Zarr 'multiscales' metadata; give the array inside it "
                          f"(e.g. {path}/0)")
    inner, axes = found
    arr = node[inner]
    if len(axes) != len(arr.shape):
        raise SourceError(f"{path}: multiscales axes {axes!r} do not fit the array {inner!r} of shape {arr.shape}")
    return _check(ImageSource(path, "zarr", inner, axes, tuple(arr.shape), str(arr.dtype)))
