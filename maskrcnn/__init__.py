"""A from-scratch Mask R-CNN for microscopy cell instance segmentation."""
__version__ = "0.1.0"
