"""Region Proposal Network (Ren et al. 2015) over the FPN levels P2..P6.

A shared head (3x3 conv, ReLU, then 1x1 convs for objectness and box deltas) runs on every
level. Proposals: top-k anchors per level by objectness, decoded, clipped, small boxes removed,
NMS within each (image, level) group in one ``batched_nms`` call, then the top-k per image.
Losses: anchors matched to ground truth (IoU >= fg -> object, < bg -> background, plus each GT's
best anchors), a balanced random sample per image, BCE on objectness and smooth L1 on deltas,
both normalised by ``batch_size_per_image * num_images`` (as detectron2).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.config import ModelConfig
from maskrcnn.model.anchors import AnchorGenerator
from maskrcnn.model.box_coder import decode_boxes, encode_boxes
from maskrcnn.model.matching import ignore_inside, match_boxes_batched, pad_boxes, sample_balanced_masks
from maskrcnn.ops import batched_nms, nms
from maskrcnn.structures import box_iou

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


class RPNHead(nn.Module):
    """Shared conv head. ``objectness_logits`` has A outputs and ``anchor_deltas`` 4A per cell."""

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Per level: logits ``Tensor[B, H*W*A]`` and deltas ``Tensor[B, H*W*A, 4]``, ordered (y, x, a)."""
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            lg = self.objectness_logits(t)
            b, a, h, w = lg.shape
            logits.append(lg.permute(0, 2, 3, 1).reshape(b, -1))
            dl = self.anchor_deltas(t).view(b, a, 4, h, w)
            deltas.append(dl.permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
        return logits, deltas


def rank_within_groups(groups: Tensor, num_groups: int) -> Tensor:
    """Rank of each element within its group, keeping the given order: ``Tensor[N]`` int64.

    ``groups (Tensor[N])`` must already be sorted (stable) so each group is contiguous.
    """
    counts = torch.bincount(groups, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(groups.numel(), device=groups.device) - starts[groups]


def topk_per_group(keep: Tensor, groups: Tensor, num_groups: int, k: int) -> Tuple[Tensor, Tensor]:
    """From ``keep`` (indices sorted by decreasing score) and their ``groups``, keep the first ``k``
    of each group. Returns (indices grouped by group then score, per-group counts Tensor[num_groups])."""
    order = torch.sort(groups, stable=True).indices
    keep, groups = keep[order], groups[order]
    sel = rank_within_groups(groups, num_groups) < k
    keep, groups = keep[sel], groups[sel]
    return keep, torch.bincount(groups, minlength=num_groups)


def find_top_proposals(
    logits: List[Tensor],
    deltas: List[Tensor],
    anchors: List[Tensor],
    image_sizes: Sequence[Tuple[int, int]],
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float,
    min_size: float,
    demand: Optional[Dict[str, Tensor]] = None,
) -> List[Tensor]:
    """Proposals per image, vectorised over images and levels.

    Args:
        logits: per level ``Tensor[B, N_l]``; deltas: per level ``Tensor[B, N_l, 4]``;
        anchors: per level ``Tensor[N_l, 4]``; image_sizes: ``(h, w)`` of each (resized) image.
        demand: when given, filled with what each cap was asked to hold, per image (``Tensor[B]``):
            ``pre_confident`` the most anchors of one level with objectness >= 0.5 (more than
            ``pre_nms_topk``: the cap dropped confident anchors), ``post_confident`` the proposals
            with objectness >= 0.5 left by the NMS; and, per image, the boxes of the objects the caps
            may have lost (``lost_objects``): ``pre_lost`` among the confident anchors the pre-NMS
            top-k dropped, those that no proposal left by the NMS covers; ``post_lost`` among the
            confident proposals the post-NMS top-k dropped, those that no kept proposal covers
            (lists of ``Tensor[L_i, 4]``). Confident anchors and proposals are mostly duplicates
            and background (a 360 x 360 image of 43 nuclei: ~1,600 after the NMS, ~100 of them
            uncovered), so whether a lost box is a cell is for the box head to say (``MaskRCNN``).
    Returns:
        list of ``Tensor[R_i, 4]`` boxes per image, by decreasing objectness, ``R_i <= post_nms_topk``.
    """
    B = logits[0].shape[0]
    idx, scores, levels, confident, dropped = _top_anchors(logits, deltas, anchors, image_sizes, pre_nms_topk, demand)
    boxes, valid = _decode_proposals(idx, deltas, anchors, scores, image_sizes, min_size)
    # NMS one image at a time (levels apart): its cost grows with the square of the boxes given at
    # once, and all images of a batch in one call (B x levels x pre_nms_topk boxes) made the NMS
    # kernel the largest item of a GPU training step (46 of ~125 ms at batch 8, H200 profile).
    out, after_nms, lost_pre, lost_post = [], [], [], []
    for i in range(B):  # a loop over the images of the batch
        sel = valid[i].nonzero().squeeze(1)  # one device sync per image
        b, s, lv = boxes[i, sel], scores[i, sel], levels[i, sel]
        keep = batched_nms(b, s, lv, nms_thresh)
        if demand is not None:
            after_nms.append((s[keep] >= 0).sum())
            pre = dropped[i]
            lost_pre.append(lost_objects(torch.cat([d[0] for d in pre]), torch.cat([d[1] for d in pre]), b[keep])
                            if pre else b.new_zeros((0, 4)))
            late = keep[post_nms_topk:]
            late = late[s[late] >= 0]
            lost_post.append(lost_objects(b[late], s[late], b[keep[:post_nms_topk]]))
        keep = keep[:post_nms_topk]
        out.append(b[keep])
    if demand is not None:
        demand["pre_confident"] = confident
        demand["post_confident"] = torch.stack(after_nms)
        demand["pre_lost"] = lost_pre
        demand["post_lost"] = lost_post
    return out


def _top_anchors(logits: List[Tensor], deltas: List[Tensor], anchors: List[Tensor],
                 image_sizes: Sequence[Tuple[int, int]], pre_nms_topk: int, demand: Optional[Dict[str, Tensor]]):
    """The ``pre_nms_topk`` best anchors of each level per image (levels differ in size), as indices
    into the levels' concatenation ``Tensor[B, N]``, their logits and levels; with ``demand``, also the
    most confident anchors of one level per image and (per image) the confident ones the cap dropped."""
    B = logits[0].shape[0]
    dev = logits[0].device
    all_idx, all_scores, all_levels = [], [], []
    start = 0
    confident = None
    dropped: List[List[Tuple[Tensor, Tensor]]] = [[] for _ in range(B)]  # per image: (boxes, scores)
    for lvl, lg in enumerate(logits):
        k = min(pre_nms_topk, lg.shape[1])
        scores, idx = lg.float().topk(k, dim=1)  # [B, k]
        if demand is not None:  # objectness >= 0.5 <=> logit >= 0
            n = (lg >= 0).sum(dim=1)
            confident = n if confident is None else torch.maximum(confident, n)
            if int(n.max()) > k:  # (eval only: one sync per level)
                _dropped_anchors(lg, deltas[lvl], anchors[lvl], idx, image_sizes, dropped)
        all_idx.append(idx + start)
        all_scores.append(scores)
        all_levels.append(torch.full((k,), lvl, dtype=torch.long, device=dev))
        start += lg.shape[1]
    levels = torch.cat(all_levels)[None].expand(B, -1)
    return torch.cat(all_idx, dim=1), torch.cat(all_scores, dim=1), levels, confident, dropped


def _decode_proposals(idx: Tensor, deltas: List[Tensor], anchors: List[Tensor], scores: Tensor,
                      image_sizes: Sequence[Tuple[int, int]], min_size: float) -> Tuple[Tensor, Tensor]:
    """The boxes of the anchors ``idx`` (``Tensor[B, N]``; one gather and one decode for all levels),
    clipped to their images, and which are valid (finite, wider and taller than ``min_size``)."""
    B, n = idx.shape
    d = torch.cat(deltas, dim=1).gather(1, idx[..., None].expand(B, n, 4))
    boxes = decode_boxes(d.reshape(-1, 4), torch.cat(anchors)[idx.reshape(-1)], RPN_BOX_WEIGHTS).reshape(B, n, 4)
    hw = torch.tensor(image_sizes, dtype=torch.float32, device=idx.device)  # [B, 2]
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), hw[:, None, 1:2])
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), hw[:, None, 0:1])
    boxes = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)
    valid = torch.isfinite(boxes).all(dim=-1) & torch.isfinite(scores)
    valid &= ((boxes[..., 2] - boxes[..., 0]) > min_size) & ((boxes[..., 3] - boxes[..., 1]) > min_size)
    return boxes, valid


