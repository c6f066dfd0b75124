"""Per-image isolation (maskrcnn.inference.guard): which failures are the image's, and the memory bound."""
import pytest
import torch

from maskrcnn.formats.image_files import ImageReadError
from maskrcnn.inference.guard import (BYTES_PER_PIXEL, ImageTooLarge, is_out_of_memory, memory_lower_bound,
                                      predict_guarded)


def test_memory_lower_bound_follows_the_largest_view_and_the_tile():
    assert memory_lower_bound((1000, 1000), 2.0) == int(4_000_000 * BYTES_PER_PIXEL)
    assert memory_lower_bound((1000, 1000), 1.0, tile_size=512) == int(512 * 512 * BYTES_PER_PIXEL)
    assert memory_lower_bound((300, 1000), 1.0, tile_size=512) == int(300 * 512 * BYTES_PER_PIXEL)
    assert memory_lower_bound((400, 400), 1.0, tile_size=512, batch=3) == int(3 * 160_000 * BYTES_PER_PIXEL)


def test_allocation_failures_are_recognised_and_nothing_else():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 5 GB"))
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("shape '[2, 3]' is invalid for input of size 5"))
    assert not is_out_of_memory(ValueError("out of memory"))


def _raise(e):
    def work():
        raise e
    return work


def test_predict_guarded_skips_the_images_failures_and_keeps_our_bugs():
    assert predict_guarded(lambda: 7, "a.png") == (7, None)
    value, reason = predict_guarded(_raise(ImageReadError("a.png: cannot decode image")), "a.png")
    assert value is None and reason == "a.png: cannot decode image"
    value, reason = predict_guarded(_raise(MemoryError()), "big.png")
    assert value is None and reason.startswith("big.png: out of memory") and "--tile" in reason
    with pytest.raises(ImageTooLarge, match="big.png: out of memory"):
        predict_guarded(_raise(MemoryError()), "big.png", strict=True)
    with pytest.raises(ImageReadError):
        predict_guarded(_raise(ImageReadError("a.png: x")), "a.png", strict=True)
    with pytest.raises(RuntimeError, match="invalid"):  # a bug of ours is not the image's fault
        predict_guarded(_raise(RuntimeError("shape is invalid")), "a.png")


def test_the_bound_per_pixel_follows_the_models_widths():
    from maskrcnn.config import load_config
    from maskrcnn.inference.guard import model_bytes_per_pixel
    from maskrcnn.model import build_model

    slim = load_config(None, ["model.backbone.name=resnet18", "model.backbone.stem_out_channels=32",
                              "model.backbone.res2_out_channels=32", "model.fpn.out_channels=32"])
    assert model_bytes_per_pixel(build_model(slim.model, load_weights=False, verbose=False)) == 32 + 16
    assert model_bytes_per_pixel(torch.nn.Linear(2, 2)) == BYTES_PER_PIXEL  # layers it cannot read
