"""Export of the inference model with ``torch.export``: one ``.pt2`` file, image in, detections out.

``ExportableMaskRCNN`` runs a trained ``MaskRCNN``'s eval forward with the same numbers, written
so that ``torch.export`` can capture it whole: between the network's parts, the steps whose
sizes depend on the data (dropping invalid proposals, score thresholds, NMS, top-k) work on
fixed-size tensors with a validity mask instead of shrinking them, and pooling reads every RoI
on every FPN level and picks each RoI's own. One size stays data-dependent (the number of
detections D, an unbacked size the exported program computes at run time).

Inputs and outputs of the exported program:

- ``image``: ``Tensor[C, H, W]`` float32 in [0, 1] of the size given at export (C as at export);
- ``boxes Tensor[D, 4]`` xyxy in the input image's pixels, ``scores Tensor[D]``,
  ``labels Tensor[D]`` int64 (0-based classes), ``masks Tensor[D, M, M]`` mask probabilities
  inside each box (the mask head's M x M grid; paste them into the image as
  ``maskrcnn.model.roi_heads.paste_masks`` does, or with ``torch.nn.functional.grid_sample``),
  by decreasing score, at most ``roi_heads.detections_per_image``.

Running the exported file needs the ops ``torch.ops.maskrcnn.*`` registered: the compiled
module (``import maskrcnn._C``, or ``torch.ops.load_library(".../maskrcnn/_C....so")``); the
model code is not needed (docs/deploy.md).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.fileio import atomic_open, check_output_path
from maskrcnn.model.box_coder import decode_boxes
from maskrcnn.model.roi_heads import assign_fpn_levels
from maskrcnn.model.rpn import RPN_BOX_WEIGHTS
from maskrcnn.ops import get_ext, roi_align
from maskrcnn.structures import clip_boxes


def masked_batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """``maskrcnn.ops.batched_nms`` of the ``valid`` boxes, on fixed-size tensors.

    Args:
        boxes (Tensor[N, 4]), scores (Tensor[N]), groups (Tensor[N]) int64, valid (Tensor[N]) bool.
    Returns:
        Tensor[N] bool: kept. The same decisions as ``batched_nms(boxes[valid], ...)``: invalid
        boxes go last (score -inf) so they suppress nothing, and the groups' offset is computed
        over the valid boxes as there (the same coordinates, hence the same rounding).
    """
    b = boxes.float() if boxes.dtype in (torch.float16, torch.bfloat16) else boxes
    inf = torch.tensor(float("inf"), dtype=b.dtype, device=b.device)
    hi = torch.where(valid[:, None], b, -inf).max()
    lo = torch.where(valid[:, None], b, inf).min()
    span = hi - torch.minimum(lo, torch.zeros_like(lo)) + 1
    shifted = b + (groups.to(b.dtype) * span)[:, None]
    s = torch.where(valid, scores, torch.full_like(scores, float("-inf")))
    keep = torch.ops.maskrcnn.nms(shifted, s, float(iou_threshold))
    return torch.zeros_like(valid).index_fill(0, keep, True) & valid


def first_kept(scores: Tensor, kept: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Indices of the first ``k`` kept items by decreasing score (stable: ties in index order),
    padded with non-kept ones: ``(Tensor[min(k, N)] int64, Tensor[min(k, N)] bool kept)``."""
    order = torch.sort(torch.where(kept, scores, torch.full_like(scores, float("-inf"))), descending=True,
                       stable=True).indices[:k]
    return order, kept[order]


def pool_all_levels(pooler, features: List[Tensor], boxes: Tensor) -> Tensor:
    """``MultiLevelRoIPooler`` of one image's ``boxes (Tensor[K, 4])`` without data-dependent sizes:
    every box pooled on every level, each box's own level picked. ``Tensor[K, C, S, S]``."""
    rois = torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes.float()], dim=1)
    levels = assign_fpn_levels(rois[:, 1:], pooler.min_level, pooler.max_level, pooler.canonical_size,
                               pooler.canonical_level)
    pooled = torch.stack([roi_align(f, rois, pooler.output_size, 1.0 / s, pooler.sampling_ratio, aligned=True)
                          for f, s in zip(features, pooler.strides)])  # [L, K, C, S, S]
    return pooled[levels, torch.arange(boxes.shape[0], device=boxes.device)]