LOST_IOU = 0.5  # a dropped box overlapping a kept one at least this much is a duplicate, not a lost object
MAX_LOST_CHECK = 20000  # the best dropped boxes checked per image and level (bounds time and memory)


def _dropped_anchors(lg: Tensor, deltas: Tensor, anchors: Tensor, top_idx: Tensor,
                     image_sizes: Sequence[Tuple[int, int]], out: List[List[Tuple[Tensor, Tensor]]]) -> None:
    """Append, per image, the decoded boxes and logits of one level's confident anchors (logit >= 0)
    that the pre-NMS top-k (``top_idx``, ``Tensor[B, k]``) dropped, at most ``MAX_LOST_CHECK``."""
    rest = lg.float().scatter(1, top_idx, float("-inf"))
    m = min(MAX_LOST_CHECK, rest.shape[1])
    s, idx = rest.topk(m, dim=1)
    for i in range(lg.shape[0]):  # a loop over the images of the batch (eval, caps reached only)
        ok = s[i] >= 0
        j = idx[i][ok]
        bx = decode_boxes(deltas[i, j], anchors[j], RPN_BOX_WEIGHTS)
        h, w = image_sizes[i]
        bx = torch.stack([bx[:, 0].clamp(0, w), bx[:, 1].clamp(0, h), bx[:, 2].clamp(0, w), bx[:, 3].clamp(0, h)], 1)
        out[i].append((bx, s[i][ok]))


