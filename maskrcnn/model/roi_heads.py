"""RoI heads: multi-level RoIAlign pooling and the box head, with their losses and inference as
plain functions beside the modules, and ``RoIHeads``, which runs them and the mask head
(``maskrcnn.model.mask_head``).

Classes are ``0..K-1``; the box classifier has ``K + 1`` outputs with background LAST (index K,
as detectron2, so its COCO heads import without permutation). Box regression is class-specific
(``4K`` outputs, no background deltas).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.config import ModelConfig
from maskrcnn.model.box_coder import decode_boxes, encode_boxes
from maskrcnn.model.mask_head import MaskHead, build_mask_targets, mask_loss, mask_probabilities
from maskrcnn.model.matching import ignore_inside, match_boxes_batched, pad_boxes, sample_balanced_masks
from maskrcnn.model.rpn import box_regression_loss, rank_within_groups, topk_per_group
from maskrcnn.ops import batched_nms, roi_align
from maskrcnn.structures import MaskList


# ------------------------------------------------------------------------- pooling
def assign_fpn_levels(boxes: Tensor, min_level: int = 2, max_level: int = 5, canonical_size: float = 224.0,
                      canonical_level: int = 4) -> Tensor:
    """FPN level of each box (Lin et al. 2017, eq. 1): ``floor(k0 + log2(sqrt(area) / 224))``,
    clamped to ``[min_level, max_level]``; returned as ``Tensor[K]`` int64 offsets from ``min_level``."""
    size = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    lvl = torch.floor(canonical_level + torch.log2(size / canonical_size + 1e-8))
    return (lvl.clamp(min=min_level, max=max_level) - min_level).long()


class MultiLevelRoIPooler(nn.Module):
    """RoIAlign of boxes on the FPN level chosen by their size (P2..P5).

    Args:
        output_size: pooled size S.
        strides: strides of the pooled levels (4, 8, 16, 32).
        sampling_ratio: RoIAlign samples per bin (0: adaptive, ceil(bin size)).
    """

    def __init__(self, output_size: int, strides: Sequence[int] = (4, 8, 16, 32), sampling_ratio: int = 0,
                 canonical_size: float = 224.0, canonical_level: int = 4):
        super().__init__()
        self.output_size = int(output_size)
        self.strides = tuple(strides)
        self.sampling_ratio = int(sampling_ratio)
        self.min_level = int(round(math.log2(self.strides[0])))
        self.max_level = int(round(math.log2(self.strides[-1])))
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level

    def forward(self, features: List[Tensor], boxes: Union[List[Tensor], Tensor]) -> Tensor:
        """``features``: the pooled levels ``Tensor[B, C, H_l, W_l]``; ``boxes``: per image
        ``Tensor[R_i, 4]``, or all RoIs as ``Tensor[K, 5]`` ``(batch index, x1, y1, x2, y2)``.

        Returns:
            Tensor[K, C, S, S] in the features' dtype (bfloat16 features are sampled and accumulated
            in float32 by ``roi_align``, with float32 RoI coordinates), in the order of the boxes.
        """
        feats = features[: len(self.strides)]
        dev = feats[0].device
        if isinstance(boxes, Tensor):
            rois = boxes.float()
        else:
            batch_idx = torch.cat([torch.full((b.shape[0],), i, dtype=torch.float32, device=dev)
                                   for i, b in enumerate(boxes)])
            rois = torch.cat([batch_idx[:, None], torch.cat([b.float() for b in boxes])], dim=1)
        K = rois.shape[0]
        C = feats[0].shape[1]
        S = self.output_size
        if K == 0:
            return feats[0].new_zeros((0, C, S, S))
        levels = assign_fpn_levels(rois[:, 1:], self.min_level, self.max_level, self.canonical_size,
                                   self.canonical_level)
        # RoIs sorted by level (stable): each level pools one contiguous slice, and one host sync
        # (the counts) replaces one nonzero per level.
        order = torch.sort(levels, stable=True).indices
        counts = torch.bincount(levels, minlength=len(feats)).tolist()
        rois = rois[order]
        pooled, start = [], 0
        for f, stride, n in zip(feats, self.strides, counts):  # loop over levels, not RoIs
            if n:
                pooled.append(roi_align(f, rois[start:start + n], S, 1.0 / stride, self.sampling_ratio, aligned=True))
            start += n
        pooled = torch.cat(pooled) if len(pooled) > 1 else pooled[0]
        return torch.empty_like(pooled).index_copy_(0, order, pooled)


# ----------------------------------------------------------------------- box head
class BoxHead(nn.Module):
    """Two fully connected layers (``fc1``, ``fc2``) with ReLU on pooled RoI features."""

    def __init__(self, in_channels: int, pooler_resolution: int, fc_dim: int = 1024):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * pooler_resolution ** 2, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        for m in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)
        self.out_channels = fc_dim

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[K, C, S, S]`` -> ``Tensor[K, fc_dim]``."""
        return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))


