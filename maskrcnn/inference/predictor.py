"""Predictor: one or more models x test-time views -> merged soft predictions for one image.

Every (model, view) pair is one "view" of the merge (``maskrcnn.inference.merge``), so TTA and
ensembles of checkpoints (different backbones or configs allowed: each model normalises and
resizes its input itself) share one code path.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from maskrcnn.config import ConfigError, TestConfig
from maskrcnn.device import resolve_device
from maskrcnn.inference.caps import CapHit, CapMonitor
from maskrcnn.inference.merge import merge_instances
from maskrcnn.inference.filtering import filter_predictions
from maskrcnn.inference.tta import View, parse_tta
from maskrcnn.structures import Instances, MaskList


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_min_views(min_views: int, num_models: int, num_views: int) -> None:
    """ConfigError unless 1 <= ``min_views`` <= ``num_models * num_views`` (a merged object must be
    seen in at least that many views: more than there are would keep nothing)."""
    if not 1 <= int(min_views) <= num_models * num_views:
        raise ConfigError(
            f"test.tta_min_views (--min-views) is {min_views} but must be between 1 and the number of views "
            f"({num_models} model(s) x {num_views} TTA view(s) = {num_models * num_views})"
        )


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
        tile_size, tile_overlap: images larger than ``tile_size`` pixels on a side are predicted in
            overlapping tiles (``maskrcnn.inference.tiling``; 0: never), each tile through every
            model and view and merged, then the tiles stitched. Models that normalise by percentiles
            see each tile normalised by the whole image's percentiles (``input_ranges``).
        tile_score_thresh: instances below it are dropped in each tile before stitching (the lowest
            ``test.score_thresh``: post-processing would drop them anyway); also the score from
            which a detection dropped by the detection cap counts (``maskrcnn.inference.caps``).
        auto_tile: ``(tile, limit)`` when ``tile_size`` is 0 (``auto_tile_size``): an image longer
            than ``limit`` on a side is predicted in tiles of ``tile``; one longer than ``tile``
            whose whole-image prediction reached a detection cap is predicted again in tiles.
            ``(0, 0)``: whole images.
        tile_progress: how progress over the tiles of one image is shown (``maskrcnn.progress``
            modes: ``off``, ``bar``, ``lines``).

    ``last_timing`` holds the seconds of the last call: ``{"model": .., "merge": ..}``;
    ``last_caps`` the detection caps it reached (``CapHit`` list, empty: none) and ``last_tiles``
    how it was tiled (``(tile size, number of tiles, why)``, or None for a whole image).
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
        tile_size: int = 0,
        tile_overlap: int = 64,
        tile_score_thresh: float = 0.0,
        auto_tile: Tuple[int, int] = (0, 0),
        tile_progress: str = "off",
    ):
        if isinstance(models, nn.Module):
            models = [models]
        if len(models) == 0:
            raise ValueError("Predictor needs at least one model")
        self.device = resolve_device(device)
        self.models = [m.to(self.device).eval() for m in models]
        for m in self.models:  # MaskRCNN: record what the detection caps were asked to hold
            if hasattr(m, "report_caps"):
                m.report_caps = True
        self.views: List[View] = parse_tta(tta)
        self.num_views = len(self.models) * len(self.views)
        check_min_views(min_views, len(self.models), len(self.views))
        self.merge_iou = float(merge_iou)
        self.min_views = int(min_views)
        self.mask_threshold = (float(mask_threshold) if isinstance(mask_threshold, (int, float))
                               else tuple(float(t) for t in mask_threshold))
        self.batch_size = max(1, int(batch_size))
        self.output_device = torch.device(output_device)
        if amp not in _AMP:
            raise ConfigError(f"amp must be one of {', '.join(repr(a) for a in _AMP)}, got {amp!r}")
        self.amp = amp
        if tile_size:
            from maskrcnn.inference.tile_grid import check_tiling

            check_tiling(int(tile_size), int(tile_overlap))
        self.tile_size, self.tile_overlap = int(tile_size), int(tile_overlap)
        self.tile_score_thresh = float(tile_score_thresh)
        self.auto_tile = (int(auto_tile[0]), int(auto_tile[1])) if auto_tile and auto_tile[0] else (0, 0)
        if self.auto_tile[0]:
            from maskrcnn.inference.tile_grid import check_tiling

            check_tiling(self.auto_tile[0], int(tile_overlap))
        self.tile_progress = tile_progress
        self.tile_desc = "tiles"
        self.caps = CapMonitor(self.tile_score_thresh)
        self.last_caps: List[CapHit] = []
        self.last_tiles: Optional[Tuple[int, int, str]] = None
        self.last_timing: Dict[str, float] = {}

    @torch.no_grad()
    def predict_views(self, image: Tensor, input_ranges: Optional[Sequence[Optional[Tensor]]] = None
                      ) -> List[Instances]:
        """Predictions of every (model, view), each mapped back to ``image``'s pixels.

        Args:
            image (Tensor[C, H, W]): float in [0, 1].
            input_ranges: per model, the ``Tensor[C, 2]`` intensity range its percentile
                normalisation uses instead of ``image``'s own (a tile of a larger image), or None.
        Returns:
            list of ``len(models) * len(views)`` Instances (model-major), soft masks, on ``self.device``.
        """
        if image.dim() != 3:
            raise ValueError(f"predict: image must be [C, H, W], got shape {tuple(image.shape)}")
        size = (int(image.shape[-2]), int(image.shape[-1]))
        image = image.to(self.device, torch.float32)
        out: List[Instances] = []
        for k, model in enumerate(self.models):
            r = None if input_ranges is None else input_ranges[k]
            for s in range(0, len(self.views), self.batch_size):
                views = self.views[s:s + self.batch_size]
                # a range per channel holds for every flip, rotation and scale of the image
                extra = {} if r is None else {"input_ranges": [r] * len(views)}
                with torch.autocast(self.device.type, dtype=_AMP[self.amp], enabled=bool(self.amp)):
                    preds = model([v.apply_image(image) for v in views], **extra)
                self.caps.add(model)
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
        side = max(image.shape[-2:]) if image.dim() == 3 else 0
        self.caps.reset()
        self.last_tiles = None
        if self.tile_size and side > self.tile_size:
            return self._predict_tiled(image, self.tile_size, "--tile")
        tile, limit = self.auto_tile
        if tile and side > limit:
            return self._predict_tiled(image, tile, f"auto: longer than {limit} px")
        self.last_timing = {"model": 0.0, "merge": 0.0}
        out = self._merged(image).to(self.output_device)
        self.last_caps = self.caps.hits()
        if tile and side > tile and self.last_caps:  # the whole image was too full for the caps
            timing = self.last_timing
            self.caps.reset()
            out = self._predict_tiled(image, tile, "auto: a detection cap was reached on the whole image")
            self.last_timing = {k: timing[k] + self.last_timing[k] for k in timing}
        return out

    def _merged(self, image: Tensor, input_ranges: Optional[Sequence[Optional[Tensor]]] = None) -> Instances:
        """Every (model, view) of ``image`` merged; adds the seconds to ``last_timing``."""
        t0 = time.perf_counter()
        views = self.predict_views(image, input_ranges)
        _sync(self.device)
        t1 = time.perf_counter()
        merged = merge_instances(views, self.merge_iou, self.min_views, self.mask_threshold, self.num_views)
        _sync(self.device)
        t2 = time.perf_counter()
        self.last_timing["model"] += t1 - t0
        self.last_timing["merge"] += t2 - t1
        return merged

    def _whole_image_ranges(self, image: Tensor) -> List[Optional[Tensor]]:
        """Per model, the intensity range of ``image`` its percentile normalisation would use
        (``MaskRCNN.input_ranges``), or None (no percentile normalisation, or another model API)."""
        out: List[Optional[Tensor]] = []
        for m in self.models:
            fn = getattr(m, "input_ranges", None)
            r = fn([image]) if callable(fn) else None
            out.append(None if r is None else r[0])
        return out

    def _predict_tiled(self, image: Tensor, tile_size: int, why: str) -> Instances:
        """``predict_raw`` of an image larger than a tile: each tile merged over models and views,
        the tiles stitched (``tiled_predict``; its time counts as merge)."""
        from maskrcnn.inference.tile_grid import plan_tiles
        from maskrcnn.inference.tiling import tiled_predict

        t0 = time.perf_counter()
        self.last_timing = {"model": 0.0, "merge": 0.0}
        ranges = self._whole_image_ranges(image.to(self.device, torch.float32))
        thr = self.mask_threshold if isinstance(self.mask_threshold, float) else min(self.mask_threshold)
        out = tiled_predict(lambda tile: self._merged(tile, ranges), image, tile_size, self.tile_overlap,
                            merge_iou=self.merge_iou, mask_threshold=thr, score_thresh=self.tile_score_thresh,
                            progress=self.tile_progress, desc=self.tile_desc)
        self.last_tiles = (tile_size, len(plan_tiles(tuple(image.shape[-2:]), tile_size, self.tile_overlap)), why)
        self.last_caps = self.caps.hits()
        out = out.to(self.output_device)
        _sync(self.device)
        inside = self.last_timing["model"] + self.last_timing["merge"]
        self.last_timing["merge"] += time.perf_counter() - t0 - inside  # stitching
        return out

    def predict(self, image: Tensor, test_cfg: TestConfig) -> Instances:
        """``filter_predictions(predict_raw(image), test_cfg)``: final bool masks, no overlaps."""
        return filter_predictions(self.predict_raw(image), test_cfg)


_AMP = {"": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_predictor(models: Union[nn.Module, Sequence[nn.Module]], test_cfg: TestConfig, **runtime) -> Predictor:
    """The Predictor of ``test_cfg``: its ``tta`` views, ``merge_iou``, ``tta_min_views`` and
    ``mask_thresh`` (matching threshold per class), ``tile_size`` / ``tile_overlap`` (tiles, with the
    lowest ``score_thresh`` applied per tile). ``runtime``: where and how it runs
    (``device``, ``batch_size``, ``output_device``, ``amp``), which no config holds."""
    return Predictor(models, tta=test_cfg.tta, merge_iou=test_cfg.merge_iou, min_views=test_cfg.tta_min_views,
                     mask_threshold=test_cfg.mask_thresh, tile_size=test_cfg.tile_size,
                     tile_overlap=test_cfg.tile_overlap, tile_score_thresh=min(test_cfg.score_thresh), **runtime)


def _as_soft(inst: Instances) -> Instances:
    """Model output with float32 boxes, scores and soft masks (bool masks become 0/1)."""
    if inst.scores is None or inst.masks is None:
        raise ValueError("model output lacks scores or masks; is the model in eval mode?")
    m = inst.masks
    return Instances(inst.image_size, inst.boxes.float(), inst.labels, inst.scores.float(),
                     MaskList(m.crops.float(), m.origins, m.image_size))
