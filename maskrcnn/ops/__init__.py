"""Compiled ops with pure-PyTorch twins: RoIAlign, NMS, mask IoU and mask NMS, box matching.

Each public op uses ``maskrcnn._C`` when it is built and imports, and otherwise its twin
(``*_reference``) after one warning. ``MASKRCNN_FORCE_FALLBACK=1`` forces the twins.
"""
from maskrcnn.ops._ext import get_ext, has_cuda_ops
from maskrcnn.ops.box_match import best_matches, best_matches_reference
from maskrcnn.ops.masks import (
    crop_mask_intersection_reference,
    crop_mask_iou,
    crop_mask_nms,
    crop_pair_intersections,
    mask_iou,
    mask_iou_dense_reference,
    mask_nms,
)
from maskrcnn.ops.nms import batched_nms, greedy_suppress, greedy_suppress_reference, nms, nms_reference
from maskrcnn.ops.roi_align import RoIAlign, roi_align, roi_align_reference

__all__ = [
    "RoIAlign",
    "batched_nms",
    "best_matches",
    "best_matches_reference",
    "crop_mask_intersection_reference",
    "crop_mask_iou",
    "crop_mask_nms",
    "crop_pair_intersections",
    "get_ext",
    "greedy_suppress",
    "greedy_suppress_reference",
    "has_cuda_ops",
    "mask_iou",
    "mask_iou_dense_reference",
    "mask_nms",
    "nms",
    "nms_reference",
    "roi_align",
    "roi_align_reference",
]