class ExportableMaskRCNN(nn.Module):
    """``model``'s eval-mode inference for one image, exportable (see the module docstring).

    ``forward(image Tensor[C, H, W]) -> (boxes [D, 4], scores [D], labels [D], masks [D, M, M])``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def _proposals(self, features: List[Tensor], image_size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """RPN proposals of the one image: ``(boxes Tensor[P, 4], valid Tensor[P] bool)`` as
        ``find_top_proposals`` keeps them (in order), padded to a fixed ``P``."""
        rpn = self.model.rpn
        logits, deltas = rpn.head(features)
        anchors = rpn.anchor_generator(features)
        pre, post = rpn.pre_nms_topk[1], rpn.post_nms_topk[1]
        scores, boxes, levels = [], [], []
        for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):  # a loop over levels
            s, idx = lg[0].float().topk(min(pre, lg.shape[1]))
            scores.append(s)
            boxes.append(decode_boxes(dl[0][idx], an[idx], RPN_BOX_WEIGHTS))
            levels.append(torch.full((idx.shape[0],), lvl, dtype=torch.long, device=s.device))
        scores, boxes, levels = torch.cat(scores), clip_boxes(torch.cat(boxes), image_size), torch.cat(levels)
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        valid &= ((boxes[:, 2] - boxes[:, 0]) > rpn.min_size) & ((boxes[:, 3] - boxes[:, 1]) > rpn.min_size)
        kept = masked_batched_nms(boxes, scores, levels, valid, rpn.nms_thresh)
        order, ok = first_kept(scores, kept, post)
        return boxes[order], ok

    def _detections(self, features, proposals: Tensor, proposal_ok: Tensor, image_size):
        """``box_inference`` of the one image on fixed-size candidates; returns the first D."""
        heads = self.model.roi_heads
        x = heads.box_head(pool_all_levels(heads.box_pooler, features, proposals))
        cls_logits, deltas = heads.box_predictor(x)
        c = deltas.shape[1] // 4
        scores = F.softmax(cls_logits.float(), dim=-1)[:, :c]  # [P, C]
        boxes = clip_boxes(decode_boxes(deltas, proposals, heads.box_weights).view(-1, c, 4), image_size)
        valid = (scores > heads.score_thresh) & torch.isfinite(boxes).all(dim=-1) & proposal_ok[:, None]
        valid &= (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        classes = torch.arange(c, device=scores.device).expand_as(scores)
        boxes, scores, classes, valid = boxes.reshape(-1, 4), scores.reshape(-1), classes.reshape(-1), valid.reshape(-1)
        kept = masked_batched_nms(boxes, scores, classes, valid, heads.nms_thresh)
        order, ok = first_kept(scores, kept, heads.detections_per_image)
        n = ok.sum().item()  # the one data-dependent size: how many detections there are
        torch._check(n >= 0)
        torch._check(n <= order.shape[0])
        order = order[:n]
        return boxes[order], scores[order], classes[order]

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        batch, scales = model.preprocess([image])
        features = model.fpn(model.backbone(batch.tensor))
        size = batch.image_sizes[0]
        proposals, ok = self._proposals(features, size)
        boxes, scores, labels = self._detections(features, proposals, ok, size)
        heads = model.roi_heads
        logits = heads.mask_head(pool_all_levels(heads.mask_pooler, features, boxes))
        masks = logits[torch.arange(boxes.shape[0], device=boxes.device), labels].float().sigmoid()
        boxes = clip_boxes(boxes / scales[0].repeat(2), tuple(image.shape[-2:]))
        return boxes, scores, labels, masks


class _NoStore(dict):
    """A cache that keeps nothing."""

    def __setitem__(self, key, value):
        pass


def export_model(model: nn.Module, example: Tensor):
    """``torch.export`` of ``ExportableMaskRCNN(model)`` at the example image's size -> ExportedProgram.

    Needs the compiled ops (``maskrcnn._C``): the pure-PyTorch twins have data-dependent loops.
    """
    if get_ext() is None:
        raise RuntimeError("export needs the compiled ops maskrcnn._C (python setup.py build_ext --inplace)")
    if example.dim() != 3:
        raise ValueError(f"export: the example image must be Tensor[C, H, W], got {tuple(example.shape)}")
    wrapper = ExportableMaskRCNN(model).eval()
    anchors = model.rpn.anchor_generator
    saved = anchors._cache
    # The anchors are traced as computed from the feature sizes (constants of the program), and
    # never stored: traced tensors must not land in the eager model's cache.
    anchors._cache = _NoStore()
    try:
        with torch.no_grad():
            return torch.export.export(wrapper, (example,), strict=False)
    finally:
        anchors._cache = saved


def save_exported(program, path: str) -> None:
    """Writes the program to ``path`` (a ``.pt2`` file) atomically."""
    check_output_path(path, "exported model")
    with atomic_open(path, "wb") as f:
        torch.export.save(program, f)


def load_exported(path: str):
    """The exported program's module: ``load_exported(p)(image) -> (boxes, scores, labels, masks)``.
    Registers the ops first (imports ``maskrcnn._C``)."""
    get_ext()
    return torch.export.load(path).module()
