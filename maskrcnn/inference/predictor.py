"""Predictor: one or more models x test-time views -> merged soft predictions for one image.

Every (model, view) pair is one "view" of the merge (``maskrcnn.inference.merge``), so TTA and
ensembles of checkpoints (different backbones or configs allowed: each model normalises and
resizes its input itself) share one code path.
"""
from __future__ import annotations

import time
from typing import Dict, List, Sequence, Union

import torch
from torch import Tensor, nn

from maskrcnn.config import TestConfig
from maskrcnn.device import resolve_device
from maskrcnn.inference.merge import merge_instances
from maskrcnn.inference.postprocess import postprocess
from maskrcnn.inference.tta import View, parse_tta
from maskrcnn.structures import Instances, MaskList


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Predictor:
    """Runs ``models`` on every TTA view of an image and merges the predictions at mask level.

    Args:
        models: one model or a sequence (model API: eval-mode ``model(list[Tensor[C, H, W]])`` ->
            ``list[Instances]`` with scores and soft masks in the input image's pixels).
        tta: view specs (``maskrcnn.inference.tta``), e.g. ``("hflip", "rot90", "scale=1.25")``;
            the identity view is always included.
        merge_iou: mask IoU above which instances of two views are the same object.
        min_views: keep merged objects seen in at least this many of the ``len(models) * len(views)`` views.
        device: where the models run and the merge happens ("auto": cuda when available).
        mask_threshold: binarises soft masks for matching views (the merged masks stay soft): one
            value, or one per class (``test.mask_thresh``), each instance at its own class's value.
        batch_size: views of one image run through a model together (more memory, faster on GPU).
        output_device: where ``predict_raw`` returns its Instances.
        amp: ``""`` (float32), ``"bf16"`` or ``"fp16"``: autocast the models' forward (GPU); their
            outputs are cast back to float32 before the merge.

    ``last_timing`` holds the seconds of the last call: ``{"model": .., "merge": ..}``.
    """

    def __init__(
        self,
        models: Union[nn.Module, Sequence[nn.Module]],
        tta: Union[str, Sequence[str]] = (),
        merge_iou: float = 0.5,
        min_views: int = 1,
        device: Union[str, torch.device, None] = "auto",
        mask_threshold: Union[float, Sequence[float]] = 0.5,
        batch_size: int = 1,
        output_device: Union[str, torch.device] = "cpu",
        amp: str = "",
    ):
        if isinstance(models, nn.Module):
            models = [models]
        if len(models) == 0:
            raise ValueError("Predictor needs at least one model")
        self.device = resolve_device(device)
        self.models = [m.to(self.device).eval() for m in models]
        self.views: List[View] = parse_tta(tta)
        self.num_views = len(self.models) * len(self.views)
        if not 1 <= int(min_views) <= self.num_views:
            raise ValueError(
                f"min_views={min_views} must be between 1 and the number of views ({len(self.models)} model(s) x "
                f"{len(self.views)} TTA view(s) = {self.num_views})"
            )
        self.merge_iou = float(merge_iou)
        self.min_views = int(min_views)
        self.mask_threshold = (float(mask_threshold) if isinstance(mask_threshold, (int, float))
                               else tuple(float(t) for t in mask_threshold))
        self.batch_size = max(1, int(batch_size))
        self.output_device = torch.device(output_device)
        if amp not in _AMP:
            raise ValueError(f"amp must be one of {', '.join(repr(a) for a in _AMP)}, got {amp!r}")
        self.amp = amp
        self.last_timing: Dict[str, float] = {}

    @torch.no_grad()
    def predict_views(self, image: Tensor) -> List[Instances]:
        """Predictions of every (model, view), each mapped back to ``image``'s pixels.

        Args:
            image (Tensor[C, H, W]): float in [0, 1].
        Returns:
            list of ``len(models) * len(views)`` Instances (model-major), soft masks, on ``self.device``.
        """
        if image.dim() != 3:
            raise ValueError(f"predict: image must be [C, H, W], got shape {tuple(image.shape)}")
        size = (int(image.shape[-2]), int(image.shape[-1]))
        image = image.to(self.device, torch.float32)
        out: List[Instances] = []
        for model in self.models:
            for s in range(0, len(self.views), self.batch_size):
                views = self.views[s:s + self.batch_size]
                with torch.autocast(self.device.type, dtype=_AMP[self.amp], enabled=bool(self.amp)):
                    preds = model([v.apply_image(image) for v in views])
                for v, p in zip(views, preds):
                    out.append(v.invert(_as_soft(p), size))
        return out

    @torch.no_grad()
    def predict_raw(self, image: Tensor) -> Instances:
        """Merged soft predictions for ``image (Tensor[C, H, W])`` (float in [0, 1]).

        Returns:
            Instances in the image's pixels with ``scores`` (fused: mean over views, a missing view
            counting 0), ``labels``, ``boxes`` and soft ``masks``; one view is returned unmerged.
        """
        t0 = time.perf_counter()
        views = self.predict_views(image)
        _sync(self.device)
        t1 = time.perf_counter()
        merged = merge_instances(views, self.merge_iou, self.min_views, self.mask_threshold, self.num_views)
        merged = merged.to(self.output_device)
        _sync(self.device)
        t2 = time.perf_counter()
        self.last_timing = {"model": t1 - t0, "merge": t2 - t1}
        return merged

    def predict(self, image: Tensor, test_cfg: TestConfig) -> Instances:
        """``postprocess(predict_raw(image), test_cfg)``: final bool masks, no overlaps."""
        return postprocess(self.predict_raw(image), test_cfg)


_AMP = {"": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_predictor(models: Union[nn.Module, Sequence[nn.Module]], test_cfg: TestConfig, **runtime) -> Predictor:
    """The Predictor of ``test_cfg``: its ``tta`` views, ``merge_iou``, ``tta_min_views`` and
    ``mask_thresh`` (matching threshold per class). ``runtime``: where and how it runs
    (``device``, ``batch_size``, ``output_device``, ``amp``), which no config holds."""
    return Predictor(models, tta=test_cfg.tta, merge_iou=test_cfg.merge_iou, min_views=test_cfg.tta_min_views,
                     mask_threshold=test_cfg.mask_thresh, **runtime)


def _as_soft(inst: Instances) -> Instances:
    """Model output with float32 boxes, scores and soft masks (bool masks become 0/1)."""
    if inst.scores is None or inst.masks is None:
        raise ValueError("model output lacks scores or masks; is the model in eval mode?")
    m = inst.masks
    return Instances(inst.image_size, inst.boxes.float(), inst.labels, inst.scores.float(),
                     MaskList(m.crops.float(), m.origins, m.image_size))