def lost_objects(cand: Tensor, cand_scores: Tensor, kept: Tensor, chunk: int = 4096) -> Tensor:
    """The objects among ``cand`` (``Tensor[N, 4]``, boxes a cap dropped, ranked by ``cand_scores``)
    that no box of ``kept`` (``Tensor[K, 4]``) covers: the candidates whose IoU with every kept box
    is below ``LOST_IOU``, one box per object (NMS among them at ``LOST_IOU``): ``Tensor[L, 4]``."""
    ok = torch.isfinite(cand).all(dim=1) & (cand[:, 2] > cand[:, 0]) & (cand[:, 3] > cand[:, 1])
    cand, cand_scores = cand[ok], cand_scores[ok]
    if cand.shape[0] > MAX_LOST_CHECK:
        top = cand_scores.topk(MAX_LOST_CHECK).indices
        cand, cand_scores = cand[top], cand_scores[top]
    if kept.shape[0] and cand.shape[0]:
        covered = torch.cat([box_iou(c, kept).amax(dim=1) >= LOST_IOU for c in cand.split(chunk)])
        cand, cand_scores = cand[~covered], cand_scores[~covered]
    if cand.shape[0] == 0:
        return cand
    return cand[nms(cand, cand_scores, LOST_IOU)]


def rpn_losses(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    gt_boxes: List[Tensor],
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    batch_size_per_image: int,
    positive_fraction: float,
    smooth_l1_beta: float,
    generator: Optional[torch.Generator] = None,
    ignore_boxes: Optional[List[Tensor]] = None,
    ignore_iof_thresh: float = 0.5,
) -> Dict[str, Tensor]:
    """Objectness and box losses, for all images at once.

    Args:
        logits (Tensor[B, A]), deltas (Tensor[B, A, 4]): all levels concatenated.
        anchors (Tensor[A, 4]); gt_boxes: per image ``Tensor[G_i, 4]`` in resized-image pixels.
        generator: for the random sample (:func:`sample_balanced_masks`).
        ignore_boxes: per image ``Tensor[I_i, 4]`` ignore regions (same pixels): anchors that are
            not positive and lie inside one (IoF >= ``ignore_iof_thresh``) are not sampled
            (:func:`~maskrcnn.model.matching.ignore_inside`).
    Matching, sampling and targets run on the padded ``[B, G, A]`` batch (no loop over images);
    the result equals doing each image alone with the same random keys (tested).
    """
    B = logits.shape[0]
    gt, gt_valid = pad_boxes(gt_boxes, logits.device)
    matched, labels = match_boxes_batched(gt, gt_valid, anchors, fg_iou_thresh, bg_iou_thresh, allow_low_quality=True)
    if ignore_boxes is not None:
        ig, ig_valid = pad_boxes(ignore_boxes, logits.device)
        labels = ignore_inside(labels, anchors, ig, ig_valid, ignore_iof_thresh)
    pos, neg = sample_balanced_masks(labels, batch_size_per_image, positive_fraction, generator)
    norm = float(batch_size_per_image * B)
    b, a = torch.nonzero(pos | neg, as_tuple=True)
    loss_cls = F.binary_cross_entropy_with_logits(logits[b, a].float(), pos[b, a].float(), reduction="sum") / norm
    pb, pa = torch.nonzero(pos, as_tuple=True)
    target = encode_boxes(anchors[pa], gt[pb, matched[pb, pa]], RPN_BOX_WEIGHTS)
    loss_box = box_regression_loss(deltas[pb, pa].float(), target, smooth_l1_beta) / norm
    return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}


