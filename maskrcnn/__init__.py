"""A from-scratch Mask R-CNN for microscopy cell instance segmentation.

    from maskrcnn import load_model
    model = load_model("nuclei")          # a model zoo name or a checkpoint path
    labels = model.segment(image)         # numpy image -> label image

The public Python API, each name from its home module:

- ``load_model``, ``CellModel``, ``Detections`` (``maskrcnn.api``): a model as predict.py sets it up;
- ``load_config``, ``Config`` (``maskrcnn.config``): a YAML config with ``--set``-style overrides;
- ``Instances``, ``MaskList``, ``ImageList``, ``Sample`` (``maskrcnn.structures``): what flows
  between the stages (README, "Abstractions");
- ``UserError`` (``maskrcnn.errors``): the base class of every error that is the user's mistake.

Each is imported on first use, so ``import maskrcnn`` stays cheap (no torch).
The command lines are ``maskrcnn.cli`` (``python -m maskrcnn --help``).
"""
import importlib

__version__ = "0.1.0"
_HOMES = {
    "load_model": "api", "CellModel": "api", "Detections": "api",
    "load_config": "config", "Config": "config",
    "Instances": "structures", "MaskList": "structures", "ImageList": "structures", "Sample": "structures",
    "UserError": "errors",
}
__all__ = ["__version__", *_HOMES]


def __getattr__(name):
    if name in _HOMES:
        return getattr(importlib.import_module(f"maskrcnn.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'maskrcnn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_HOMES))
