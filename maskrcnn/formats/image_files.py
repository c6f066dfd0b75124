"""Reading and writing image files: PNG and TIFF, 8 and 16 bit, grayscale, RGB and RGBA.

Images leave this module as ``Tensor[C, H, W]`` float32 in [0, 1] (C = 1 or 3), the layout every
reader yields (``maskrcnn.structures.Sample``). Writers are atomic (temp file + ``os.replace``).
"""
from __future__ import annotations

import errno
import io
import os
import warnings
from typing import Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from maskrcnn.errors import UserError
from maskrcnn.fileio import atomic_write_bytes

PathLike = Union[str, os.PathLike]


class ImageReadError(UserError, ValueError):
    """An image file that exists but cannot be decoded or has an unsupported layout."""


# Pillow modes whose decoded array ``array_to_float`` takes as it is (others are converted first).
_ARRAY_MODES = ("1", "L", "LA", "RGB", "RGBA", "RGBX", "I", "F")


def _to_array(im: Image.Image, where: str) -> np.ndarray:
    """Pixel values of a PIL image as float32 ``[H, W, C]`` in [0, 1] (``array_to_float`` of its array)."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    if im.mode in _ARRAY_MODES or im.mode.startswith("I;16"):
        return array_to_float(np.asarray(im), where)
    raise ImageReadError(f"{where}: unsupported image mode {mode!r}")


def array_to_float(a: np.ndarray, where: str = "image") -> np.ndarray:
    """An image's pixel values, as Pillow decodes a file or as a numpy user holds them, as float32
    ``[H, W, C]`` in [0, 1], C = 1 or 3: the one conversion of ``read_image`` and the Python API.

    By dtype: ``bool`` -> 0/1; ``uint8`` / 255; other integers (``uint16``, Pillow's int32 mode
    ``I``) / 65535, refused outside [0, 65535]; floats as they are, refused unless finite and in
    [0, 1]. By shape: ``[H, W]`` or ``[H, W, 1]`` gray; ``[H, W, 2]`` gray + alpha and
    ``[H, W, 4]`` RGBA drop the alpha; ``[H, W, 3]`` RGB.

    Raises:
        ImageReadError: another shape or dtype, or values out of range; the message names ``where``.
    """
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(f"{where}: expected an image [H, W] or [H, W, C] with C = 1-4, got shape {a.shape}")
    if a.shape[2] in (2, 4):
        a = a[:, :, : a.shape[2] - 1]  # drop alpha: it is not part of the signal
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if np.issubdtype(a.dtype, np.integer):
        if a.dtype.itemsize > 2 or a.dtype.kind == "i":  # 16-bit data often arrives in wider ints
            if a.size and (a.min() < 0 or a.max() > 65535):
                kind = "32-bit integer" if a.dtype == np.int32 else f"{a.dtype} integer"
                raise ImageReadError(
                    f"{where}: {kind} image with values in [{a.min()}, {a.max()}]; only 16-bit ranges are supported"
                )
        return a.astype(np.float32) / 65535.0
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
        if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
            raise ImageReadError(f"{where}: float image with values outside [0, 1] (min {a.min()}, max {a.max()}); "
                                 "scale it to [0, 1] or give integers (8 or 16 bit)")
        return a
    raise ImageReadError(f"{where}: unsupported pixel type {a.dtype}")


def open_image(path_or_bytes, where: str, signed_ok: bool = False) -> Image.Image:
    """Open and decode an image file (or bytes) with Pillow; errors name ``where``.

    Pillow's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) applies: an image over twice the
    limit is refused (ImageReadError naming the file and its size), one over the limit is read with
    a warning that names the file (Pillow's own does not). ``signed_ok``: accept signed-integer
    TIFF samples (label images: 32-bit ones are Pillow's mode ``I``, read exactly; the caller refuses
    negative ids).
    """
    try:
        src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray, memoryview)) else path_or_bytes
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            im = Image.open(src)
            try:
                im.load()  # decode now, so a truncated file fails here and names the file
            except BaseException:
                im.close()
                raise
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {where}") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{where}: refused as a possible decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(path_or_bytes, (str, os.PathLike)) and os.path.isfile(path_or_bytes) and os.path.getsize(path_or_bytes) == 0:
            raise ImageReadError(f"{where}: cannot decode image: the file is empty (0 bytes)") from None
        raise ImageReadError(f"{where}: cannot decode image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    try:
        _refuse_unrepresentable(im, where, signed_ok)
    except ImageReadError:
        im.close()
        raise
    for w in caught:  # re-issue what was not the bomb warning unchanged; name the file in that one
        if issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn(f"{where}: {w.message}", Image.DecompressionBombWarning, stacklevel=2)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return im


def _refuse_unrepresentable(im: Image.Image, where: str, signed_ok: bool = False) -> None:
    """ImageReadError for files one 2-D image cannot stand for: several pages or frames (a stack,
    a time series: reading page 0 alone would drop the rest without a word) and signed-integer
    samples (Pillow reads int8 as uint8, so -1 would become 255)."""
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        raise ImageReadError(f"{where}: holds {frames} pages/frames; one 2-D image per file is supported "
                             "(save each page as its own file)")
    tags = getattr(im, "tag_v2", None)
    sample_format = tags.get(339) if tags is not None else None  # TIFF SampleFormat: 1 uint, 2 int, 3 float
    formats = sample_format if isinstance(sample_format, (tuple, list)) else (sample_format,)
    if 2 in formats and not signed_ok:
        raise ImageReadError(f"{where}: signed-integer samples (TIFF SampleFormat 2) are not supported: "
                             "convert the image to unsigned 8 or 16 bit")


def _dangling_link(path: str) -> str:
    """Why the symlink ``path`` leads to no file: a loop, or the missing target."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop (it leads back to itself)"
    return f"a broken symlink (its target {os.readlink(path)} does not exist)"


def read_image(path: PathLike, channels: Optional[int] = None) -> torch.Tensor:
    """Read a PNG/TIFF (8 or 16 bit; gray, gray+alpha, RGB, RGBA, palette) into ``Tensor[C, H, W]`` float32 in [0, 1].

    Alpha is dropped (RGBA -> the first 3 channels). 16-bit data is divided by 65535.

    Args:
        path: the image file.
        channels: None keeps the file's channels (1 or 3); 1 converts RGB to gray (an exact copy
            when the three channels are equal, as in grayscale images stored as RGB; else the ITU-R
            601 luma); 3 repeats a gray channel three times.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ImageReadError: the file cannot be decoded or has an unsupported layout.
    """
    return read_image_with_depth(path, channels)[0]


def read_image_with_depth(path: PathLike, channels: Optional[int] = None) -> Tuple[torch.Tensor, int]:
    """``read_image`` and the file's bits per sample: 16 for 16-bit (and 32-bit integer) data,
    32 for float, 1 for bilevel, else 8. 12-bit microscopy images are stored as 16-bit: 16."""
    where = os.fspath(path)
    if not os.path.isfile(where):
        if os.path.islink(where):
            raise ImageReadError(f"{where}: {_dangling_link(where)}")
        raise FileNotFoundError(f"image file not found: {where}")
    with open_image(where, where) as im:
        mode = im.mode
        a = _to_array(im, where)
    depth = 16 if mode.startswith("I;16") or mode == "I" else 32 if mode == "F" else 1 if mode == "1" else 8
    return _finish(a, channels, where), depth


def decode_image_bytes(data: bytes, channels: Optional[int] = None, where: str = "<bytes>") -> torch.Tensor:
    """``read_image`` for an encoded image held in memory (the cache stores PNG bytes)."""
    with open_image(bytes(data), where) as im:
        a = _to_array(im, where)
    return _finish(a, channels, where)


def image_from_array(array: Union[np.ndarray, Image.Image], where: str = "image") -> torch.Tensor:
    """``read_image`` for pixels already in memory -> ``Tensor[C, H, W]`` float32 in [0, 1].

    ``array``: a numpy array as ``np.asarray(PIL.Image.open(f))`` gives it (any of
    ``array_to_float``'s dtypes and shapes), or a PIL image (converted by its mode, as ``read_image``
    does). The array of an image file in any mode but palette ("P": its array holds indices, not
    colours) gives what ``read_image`` gives for the file.
    """
    if isinstance(array, Image.Image):
        _refuse_unrepresentable(array, where)  # as read_image: no silent first page of a stack
        return _finish(_to_array(array, where), None, where)
    return _finish(array_to_float(array, where), None, where)


def _finish(a: np.ndarray, channels: Optional[int], where: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    return convert_channels(t, channels, where)


def convert_channels(image: torch.Tensor, channels: Optional[int], where: str = "image") -> torch.Tensor:
    """Convert ``image (Tensor[C, H, W])`` to ``channels`` (None: unchanged; 1: gray; 3: RGB)."""
    c = int(image.shape[0])
    if channels is None or channels == c:
        return image
    if channels == 3 and c == 1:
        return image.expand(3, -1, -1).contiguous()
    if channels == 1 and c == 3:
        if torch.equal(image[0], image[1]) and torch.equal(image[1], image[2]):
            return image[:1].clone()
        w = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype)
        return (image * w[:, None, None]).sum(0, keepdim=True).clamp_(0, 1)
    raise ImageReadError(f"{where}: cannot convert an image with {c} channels to {channels}")


def is_gray(image: torch.Tensor) -> bool:
    """True for 1-channel images and for 3-channel images whose channels are equal."""
    if image.shape[0] == 1:
        return True
    return bool(torch.equal(image[0], image[1]) and torch.equal(image[1], image[2]))


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``Tensor[C, H, W]`` in [0, 1] -> ``uint8[H, W]`` (C = 1) or ``uint8[H, W, C]``, rounded."""
    a = (image.detach().float().clamp(0, 1) * 255.0).round_().to(torch.uint8).cpu().numpy()
    return a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0))


def encode_png(array: np.ndarray, compress_level: int = 9, optimize: bool = False) -> bytes:
    """PNG bytes of ``uint8[H, W]`` / ``uint8[H, W, 3|4]`` / ``uint16[H, W]``."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=compress_level, optimize=optimize)
    return buf.getvalue()


def write_image(path: PathLike, image: Union[torch.Tensor, np.ndarray]) -> None:
    """Write an image as PNG, atomically.

    ``image`` is ``Tensor[C, H, W]`` float in [0, 1] (written as 8 bit) or a ``uint8``/``uint16``
    numpy array ``[H, W]`` / ``[H, W, C]`` written as it is.
    """
    if isinstance(image, torch.Tensor):
        image = to_uint8(image)
    atomic_write_bytes(path, encode_png(image, compress_level=6))
