"""A from-scratch Mask R-CNN for microscopy cell instance segmentation.

    from maskrcnn import load_model
    model = load_model("nuclei")          # a model zoo name or a checkpoint path
    labels = model.segment(image)         # numpy image -> label image

``load_model`` (``maskrcnn.api``) is imported on first use, so ``import maskrcnn`` stays cheap
(no torch).
"""
__version__ = "0.1.0"
_API = ("load_model", "CellModel", "Detections")
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        from maskrcnn import api

        return getattr(api, name)
    raise AttributeError(f"module 'maskrcnn' has no attribute {name!r}")
