"""The Python half of the dispatcher ops ``torch.ops.maskrcnn.*``: fake (meta) kernels and autograd.

``csrc/ops.cpp`` defines the schemas (``TORCH_LIBRARY(maskrcnn, m)``) and registers the CPU and
CUDA kernels and RoIAlign's autocast rule. This module adds what shape propagation
(``torch.compile``, ``torch.export``) and training need:

- fake kernels (``torch.library.register_fake``): output shapes and strides without data; NMS and
  ``greedy_suppress`` keep a data-dependent number of items (``ctx.new_dynamic_size()``);
- autograd for ``roi_align`` (``torch.library.register_autograd``), whose backward is the op
  ``roi_align_backward``.

A ``maskrcnn._C`` built before the dispatcher registration has only its pybind11 functions; for
it, :func:`register` defines the same schemas from Python (``SCHEMAS``, checked against the C++
ones by tests/ops/test_library.py) and registers those functions as the CPU/CUDA kernels, so the
Python face behaves the same with an old and a new build until the old one is rebuilt.

Running an exported model (``torch.export.load``) needs only the kernels: load the compiled
module (``import maskrcnn._C``, or ``torch.ops.load_library(path_to_C_so)``); re-tracing or
compiling it again also needs this module (``import maskrcnn.ops``).
"""
from __future__ import annotations

import torch

NAMESPACE = "maskrcnn"

# name -> schema; the same text as the m.def(...) lines of csrc/ops.cpp.
SCHEMAS = {
    "roi_align": "(Tensor input, Tensor rois, float spatial_scale, int pooled_h, int pooled_w, int sampling_ratio, "
                 "bool aligned) -> Tensor",
    "roi_align_backward": "(Tensor grad, Tensor rois, float spatial_scale, int pooled_h, int pooled_w, int batch, "
                          "int channels, int height, int width, int sampling_ratio, bool aligned, "
                          "bool channels_last) -> Tensor",
    "nms": "(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor",
    "greedy_suppress": "(Tensor iou_sorted, float iou_threshold) -> Tensor",
    "crop_mask_intersection": "(Tensor a_crops, Tensor a_origins, Tensor b_crops, Tensor b_origins) -> Tensor",
    "match_boxes": "(Tensor gt_boxes, Tensor gt_valid, Tensor boxes) -> (Tensor, Tensor, Tensor)",
}

_python_defined = None  # the torch.library.Library holding Python-side definitions (old builds only)
_registered = False


def qualname(name: str) -> str:
    return f"{NAMESPACE}::{name}"


def has_cpu_kernel(name: str) -> bool:
    """Whether ``torch.ops.maskrcnn.<name>`` has a CPU kernel (a module built before the op was
    added has none: its callers use the twin)."""
    return is_defined(name) and torch._C._dispatch_has_kernel_for_dispatch_key(qualname(name), "CPU")


def is_defined(name: str) -> bool:
    """Whether ``torch.ops.maskrcnn.<name>`` has a schema (from C++ or from :func:`register`)."""
    try:
        torch._C._dispatch_find_schema_or_throw(qualname(name), "")
        return True
    except RuntimeError:
        return False


def cpu_channels_last(x: torch.Tensor) -> bool:
    """The kernels' rule for reading (and writing) NHWC natively; same test in csrc/roi_align."""
    return x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _define_from_python(ext) -> None:
    """Schemas and CPU/CUDA kernels for a ``maskrcnn._C`` that predates ``TORCH_LIBRARY``."""
    global _python_defined
    lib = torch.library.Library(NAMESPACE, "DEF")
    kernels = {
        "roi_align": ext.roi_align_forward,
        "roi_align_backward": ext.roi_align_backward,
        # the old entry points expect contiguous boxes (the old face made them so)
        "nms": lambda boxes, scores, thr: ext.nms(boxes.contiguous(), scores.contiguous(), thr),
        "greedy_suppress": ext.greedy_suppress,
        "crop_mask_intersection": ext.crop_mask_intersection,
    }
    keys = ["CPU"] + (["CUDA"] if ext.with_cuda() else [])
    for name, fn in kernels.items():  # (ops added since, e.g. match_boxes, stay undefined: twins serve them)
        lib.define(name + SCHEMAS[name])
        for key in keys:
            lib.impl(name, fn, key)
    _python_defined = lib


