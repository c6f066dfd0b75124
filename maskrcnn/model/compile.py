"""Regional ``torch.compile`` of Mask R-CNN: the static parts only (``model.compile: regional``).

The parts with fixed control flow, whose work is dense convolutions and linear layers, are
compiled each on its own (``nn.Module.compile``, in place: parameter names and checkpoints do
not change): backbone, FPN, RPN head, box head, box predictor and mask head. What lies between
them (anchors, proposal selection with NMS, sampling, RoIAlign pooling, losses, post-processing)
has data-dependent shapes and stays eager.

:func:`region_graph_breaks` reports the graph breaks inside each region (``torch._dynamo.explain``
on the inputs a forward pass gives them); tests/test_compile.py holds them at zero.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import nn

from maskrcnn.config import COMPILE_MODES


def compile_regions_of(model: nn.Module) -> Dict[str, nn.Module]:
    """The compiled regions of a ``MaskRCNN``, by name."""
    return {
        "backbone": model.backbone,
        "fpn": model.fpn,
        "rpn_head": model.rpn.head,
        "box_head": model.roi_heads.box_head,
        "box_predictor": model.roi_heads.box_predictor,
        "mask_head": model.roi_heads.mask_head,
    }


def compile_model(model: nn.Module, mode: str = "regional", backend: str = "inductor",
                  dynamic: Optional[bool] = None) -> nn.Module:
    """Compiles ``model``'s regions in place (``mode="regional"``) or leaves it (``"none"``).

    The compile happens at each region's first call (seconds to minutes on a CPU) and again when
    a region sees new input shapes (``dynamic=None``: a second shape makes the sizes symbolic).
    Returns the model.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "regional":
        for region in compile_regions_of(model).values():
            region.compile(backend=backend, dynamic=dynamic)
    model.compile_mode = mode
    return model


def region_graph_breaks(model: nn.Module, run: Callable[[], object]) -> Dict[str, int]:
    """Graph breaks per region: ``{name: count}`` for each region ``run()`` (a forward pass of
    ``model``, eager or compiled) called; regions it did not reach are left out.

    Each region is traced again with ``torch._dynamo.explain`` on the arguments of its first call,
    so the report covers exactly the code the regional compile sees.
    """
    regions = compile_regions_of(model)
    seen: Dict[str, tuple] = {}

    def keep_first_args(name):
        def hook(module, args):
            seen.setdefault(name, args)  # (returns None: a value returned would replace the args)
        return hook

    handles = [m.register_forward_pre_hook(keep_first_args(name)) for name, m in regions.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, args in seen.items():
        # The region's own forward, uncompiled, so that explain traces it afresh.
        explained = torch._dynamo.explain(regions[name].forward)(*args)
        out[name] = int(explained.graph_break_count)
    return out
