"""Detection caps: notice when an image's detections reached one, instead of under-counting silently.

Mask R-CNN keeps at most ``model.rpn.pre_nms_topk_test`` anchors per FPN level,
``model.rpn.post_nms_topk_test`` proposals and ``model.roi_heads.detections_per_image`` detections
per image. An image with more cells than a cap holds loses cells with no sign of it (a 3000x3000
mosaic of 3,518 DSB2018 nuclei gave 305 cells). An eval forward of ``MaskRCNN`` leaves what each
cap was asked to hold in ``model.last_demand`` (``maskrcnn.model.mask_rcnn.DEMAND_COLUMNS``);
``CapMonitor`` gathers it over the model calls of one image (models, TTA views, tiles) and says
which caps were reached:

- a top-k of the RPN, when it lost a cell: among the anchors of one level (pre-NMS) or the
  proposals after the NMS (post-NMS) with objectness >= 0.5 that the cap dropped, one that no kept
  proposal covers (IoU < 0.5) and that the box head scores at least ``score_thresh``. Confident
  anchors and proposals are mostly duplicates and background (a 360 x 360 DSB2018 image of 43
  nuclei leaves ~1,600 confident proposals after the NMS, more than the 1,000 kept, ~100 of them
  uncovered), so their count alone would warn about most images;
- the detection cap, when it dropped a detection scoring at least ``score_thresh`` (the lowest
  ``test.score_thresh``: one that post-processing would have kept).

``predict.py`` warns per image (the cap, its value, the demand, and the fix: ``--set KEY=N`` with
a value that holds the demand, or smaller tiles) and prints a summary line at the end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence

from torch import nn

from maskrcnn.model.mask_rcnn import CAP_KEYS, DEMAND_COLUMNS

WHAT = {
    CAP_KEYS[0]: "the RPN's pre-NMS top-k (anchors kept per FPN level)",
    CAP_KEYS[1]: "the RPN's post-NMS top-k (proposals kept per image)",
    CAP_KEYS[2]: "the detection cap (detections kept per image)",
}


@dataclass
class CapHit:
    """One cap reached by an image: ``calls`` of its ``total_calls`` model calls reached it;
    ``demand`` is the most any call asked of it (confident anchors or proposals, or detections),
    ``lost`` the most objects an RPN cap lost in one call, and ``dropped_score`` the best score the
    detection cap dropped (0 for the RPN caps)."""

    key: str
    cap: int
    demand: int
    calls: int
    total_calls: int
    dropped_score: float = 0.0
    lost: int = 0

    def suggestion(self) -> int:
        """A value for ``key`` that holds the demand with a margin: 1.5x, rounded up to 500."""
        return int(math.ceil(self.demand * 1.5 / 500.0) * 500)


class CapMonitor:
    """Collects the caps' demand over the model calls of one image (``reset`` between images).

    Args:
        score_thresh: the detection cap counts as reached only when it dropped a detection
            scoring at least this (the lowest ``test.score_thresh``).
    """

    def __init__(self, score_thresh: float = 0.0):
        self.score_thresh = float(score_thresh)
        self.reset()

    def reset(self) -> None:
        self._worst: Dict[str, List[float]] = {}  # key -> [cap, demand, calls, dropped score, lost]
        self.total_calls = 0

    def add(self, model: nn.Module) -> None:
        """Record the last eval forward of ``model`` (every image of its batch is one call);
        models without ``last_demand`` (another model API) are not counted."""
        demand = getattr(model, "last_demand", None)
        caps = getattr(model, "caps", None)
        if demand is None or not callable(caps):
            return
        rows = demand.detach().float().cpu().tolist()
        col = {name: i for i, name in enumerate(DEMAND_COLUMNS)}
        for key, cap in caps().items():
            for row in rows:
                if key == CAP_KEYS[2]:
                    dropped, lost = row[col["dropped_score"]], 0
                    reached, need = dropped > 0 and dropped >= self.score_thresh, row[col["detections"]]
                else:
                    stage = "pre" if key == CAP_KEYS[0] else "post"
                    dropped, lost = row[col[f"{stage}_nms"]], 0
                    reached, need = dropped > 0 and dropped >= self.score_thresh, row[col[f"{stage}_confident"]]
                w = self._worst.setdefault(key, [cap, 0, 0, 0.0, 0])
                w[0] = max(w[0], cap)
                if reached:
                    w[1], w[2], w[3], w[4] = max(w[1], need), w[2] + 1, max(w[3], dropped), max(w[4], lost)
        self.total_calls += len(rows)

    def hits(self) -> List[CapHit]:
        """The caps reached since ``reset``, in ``CAP_KEYS`` order."""
        return [CapHit(k, int(w[0]), int(w[1]), int(w[2]), self.total_calls, float(w[3]), int(w[4]))
                for k, w in sorted(self._worst.items(), key=lambda kv: CAP_KEYS.index(kv[0])) if w[2] > 0]


def cap_warning(image_id: str, hits: Sequence[CapHit], tiled: bool, tile_size: int = 0) -> str:
    """The warning of one image whose detections reached caps: which, how far, and the fix."""
    parts = []
    for h in hits:
        if h.key == CAP_KEYS[2]:
            need = f"{h.demand:,} detections after NMS, the best one dropped scoring {h.dropped_score:.2f}"
        elif h.key == CAP_KEYS[0]:
            need = (f"an anchor it dropped that no kept proposal covers scores {h.dropped_score:.2f} as a cell; "
                    f"up to {h.demand:,} anchors of one level with objectness >= 0.5")
        else:
            need = (f"a proposal it dropped that no kept one covers scores {h.dropped_score:.2f} as a cell; "
                    f"{h.demand:,} proposals with objectness >= 0.5 after NMS")
        calls = f" in {h.calls} of {h.total_calls} model calls" if h.total_calls > 1 else ""
        parts.append(f"{WHAT[h.key]} {h.key}={h.cap} was reached{calls} ({need})")
    fixes = " ".join(f"--set {h.key}={h.suggestion()}" for h in hits)
    tiles = (f", or smaller tiles (--tile {max(256, tile_size // 2)})" if tiled and tile_size > 256
             else "" if tiled else ", or tiles (--tile 512)")
    return (f"warning: {image_id}: cells may be missing: " + "; ".join(parts)
            + f". Raise the cap: {fixes}{tiles}")


def caps_summary(per_image: Dict[str, Sequence[str]], num_images: int) -> str:
    """The end-of-run line: how many images reached which cap (``per_image``: image -> the config
    keys of the caps it reached, ``CapHit.key``)."""
    counts: Dict[str, int] = {}
    for keys in per_image.values():
        for k in keys:
            counts[k] = counts.get(k, 0) + 1
    which = ", ".join(f"{k} in {n} image(s)" for k, n in sorted(counts.items(), key=lambda kv: CAP_KEYS.index(kv[0])))
    return (f"predict: {len(per_image)} of {num_images} image(s) reached a detection cap ({which}); "
            f"cells may be missing there (see the warnings above for the fix)")