def box_regression_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth L1 (``beta > 0``) or L1 (``beta == 0``) over ``Tensor[P, 4]`` deltas."""
    if beta < 1e-5:
        return (pred - target).abs().sum()
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")


class RPN(nn.Module):
    """Proposal generator: head + anchors + proposal selection + (training) losses.

    ``pre_nms_topk`` is per level and per image; ``post_nms_topk`` per image; each a
    ``(train, test)`` pair.
    """

    def __init__(
        self,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        pre_nms_topk: Tuple[int, int] = (2000, 2000),
        post_nms_topk: Tuple[int, int] = (2000, 2000),
        nms_thresh: float = 0.7,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        min_size: float = 0.0,
        smooth_l1_beta: float = 1.0 / 9.0,
        ignore_iof_thresh: float = 0.5,
    ):
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.pre_nms_topk = tuple(pre_nms_topk)
        self.post_nms_topk = tuple(post_nms_topk)
        self.nms_thresh = nms_thresh
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.min_size = min_size
        self.smooth_l1_beta = smooth_l1_beta
        self.ignore_iof_thresh = ignore_iof_thresh

    @classmethod
    def from_config(cls, cfg: ModelConfig, in_channels: int, strides: Sequence[int]) -> "RPN":
        """The RPN of ``model.rpn`` with the anchors of ``model.anchors``, on FPN levels of
        ``in_channels`` channels and ``strides``."""
        r = cfg.rpn
        anchors = AnchorGenerator.from_config(cfg.anchors, strides)
        return cls(
            RPNHead(in_channels, anchors.num_anchors), anchors,
            pre_nms_topk=(r.pre_nms_topk_train, r.pre_nms_topk_test),
            post_nms_topk=(r.post_nms_topk_train, r.post_nms_topk_test),
            nms_thresh=r.nms_thresh, fg_iou_thresh=r.fg_iou_thresh, bg_iou_thresh=r.bg_iou_thresh,
            batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction,
            min_size=r.min_size, smooth_l1_beta=r.smooth_l1_beta, ignore_iof_thresh=r.ignore_iof_thresh,
        )

    def forward(
        self, features: List[Tensor], image_sizes: Sequence[Tuple[int, int]], gt_boxes: Optional[List[Tensor]] = None,
        ignore_boxes: Optional[List[Tensor]] = None, demand: Optional[Dict[str, Tensor]] = None,
    ) -> Tuple[List[Tensor], Dict[str, Tensor]]:
        """Args:
            features: P2..P6, ``Tensor[B, C, H_l, W_l]``; image_sizes: resized ``(h, w)`` per image;
            gt_boxes: per image ``Tensor[G_i, 4]`` (training only); ignore_boxes: per image
            ``Tensor[I_i, 4]`` ignore regions (training only, optional); demand (eval, optional):
            filled with what the caps were asked to hold (``find_top_proposals``).
        Returns:
            proposals (list of ``Tensor[R_i, 4]``, detached), losses (empty dict in eval mode).
        """
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(features)
        t = 0 if self.training else 1
        with torch.no_grad():
            proposals = find_top_proposals(
                [x.detach() for x in logits], [x.detach() for x in deltas], anchors, image_sizes,
                self.pre_nms_topk[t], self.post_nms_topk[t], self.nms_thresh, self.min_size,
                demand=None if self.training else demand,
            )
        losses: Dict[str, Tensor] = {}
        if self.training:
            if gt_boxes is None:
                raise ValueError("RPN: training needs gt_boxes")
            losses = rpn_losses(
                torch.cat(logits, dim=1), torch.cat(deltas, dim=1), torch.cat(anchors), gt_boxes,
                self.fg_iou_thresh, self.bg_iou_thresh, self.batch_size_per_image, self.positive_fraction,
                self.smooth_l1_beta, ignore_boxes=ignore_boxes, ignore_iof_thresh=self.ignore_iof_thresh,
            )
        return proposals, losses