class BoxPredictor(nn.Module):
    """``cls_score``: K + 1 logits (background last); ``bbox_pred``: 4K class-specific deltas."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


def box_losses(cls_logits: Tensor, box_deltas: Tensor, gt_classes: Tensor, proposals: Tensor,
               gt_boxes: Tensor, box_weights: Sequence[float], smooth_l1_beta: float) -> Dict[str, Tensor]:
    """Classification (cross entropy) and regression losses of sampled RoIs.

    Args:
        cls_logits (Tensor[K, C+1]), box_deltas (Tensor[K, 4C]); gt_classes (Tensor[K]) in
        ``[0, C]`` (C = background); proposals, gt_boxes (Tensor[K, 4]): each RoI and its matched GT box.
    The box loss is summed over foreground RoIs and divided by K (detectron2's normalisation).
    """
    num_classes = box_deltas.shape[1] // 4
    if gt_classes.numel() == 0:  # no RoIs at all (no proposals and no GT): zero, not NaN
        zero = cls_logits.sum() * 0.0 + box_deltas.sum() * 0.0
        return {"loss_cls": zero, "loss_box": zero}
    loss_cls = F.cross_entropy(cls_logits.float(), gt_classes, reduction="mean")
    fg = torch.nonzero(gt_classes < num_classes).squeeze(1)
    cls = gt_classes[fg]
    d = box_deltas.float().view(box_deltas.shape[0], num_classes, 4)[fg, cls]
    target = encode_boxes(proposals[fg], gt_boxes[fg], box_weights)
    loss_box = box_regression_loss(d, target, smooth_l1_beta) / max(gt_classes.numel(), 1)
    return {"loss_cls": loss_cls, "loss_box": loss_box}


def box_inference(
    cls_logits: Tensor,
    box_deltas: Tensor,
    proposals: List[Tensor],
    image_sizes: Sequence[Tuple[int, int]],
    box_weights: Sequence[float],
    score_thresh: float,
    nms_thresh: float,
    detections_per_image: int,
    demand: Optional[Dict[str, Tensor]] = None,
) -> List[Tuple[Tensor, Tensor, Tensor]]:
    """Detections per image: decode per class, clip, score threshold, per-class NMS, top-k.

    Batched over images and classes (one ``batched_nms`` call with group = image x class).
    ``demand``, when given, is filled per image (``Tensor[B]``): ``detections`` the detections
    left by the NMS (before the cap) and ``dropped_score`` the best score the cap dropped (0: none).

    Returns:
        per image ``(boxes Tensor[D, 4], scores Tensor[D], labels Tensor[D] int64)`` by decreasing score.
    """
    dev = cls_logits.device
    B = len(proposals)
    num_classes = box_deltas.shape[1] // 4
    all_props = torch.cat(proposals)
    scores = F.softmax(cls_logits.float(), dim=-1)[:, :num_classes]  # [R, C]
    boxes = decode_boxes(box_deltas, all_props, box_weights).view(-1, num_classes, 4)
    counts = [p.shape[0] for p in proposals]
    image_idx = torch.repeat_interleave(torch.arange(B, device=dev), torch.tensor(counts, device=dev))
    hw = torch.tensor(list(image_sizes), dtype=torch.float32, device=dev).reshape(B, 2)[image_idx]  # [R, 2]
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), hw[:, None, 1:2])
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), hw[:, None, 0:1])
    boxes = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)
    keep = (scores > score_thresh) & torch.isfinite(boxes).all(dim=-1)
    keep &= (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    r, c = torch.nonzero(keep, as_tuple=True)
    boxes, scores, img = boxes[r, c], scores[r, c], image_idx[r]
    kept = batched_nms(boxes, scores, img * num_classes + c, nms_thresh)
    if demand is not None:
        _detection_demand(img[kept], scores[kept], B, detections_per_image, demand)
    kept, per_image = topk_per_group(kept, img[kept], B, detections_per_image)
    out = []
    for sel in torch.split(kept, per_image.tolist()):
        out.append((boxes[sel], scores[sel], c[sel]))
    return out


def _detection_demand(img: Tensor, scores: Tensor, num_images: int, cap: int, demand: Dict[str, Tensor]) -> None:
    """``box_inference``'s demand from the NMS survivors' images and scores (by decreasing score)."""
    order = torch.sort(img, stable=True).indices
    groups = img[order]
    dropped = rank_within_groups(groups, num_images) >= cap
    demand["detections"] = torch.bincount(img, minlength=num_images)
    demand["dropped_score"] = torch.zeros(num_images, device=scores.device).scatter_reduce(
        0, groups[dropped], scores[order][dropped].float(), reduce="amax")


# --------------------------------------------------------------------- RoI heads
class RoIHeads(nn.Module):
    """Box and mask heads: sampling and losses in training, detections with soft masks in inference."""

    def __init__(
        self,
        box_pooler: MultiLevelRoIPooler,
        box_head: BoxHead,
        box_predictor: BoxPredictor,
        mask_pooler: MultiLevelRoIPooler,
        mask_head: MaskHead,
        num_classes: int,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        box_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        smooth_l1_beta: float = 0.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 1000,
        proposal_append_gt: bool = True,
        mask_inference_chunk: int = 256,
        ignore_iof_thresh: float = 0.5,
    ):
        super().__init__()
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head
        self.num_classes = num_classes
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.box_weights = tuple(box_weights)
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.proposal_append_gt = proposal_append_gt
        self.mask_inference_chunk = max(1, int(mask_inference_chunk))
        self.ignore_iof_thresh = ignore_iof_thresh

    @classmethod
    def from_config(cls, cfg: ModelConfig, in_channels: int, strides: Sequence[int]) -> "RoIHeads":
        """The heads of ``model.roi_heads`` and ``model.mask_head`` on FPN levels of ``in_channels``
        channels; RoIs are pooled from the levels of ``strides`` (P2..P5)."""
        h, m = cfg.roi_heads, cfg.mask_head
        box_pooler = MultiLevelRoIPooler(h.box_pooler_resolution, strides, h.pooler_sampling_ratio)
        box_head = BoxHead(in_channels, h.box_pooler_resolution, h.box_fc_dim)
        return cls(
            box_pooler, box_head, BoxPredictor(box_head.out_channels, h.num_classes),
            MultiLevelRoIPooler(m.pooler_resolution, strides, h.pooler_sampling_ratio),
            MaskHead.from_config(m, in_channels, h.num_classes),
            num_classes=h.num_classes, batch_size_per_image=h.batch_size_per_image,
            positive_fraction=h.positive_fraction, fg_iou_thresh=h.fg_iou_thresh, bg_iou_thresh=h.bg_iou_thresh,
            box_weights=h.bbox_reg_weights, smooth_l1_beta=h.smooth_l1_beta, score_thresh=h.score_thresh,
            nms_thresh=h.nms_thresh, detections_per_image=h.detections_per_image,
            proposal_append_gt=h.proposal_append_gt, ignore_iof_thresh=h.ignore_iof_thresh,
        )

    def sample_proposals(self, proposals: List[Tensor], gt_boxes: List[Tensor], gt_labels: List[Tensor],
                         generator: Optional[torch.Generator] = None, ignore_boxes: Optional[List[Tensor]] = None):
        """RoIs for the heads, all images at once: proposals (+ GT boxes) matched and sampled on the
        padded ``[B, G, R]`` batch.

        Proposals that are not foreground and lie inside an ignore region of ``ignore_boxes`` (per
        image ``Tensor[I_i, 4]``; IoF >= ``ignore_iof_thresh``) are not sampled: no box or class
        loss, and (never foreground) no mask loss.

        Returns:
            rois (Tensor[K, 5]) ``(image, x1, y1, x2, y2)`` in resized pixels, grouped by image;
            classes (Tensor[K]) (background = K classes); matched (Tensor[K]) GT index within the
            image; gt (Tensor[B, G, 4]) the padded GT boxes (``gt[rois[:, 0], matched]``).
        """
        dev = proposals[0].device
        if self.proposal_append_gt:
            proposals = [torch.cat([p, g.to(p.dtype)]) for p, g in zip(proposals, gt_boxes)]
        props, prop_valid = pad_boxes(proposals, dev)
        gt, gt_valid = pad_boxes(gt_boxes, dev)
        matched, labels = match_boxes_batched(gt, gt_valid, props, self.fg_iou_thresh, self.bg_iou_thresh,
                                              box_valid=prop_valid)
        if ignore_boxes is not None:
            ig, ig_valid = pad_boxes(ignore_boxes, dev)
            labels = ignore_inside(labels, props, ig, ig_valid, self.ignore_iof_thresh)
        pos, neg = sample_balanced_masks(labels, self.batch_size_per_image, self.positive_fraction, generator)
        b, r = torch.nonzero(pos | neg, as_tuple=True)
        m = matched[b, r]
        lab = torch.nn.utils.rnn.pad_sequence(list(gt_labels), batch_first=True) if gt.shape[1] else None
        cls = torch.full_like(b, self.num_classes)
        if lab is not None:
            cls = torch.where(pos[b, r], lab[b, m], cls)
        rois = torch.cat([b[:, None].to(torch.float32), props[b, r]], dim=1)
        return rois, cls, m, gt

    def forward(
        self,
        features: List[Tensor],
        proposals: List[Tensor],
        image_sizes: Sequence[Tuple[int, int]],
        gt_boxes: Optional[List[Tensor]] = None,
        gt_labels: Optional[List[Tensor]] = None,
        gt_masks: Optional[List[MaskList]] = None,
        scales: Optional[Tensor] = None,
        ignore_boxes: Optional[List[Tensor]] = None,
        demand: Optional[Dict[str, Tensor]] = None,
    ):
        """Args:
            features: P2..P5 (P6, if given, is ignored); proposals: per image ``Tensor[R_i, 4]``;
            image_sizes: resized ``(h, w)``; gt_boxes (resized pixels), gt_labels, gt_masks
            (original pixels) and scales (Tensor[B, 2] resized / original ``(sx, sy)``) in training;
            ignore_boxes (resized pixels, optional): per image ignore regions; demand (eval,
            optional): filled by ``box_inference`` (the detection cap's demand).
        Returns:
            training: dict of losses; inference: per image ``(boxes, scores, labels, mask_probs Tensor[D, M, M])``
            with boxes in resized-image pixels.
        """
        if self.training:
            return self._forward_train(features, proposals, gt_boxes, gt_labels, gt_masks, scales, ignore_boxes)
        return self._forward_infer(features, proposals, image_sizes, demand)

    @torch.no_grad()
    def box_scores(self, features: List[Tensor], boxes: List[Tensor]) -> List[Tensor]:
        """The box head's best foreground probability for each of ``boxes`` (per image
        ``Tensor[N_i, 4]``, resized pixels), without regression or NMS: ``Tensor[N_i]`` per image."""
        counts = [b.shape[0] for b in boxes]
        if sum(counts) == 0:
            return [b.new_zeros(0) for b in boxes]
        cls_logits, _ = self.box_predictor(self.box_head(self.box_pooler(features, boxes)))
        probs = F.softmax(cls_logits.float(), dim=-1)[:, : self.num_classes].amax(dim=1)
        return list(probs.split(counts))

    def _forward_train(self, features, proposals, gt_boxes, gt_labels, gt_masks, scales, ignore_boxes=None):
        rois, gt_classes, matched, gt = self.sample_proposals(proposals, gt_boxes, gt_labels,
                                                              ignore_boxes=ignore_boxes)
        x = self.box_head(self.box_pooler(features, rois))
        cls_logits, deltas = self.box_predictor(x)
        image = rois[:, 0].long()
        matched_boxes = gt[image, matched] if gt.shape[1] else torch.zeros_like(rois[:, 1:])
        losses = box_losses(cls_logits, deltas, gt_classes, rois[:, 1:], matched_boxes, self.box_weights,
                            self.smooth_l1_beta)
        fg = torch.nonzero(gt_classes < self.num_classes).squeeze(1)
        fg_rois, fg_image = rois[fg], image[fg]
        boxes_orig = fg_rois[:, 1:] / scales[fg_image].repeat(1, 2)  # in the GT masks' (original) pixels
        targets = build_mask_targets(gt_masks, fg_image, matched[fg], boxes_orig, self.mask_head.resolution)
        mask_logits = self.mask_head(self.mask_pooler(features, fg_rois))
        losses["loss_mask"] = mask_loss(mask_logits, gt_classes[fg], targets, self.mask_head.boundary_weight)
        return losses

    def _forward_infer(self, features, proposals, image_sizes, demand=None):
        x = self.box_head(self.box_pooler(features, proposals))
        cls_logits, deltas = self.box_predictor(x)
        dets = box_inference(cls_logits, deltas, proposals, image_sizes, self.box_weights, self.score_thresh,
                             self.nms_thresh, self.detections_per_image, demand=demand)
        boxes = [d[0] for d in dets]
        labels = torch.cat([d[2] for d in dets])
        counts = [b.shape[0] for b in boxes]
        # In chunks of detections: 1,000 masks at 28 x 28 with 256 channels are 800 MB per layer.
        image_idx = torch.repeat_interleave(torch.arange(len(boxes), device=labels.device),
                                            torch.tensor(counts, device=labels.device))
        all_boxes = torch.cat(boxes)
        probs = []
        for s in range(0, max(all_boxes.shape[0], 1), self.mask_inference_chunk):
            sl = slice(s, s + self.mask_inference_chunk)
            chunk_boxes = [all_boxes[sl][image_idx[sl] == i] for i in range(len(boxes))]  # loop over images
            mask_logits = self.mask_head(self.mask_pooler(features, chunk_boxes))
            probs.append(mask_probabilities(mask_logits, labels[sl]))
        probs = torch.cat(probs)
        return [(d[0], d[1], d[2], p) for d, p in zip(dets, torch.split(probs, counts))]