def _roi_align_fake(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    torch._check(input.dim() == 4, lambda: f"roi_align: input must be [N, C, H, W], got {tuple(input.shape)}")
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: f"roi_align: rois must be [K, 5], got {tuple(rois.shape)}")
    fmt = torch.channels_last if cpu_channels_last(input) else torch.contiguous_format
    return torch.empty((rois.shape[0], input.shape[1], pooled_h, pooled_w), dtype=input.dtype, device=input.device,
                       memory_format=fmt)


def _roi_align_backward_fake(grad, rois, spatial_scale, pooled_h, pooled_w, batch, channels, height, width,
                             sampling_ratio, aligned, channels_last):
    fmt = torch.channels_last if channels_last and channels > 1 else torch.contiguous_format
    return torch.empty((batch, channels, height, width), dtype=grad.dtype, device=grad.device, memory_format=fmt)


def _kept_fake(reference: torch.Tensor) -> torch.Tensor:
    # How many items survive NMS depends on the data: an unbacked size, at most the input's count.
    n = torch.library.get_ctx().new_dynamic_size()
    torch._check(n <= reference.shape[0])
    return reference.new_empty((n,), dtype=torch.long)


def _nms_fake(boxes, scores, iou_threshold):
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: f"nms: boxes must be [N, 4], got {tuple(boxes.shape)}")
    return _kept_fake(boxes)


def _greedy_suppress_fake(iou_sorted, iou_threshold):
    return _kept_fake(iou_sorted)


def _crop_mask_intersection_fake(a_crops, a_origins, b_crops, b_origins):
    return a_crops.new_empty((a_crops.shape[0], b_crops.shape[0]), dtype=torch.long)


def _match_boxes_fake(gt_boxes, gt_valid, boxes):
    shape = (gt_boxes.shape[0], boxes.shape[-2])
    return (boxes.new_empty(shape, dtype=torch.float32), boxes.new_empty(shape, dtype=torch.long),
            boxes.new_empty(shape, dtype=torch.bool))


def _roi_align_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.params = (spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    ctx.input_shape = tuple(input.shape)
    ctx.channels_last = bool(cpu_channels_last(input))


def _roi_align_backward(ctx, grad_output):
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned = ctx.params
    n, c, h, w = ctx.input_shape
    grad_input = torch.ops.maskrcnn.roi_align_backward(grad_output, rois, spatial_scale, pooled_h, pooled_w, n, c, h,
                                                       w, sampling_ratio, aligned, ctx.channels_last)
    return grad_input, None, None, None, None, None, None


def register(ext) -> None:
    """Makes ``torch.ops.maskrcnn.*`` complete for the loaded module ``ext`` (once per process)."""
    global _registered
    if _registered:
        return
    if not is_defined("roi_align"):
        _define_from_python(ext)
    for name, fn in (("roi_align", _roi_align_fake), ("roi_align_backward", _roi_align_backward_fake),
                     ("nms", _nms_fake), ("greedy_suppress", _greedy_suppress_fake),
                     ("crop_mask_intersection", _crop_mask_intersection_fake),
                     ("match_boxes", _match_boxes_fake)):
        if is_defined(name):  # (a module built before an op was added lacks its schema)
            torch.library.register_fake(qualname(name), fn)
    torch.library.register_autograd(qualname("roi_align"), _roi_align_backward,
                                    setup_context=_roi_align_setup_context)
    _registered = True


def defined_in_python() -> bool:
    """True when the schemas came from :data:`SCHEMAS` (a module built before the dispatcher ops)."""
    return _python_defined is not None


# `set_python_module` in csrc/ops.cpp names this module: importing it after the compiled module
# (e.g. when an exported program is re-traced) completes the registration.
if is_defined("roi_align"):
    register(None)
