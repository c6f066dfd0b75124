"""One image that cannot be processed must not end a run over many (``predict.py``, ``pseudo_label``).

``predict_guarded`` wraps the per-image work (read, predict, post-process): an image that cannot be
read (``ImageReadError``, an OS error), that would not fit in memory at the chosen settings
(estimated before the model runs: ``check_fits``), or whose prediction runs out of memory anyway
(``MemoryError``, ``torch.OutOfMemoryError``, the allocator's ``RuntimeError``) gives a one-line
reason instead of an exception; the caller writes an empty row, warns and names it in the summary.
Anything else is a bug of ours and propagates.

The estimate is deliberately a lower bound (``model_bytes_per_pixel`` of the resized input: the
float32 output of the backbone's stem, at half resolution, and of its first stage, at a quarter,
held together with one temporary of that stage; ``C_stem + C_res2 / 2`` bytes per input pixel,
192 for ResNet-50; the rest of the forward pass comes on top): an image is refused before the
model runs only when even that bound exceeds the memory available, so no image that would have
fitted is refused. Between the bound and the real peak, the allocation failure is caught instead.
"""
from __future__ import annotations

import gc
from typing import Callable, Optional, Tuple, TypeVar

import torch

from maskrcnn.formats.image_files import ImageReadError
from maskrcnn.errors import user_error_message

T = TypeVar("T")

# The bound for a model whose layers cannot be read (a stub): ResNet-50's 64-channel stem and
# 256-channel res2, 64 * 4 / 4 + 256 * 4 / 16 * 2 = 192 bytes per input pixel.
BYTES_PER_PIXEL = 192.0


def model_bytes_per_pixel(model: torch.nn.Module) -> float:
    """``C_stem + C_res2 / 2`` (see the module doc) from ``model``'s first convolution and its
    backbone's ``out_channels[0]``; ``BYTES_PER_PIXEL`` when they cannot be found."""
    stem = next((m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    res2 = next((m.out_channels[0] for m in model.modules()
                 if isinstance(getattr(m, "out_channels", None), (list, tuple)) and m.out_channels), None)
    if stem is None or res2 is None:
        return BYTES_PER_PIXEL
    return float(stem) + float(res2) / 2.0


class ImageTooLarge(ImageReadError):
    """An image too large to predict in the memory there is at the chosen settings."""


def available_memory(device: torch.device) -> Optional[int]:
    """Bytes free for a new allocation on ``device`` (CPU: ``MemAvailable``), or None when unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # noqa: BLE001 - no estimate is fine: the allocation failure is caught instead
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_lower_bound(size: Tuple[int, int], max_scale: float, tile_size: int = 0, batch: int = 1,
                       bytes_per_pixel: float = BYTES_PER_PIXEL) -> int:
    """Bytes one forward pass over an image of ``size`` (H, W) needs at least: the largest view
    (``max_scale``), or one tile of ``tile_size`` when tiling applies, times ``batch`` views per call."""
    h, w = size
    if tile_size and max(h, w) > tile_size:
        h, w = min(h, tile_size), min(w, tile_size)
    pixels = h * w * max_scale * max_scale
    return int(pixels * bytes_per_pixel * max(batch, 1))


def check_fits(image: torch.Tensor, predictor, where: str) -> None:
    """ImageTooLarge naming ``where`` when the lower bound of ``memory_lower_bound`` for ``image``
    (``Tensor[C, H, W]``) under ``predictor``'s views, tiling and batch exceeds the free memory."""
    free = available_memory(predictor.device)
    if free is None:
        return
    scale = max((float(v.scale) for v in predictor.views), default=1.0)
    per_pixel = max(model_bytes_per_pixel(m) for m in predictor.models)  # the models run one after another
    tile = predictor.tile_size
    auto, limit = getattr(predictor, "auto_tile", (0, 0))
    if not tile and auto and max(image.shape[-2:]) > limit:  # automatic tiling tiles it at once
        tile = auto
    need = memory_lower_bound(tuple(image.shape[-2:]), scale, tile, predictor.batch_size, per_pixel)
    if need > free:
        h, w = image.shape[-2:]
        raise ImageTooLarge(
            f"{where}: a {h}x{w} image needs at least {need / 2**30:.1f} GiB at TTA scale {scale:g} "
            f"but {free / 2**30:.1f} GiB are free on {predictor.device}: predict it in tiles (--tile 1024) "
            "or with smaller TTA scales")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (host or GPU)."""
    if isinstance(exc, MemoryError) or isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def predict_guarded(work: Callable[[], T], path: str, strict: bool = False) -> Tuple[Optional[T], Optional[str]]:
    """``(work(), None)``, or ``(None, reason)`` when ``work`` fails on its image in a way that is
    the image's (see the module doc); with ``strict`` such a failure is raised as a user error
    (``ImageReadError``: one ``error:`` line) instead."""
    try:
        return work(), None
    except (ImageReadError, OSError) as e:
        if strict:
            raise
        return None, user_error_message(e) or f"{type(e).__name__}: {e} ({path})"
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        reason = (f"{path}: out of memory predicting it ({type(e).__name__}); predict it in tiles (--tile 1024) "
                  "or with smaller TTA scales")
        if strict:
            raise ImageTooLarge(reason) from None
        return None, reason
