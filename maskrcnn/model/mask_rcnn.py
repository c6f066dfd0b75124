"""Mask R-CNN (He et al. 2017) with FPN: the whole model from input images to instances.

``model(images, targets)`` takes a list of ``Tensor[C, H, W]`` float images in [0, 1] of any size
(C = 1 or 3) and, in training, a list of ground-truth ``Instances`` in the same images' pixels;
it returns a dict of losses in training mode and a list of ``Instances`` in eval mode, in the
input images' pixel coordinates, with soft (probability) masks as a ``MaskList``.

Inside: resize (a scale factor, or min/max size), repeat 1 -> 3 channels if the model takes 3,
optionally map each image's intensity percentiles to [0, 1] (``normalize="percentile"``, for
12/16-bit microscopy images; ``maskrcnn.model.normalize``), normalise with ``pixel_mean`` /
``pixel_std`` (in [0, 1] units), pad to a multiple of
``size_divisibility`` -> backbone -> FPN -> RPN -> RoI heads -> detections mapped back to the
original pixels and masks pasted into crops of the original image.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.config import ConfigError, ModelConfig
from maskrcnn.model.backbone import Backbone, build_backbone
from maskrcnn.model.fpn import FPN
from maskrcnn.model.mask_head import paste_masks
from maskrcnn.model.normalize import (NORMALIZE_MODES, check_percentiles, invert_bright_ranges, normalize_by_ranges,
                                      percentile_ranges, unit_ranges)
from maskrcnn.model.roi_heads import RoIHeads
from maskrcnn.model.rpn import RPN
from maskrcnn.structures import IGNORE_LABEL, ImageList, Instances, clip_boxes


# What an eval forward with ``report_caps`` leaves in ``MaskRCNN.last_demand`` (``Tensor[B, 6]``,
# one row per image): for the RPN's pre-NMS and post-NMS top-k, the box head's best score of the
# objects they may have lost (confident anchors or proposals they dropped that no kept proposal
# covers: ``rpn.lost_objects``; 0: none); the most anchors of one FPN level and the proposals
# after the RPN's NMS with objectness >= 0.5 (what the two caps would need to keep them all); the
# detections after the box NMS (the cap keeps detections_per_image) and the best score that cap
# dropped (0: none). ``maskrcnn.inference.caps`` turns these into warnings.
DEMAND_COLUMNS = ("pre_nms", "post_nms", "pre_confident", "post_confident", "detections", "dropped_score")
CAP_KEYS = ("model.rpn.pre_nms_topk_test", "model.rpn.post_nms_topk_test", "model.roi_heads.detections_per_image")


class MaskRCNN(nn.Module):
    """Args:
        backbone, fpn, rpn, roi_heads: the stages.
        in_channels: channels the backbone takes (grayscale inputs are repeated when 3).
        pixel_mean, pixel_std: per channel (or one value), in [0, 1] units.
        min_size_train: shortest-side choices in training (one drawn per batch); ``(0,)`` keeps sizes.
        max_size_train, min_size_test, max_size_test: longest-side cap / test shortest side (0: none).
        scale: resize factor used when the min size is 0 (e.g. 2.0 to upscale small cells).
        size_divisibility: pad the batch to a multiple of this.
        channels_last: run the convolutions in channels-last memory format.
        normalize: ``"none"`` (images as read, in [0, 1]) or ``"percentile"``: each channel of each
            input image is mapped so that its ``percentile_low`` percentile goes to 0 and its
            ``percentile_high`` percentile to 1 (not clipped), before ``pixel_mean`` / ``pixel_std``.
        percentile_low, percentile_high: the percentiles (0-100) of ``normalize="percentile"``.
        invert_bright: invert each image whose background is bright (mean above 0.5 after the
            normalisation): brightfield and stained images then look like fluorescence
            (``maskrcnn.model.normalize.invert_bright_ranges``); with ``in_channels=1`` this is the
            DSB2018 winners' grayscale-and-invert input.
    """

    def __init__(
        self,
        backbone: Backbone,
        fpn: FPN,
        rpn: RPN,
        roi_heads: RoIHeads,
        in_channels: int = 3,
        pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
        pixel_std: Sequence[float] = (0.229, 0.224, 0.225),
        min_size_train: Sequence[int] = (0,),
        max_size_train: int = 0,
        min_size_test: int = 0,
        max_size_test: int = 0,
        scale: float = 1.0,
        size_divisibility: int = 32,
        channels_last: bool = False,
        normalize: str = "none",
        percentile_low: float = 1.0,
        percentile_high: float = 99.8,
        invert_bright: bool = False,
    ):
        super().__init__()
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {normalize!r}")
        check_percentiles(percentile_low, percentile_high)
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        for name, v in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
            if len(v) not in (1, in_channels):
                raise ValueError(f"{name} needs 1 or {in_channels} values, got {len(v)}: {tuple(v)}")
        if any(s <= 0 for s in pixel_std):
            raise ValueError(f"pixel_std must be positive, got {tuple(pixel_std)}")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.backbone = backbone
        self.fpn = fpn
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.in_channels = in_channels
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.min_size_train = tuple(int(s) for s in min_size_train) or (0,)
        self.max_size_train = int(max_size_train)
        self.min_size_test = int(min_size_test)
        self.max_size_test = int(max_size_test)
        self.scale = float(scale)
        self.size_divisibility = int(size_divisibility)
        self.channels_last = bool(channels_last)
        self.normalize = normalize
        self.percentile_low = float(percentile_low)
        self.percentile_high = float(percentile_high)
        self.invert_bright = bool(invert_bright)
        # Eval forwards also record what the detection caps were asked to hold (``last_demand``);
        # the Predictor switches it on (validation does not pay for it).
        self.report_caps = False
        self.last_demand: Optional[Tensor] = None
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "MaskRCNN":
        """Mask R-CNN of ``cfg`` (a ``ModelConfig``) with random weights; the stages are built in the
        order backbone, FPN, RPN, RoI heads, which fixes the random draws (and so the weights) of a seed."""
        inp = cfg.input
        try:
            backbone = build_backbone(cfg.backbone, inp.in_channels)
            fpn = FPN.from_config(cfg.fpn, backbone.out_channels)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"model.backbone/fpn: {e}") from None
        rpn = RPN.from_config(cfg, fpn.out_channels, fpn.strides)
        roi_heads = RoIHeads.from_config(cfg, fpn.out_channels, fpn.strides[:4])  # RoIs are pooled from P2..P5
        return cls(
            backbone, fpn, rpn, roi_heads, in_channels=inp.in_channels, pixel_mean=inp.pixel_mean,
            pixel_std=inp.pixel_std, min_size_train=inp.min_size_train, max_size_train=inp.max_size_train,
            min_size_test=inp.min_size_test, max_size_test=inp.max_size_test, scale=inp.scale,
            size_divisibility=inp.size_divisibility, channels_last=False,
            normalize=inp.normalize, percentile_low=inp.percentile_low, percentile_high=inp.percentile_high,
            invert_bright=inp.invert_bright,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def _padding_changes_features(self) -> bool:
        """True when the backbone or FPN normalises over whole feature maps (GroupNorm).

        A batch pads its images to the largest; GroupNorm's statistics then include the padding, so
        a small image batched with a large one is normalised mostly by zeros. On DSB2018 (images of
        256x256 to 1388x1040) one GN model scored Kaggle mAP 0.457 validated in batches of 8 (bf16)
        and 0.537 one image at a time (float32); bf16 alone moved another GN model by +0.003.
        BatchNorm in eval mode and FrozenBN use fixed statistics and are unaffected."""
        flag = getattr(self, "_pad_sensitive", None)
        if flag is None:
            flag = any(isinstance(m, nn.GroupNorm) for part in (self.backbone, self.fpn) for m in part.modules())
            self._pad_sensitive = flag
        return flag

    # ------------------------------------------------------------------- input
    def _resize_factor(self, h: int, w: int, min_size: int, max_size: int) -> float:
        if min_size <= 0:
            f = self.scale
        else:
            f = min_size / min(h, w)
        if max_size > 0 and max(h, w) * f > max_size:
            f = max_size / max(h, w)
        return f

    def _checked_input(self, images: Sequence[Tensor]) -> List[Tensor]:
        """The images as float32 on the model's device, RGB reduced to gray for a 1-channel model
        (gray inputs stay 1-channel here: they are repeated after normalisation, which is cheaper)."""
        if len(images) == 0:
            raise ValueError("MaskRCNN: got an empty list of images")
        out = []
        for i, im in enumerate(images):  # a loop over images
            if not isinstance(im, Tensor) or im.dim() != 3:
                shape = tuple(im.shape) if isinstance(im, Tensor) else type(im).__name__
                raise ValueError(f"image {i}: expected Tensor[C, H, W], got {shape}")
            if not im.is_floating_point():
                raise ValueError(f"image {i}: expected float values in [0, 1], got dtype {im.dtype}")
            c, h, w = im.shape
            if c not in (1, 3):
                raise ValueError(f"image {i}: expected 1 (grayscale) or 3 (RGB) channels, got {c}")
            if h == 0 or w == 0:
                raise ValueError(f"image {i}: empty image of size {h}x{w}")
            im = im.to(self.device, torch.float32)
            if c == 3 and self.in_channels == 1:
                im = im.mean(dim=0, keepdim=True)  # a grayscale model fed RGB: use the luminance mean
            out.append(im)
        return out

    def input_ranges(self, images: Sequence[Tensor]) -> Optional[List[Tensor]]:
        """The intensity ranges ``normalize="percentile"`` maps to [0, 1]: one ``Tensor[C, 2]``
        ``(lo, hi)`` per image (C = the image's channels after a 1-channel model's RGB -> gray), or
        None when the model does not normalise by percentiles.

        Tiled inference computes them once on the whole image and passes them to every tile's forward
        (``model(tiles, input_ranges=...)``), so that tiles are normalised as the whole image would be."""
        if self.normalize != "percentile" and not self.invert_bright:
            return None
        return self._ranges(self._checked_input(images))

    def _ranges(self, ims: Sequence[Tensor]) -> List[Tensor]:
        """The ``(lo, hi)`` of each checked image: its percentiles or ``(0, 1)``, swapped for a
        bright image when ``invert_bright``."""
        if self.normalize == "percentile":
            ranges = percentile_ranges(ims, self.percentile_low, self.percentile_high)
        else:
            ranges = unit_ranges(ims)
        return invert_bright_ranges(ims, ranges) if self.invert_bright else ranges

    def preprocess(self, images: Sequence[Tensor], input_ranges: Optional[Sequence[Tensor]] = None
                   ) -> Tuple[ImageList, Tensor]:
        """Convert channels, normalise intensities, resize, standardise and batch.

        Args:
            images: ``Tensor[C, H, W]`` float images (C = 1 or 3), any sizes.
            input_ranges: with ``normalize="percentile"`` or ``invert_bright``, ``(lo, hi)`` per channel for each image
                (``Tensor[C, 2]`` or ``Tensor[1, 2]``) to use instead of the image's own percentiles;
                ignored otherwise.
        Returns:
            ImageList of the resized images (``image_sizes`` = resized sizes), and
            scales ``Tensor[B, 2]``: ``(sx, sy)`` = resized / original size per image.

        Percentile normalisation comes before the resize (the percentiles of the image as given,
        whatever the model's scale) and is computed for the whole batch in one call.
        """
        if self.training:
            choices = self.min_size_train
            min_size = choices[int(torch.randint(len(choices), (1,)))] if len(choices) > 1 else choices[0]
            max_size = self.max_size_train
        else:
            min_size, max_size = self.min_size_test, self.max_size_test
        ims = self._checked_input(images)
        ranges = None
        if self.normalize == "percentile" or self.invert_bright:
            if input_ranges is None:
                ranges = self._ranges(ims)
            elif len(input_ranges) != len(ims):
                raise ValueError(f"MaskRCNN: {len(ims)} images but {len(input_ranges)} input ranges")
            else:
                ranges = list(input_ranges)
        out, scales = [], []
        for i, im in enumerate(ims):  # a loop over images
            if ranges is not None:
                im = normalize_by_ranges(im, ranges[i])
            c, h, w = im.shape
            if c == 1 and self.in_channels == 3:
                im = im.expand(3, h, w)
            f = self._resize_factor(h, w, min_size, max_size)
            nh, nw = max(1, int(round(h * f))), max(1, int(round(w * f)))
            if (nh, nw) != (h, w):
                im = F.interpolate(im[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
            out.append((im - self.pixel_mean) / self.pixel_std)
            scales.append((nw / w, nh / h))
        batch = ImageList.from_tensors(out, self.size_divisibility)
        if self.channels_last:
            batch = ImageList(batch.tensor.contiguous(memory_format=torch.channels_last), batch.image_sizes)
        return batch, torch.tensor(scales, dtype=torch.float32, device=self.device)

    def _check_targets(self, images: Sequence[Tensor], targets: Sequence[Instances]) -> None:
        if targets is None:
            raise ValueError("MaskRCNN: training mode needs targets (a list of Instances, one per image)")
        if len(targets) != len(images):
            raise ValueError(f"MaskRCNN: {len(images)} images but {len(targets)} targets")
        K = self.roi_heads.num_classes
        for i, (im, t) in enumerate(zip(images, targets)):
            if tuple(t.image_size) != tuple(im.shape[-2:]):
                raise ValueError(f"target {i}: image_size {t.image_size} but the image is {tuple(im.shape[-2:])}")
            if t.masks is None:
                raise ValueError(f"target {i}: ground truth needs masks (a MaskList)")
            if len(t) and (int(t.labels.min()) < IGNORE_LABEL or int(t.labels.max()) >= K):
                raise ValueError(f"target {i}: labels must be in [0, {K}) or {IGNORE_LABEL} (an ignore region), "
                                 f"got {t.labels.unique().tolist()}")

    # ----------------------------------------------------------------- forward
    def forward(self, images: Sequence[Tensor], targets: Optional[Sequence[Instances]] = None,
                input_ranges: Optional[Sequence[Tensor]] = None) -> Union[Dict[str, Tensor], List[Instances]]:
        """Training: ``dict`` of losses (loss_rpn_cls, loss_rpn_box, loss_cls, loss_box, loss_mask).
        Eval: per image ``Instances`` in the input image's pixels with scores, labels and soft masks.
        ``input_ranges``: see :meth:`preprocess` (tiles of one image normalised by the image's ranges)."""
        if self.training:
            self._check_targets(images, targets)
        elif len(images) > 1 and self._padding_changes_features():
            groups = _indices_by_size(images)
            if len(groups) > 1:  # run each size on its own: no image sees another's padding
                results: List[Optional[Instances]] = [None] * len(images)
                demand = torch.zeros(len(images), len(DEMAND_COLUMNS), device=self.device)
                for idx in groups:
                    sub = None if input_ranges is None else [input_ranges[i] for i in idx]
                    for i, r in zip(idx, self.forward([images[i] for i in idx], input_ranges=sub)):
                        results[i] = r
                    if self.last_demand is not None:
                        demand[idx] = self.last_demand
                self.last_demand = demand if self.report_caps else None
                return results
        batch, scales = self.preprocess(images, input_ranges)
        features = self.fpn(self.backbone(batch.tensor))
        if not self.training:
            demand = {} if self.report_caps else None
            proposals, _ = self.rpn(features, batch.image_sizes, demand=demand)
            dets = self.roi_heads(features, proposals, batch.image_sizes, demand=demand)
            self.last_demand = None if demand is None else self._demand_table(features, demand)
            return self.postprocess(dets, scales, [tuple(im.shape[-2:]) for im in images])
        targets = [t.to(self.device) for t in targets]
        # Ignore regions (label IGNORE_LABEL) are not objects: they only stop the anchors and
        # proposals inside them from being sampled (no loss there), so they leave the targets.
        ignore_boxes = None
        if len(targets) and bool((torch.cat([t.labels for t in targets]) == IGNORE_LABEL).any()):  # one sync
            ignore_boxes = [t.boxes[t.labels == IGNORE_LABEL].float() * scales[i].repeat(2)
                            for i, t in enumerate(targets)]
            targets = [t[torch.nonzero(t.labels != IGNORE_LABEL).squeeze(1)] for t in targets]
        gt_boxes = [t.boxes.float() * scales[i].repeat(2) for i, t in enumerate(targets)]
        extra = {} if ignore_boxes is None else {"ignore_boxes": ignore_boxes}
        proposals, losses = self.rpn(features, batch.image_sizes, gt_boxes, **extra)
        losses.update(self.roi_heads(
            features, proposals, batch.image_sizes, gt_boxes, [t.labels for t in targets],
            [t.masks for t in targets], scales, **extra,
        ))
        return losses

    def _demand_table(self, features: List[Tensor], demand: Dict) -> Tensor:
        """``last_demand`` (``Tensor[B, 6]``, ``DEMAND_COLUMNS``) from the RPN's and RoI heads' demand:
        the boxes the RPN caps may have lost are scored by the box head (is any of them a cell?)."""
        for stage in ("pre", "post"):
            demand[f"{stage}_nms"] = torch.stack([
                s.max() if s.numel() else s.new_zeros(())
                for s in self.roi_heads.box_scores(features, demand.pop(f"{stage}_lost"))])
        return torch.stack([demand[k].float() for k in DEMAND_COLUMNS], dim=1)

    def caps(self) -> Dict[str, int]:
        """The inference caps by config key (what ``last_demand`` is compared with)."""
        return {CAP_KEYS[0]: int(self.rpn.pre_nms_topk[1]), CAP_KEYS[1]: int(self.rpn.post_nms_topk[1]),
                CAP_KEYS[2]: int(self.roi_heads.detections_per_image)}

    def postprocess(self, dets, scales: Tensor, original_sizes: Sequence[Tuple[int, int]]) -> List[Instances]:
        """Map detections from resized to original pixels and paste soft masks into crops."""
        results = []
        for i, ((boxes, scores, labels, probs), size) in enumerate(zip(dets, original_sizes)):
            boxes = clip_boxes(boxes / scales[i].repeat(2), size)
            masks = paste_masks(probs, boxes, size)
            results.append(Instances(size, boxes, labels, scores, masks))
        return results

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor], mask_threshold: float = 0.5) -> List[Instances]:
        """Eval-mode forward with binary masks ``MaskList.threshold(mask_threshold)``, for notebooks.
        Restores the previous train/eval mode. Submissions and validation binarise in
        post-processing instead, at ``test.mask_thresh`` (``maskrcnn.inference.filtering``)."""
        was_training = self.training
        self.eval()
        try:
            results = self(images)
        finally:
            self.train(was_training)
        return [r.replace(masks=r.masks.threshold(float(mask_threshold))) for r in results]


def _indices_by_size(images: Sequence[Tensor]) -> List[List[int]]:
    """Indices of the images grouped by ``(H, W)``, in order of first appearance."""
    if not all(isinstance(im, Tensor) and im.dim() == 3 for im in images):
        return [list(range(len(images)))]  # preprocess() reports what is wrong
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape[-2:]), []).append(i)
    return list(groups.values())
