"""Tiled inference: images larger than what fits, or than what the model was trained on.

``tiled_predict(predict_raw, image, tile_size, overlap)`` runs ``predict_raw`` on overlapping tiles
of ``image`` (planned by ``maskrcnn.inference.tile_grid``) and stitches the instances back into
the whole image's pixels (``maskrcnn.inference.stitching``), so that a cell cut by a tile border
comes out as one cell, whole, not as two halves and not twice. Masks stay crops (``MaskList``,
origins shifted by the tile's offset): memory follows the tile and the objects, never ``H x W``
per instance. The result is what ``predict_raw`` returns for a whole image (soft masks, scores),
ready for ``maskrcnn.inference.filtering``.

Cost: the model's per-image caps (RPN proposals, ``detections_per_image``) apply to each tile, so
each tile costs at least the RoI heads' work for one image (on CPU, about as much as the backbone of a
256 x 256 tile): prefer tiles of 512 px or more, and pass ``score_thresh`` so that weak detections
are dropped per tile.

Cellpose tiles differently: its network outputs are dense (flows, cell probability), so tiles are
blended with a taper before instances are computed once on the whole field; Mask R-CNN outputs
instances per tile, which is why they are stitched at instance level here.

Intensity normalisation: a model with ``model.input.normalize: percentile`` must see tiles
normalised by the whole image's percentiles (as StarDist and Cellpose normalise before tiling), not
each tile by its own (an empty tile would be stretched noise): compute
``ranges = model.input_ranges([image])`` once and run the tiles as
``model([tile], input_ranges=ranges)``.

``image`` may be any array-like ``[C, H, W]`` that slices (a torch tensor, a numpy array or memmap):
only one tile at a time is converted to a float tensor.
"""
from __future__ import annotations

from typing import Callable, List, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from maskrcnn.inference.stitching import stitch
from maskrcnn.inference.tile_grid import plan_tiles
from maskrcnn.progress import track
from maskrcnn.structures import Instances, MaskList


def read_tile(image, x0: int, y0: int, x1: int, y1: int) -> Tensor:
    """One tile as a float tensor; 8/16-bit integer arrays are scaled to [0, 1] as ``read_image`` does."""
    tile = image[:, y0:y1, x0:x1]
    if isinstance(tile, Tensor):
        if tile.is_floating_point():
            return tile
        if tile.dtype == torch.uint8:
            return tile.float() / 255.0
        raise ValueError(f"tiled_predict: a tensor image must be float or uint8, got {tile.dtype}")
    a = np.asarray(tile)
    if a.dtype.kind == "f":
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if a.dtype in (np.uint8, np.uint16):
        return torch.from_numpy(a.astype(np.float32) / float(np.iinfo(a.dtype).max))
    raise ValueError(f"tiled_predict: image arrays must be float, uint8 or uint16, got {a.dtype}")


def shift_instances(inst: Instances, dx: int, dy: int, image_size: Tuple[int, int]) -> Instances:
    """A tile's Instances moved into the whole image's pixels (crops unchanged, origins shifted)."""
    off = torch.tensor([dx, dy], dtype=torch.long, device=inst.boxes.device)
    boxes = inst.boxes + inst.boxes.new_tensor([dx, dy, dx, dy])
    masks = MaskList(inst.masks.crops, inst.masks.origins + off.to(inst.masks.origins.device), image_size)
    return Instances(image_size, boxes, inst.labels, inst.scores, masks)


def tiled_predict(
    predict_raw: Callable[[Tensor], Instances],
    image,
    tile_size: int,
    overlap: int,
    merge: bool = True,
    merge_iou: float = 0.5,
    mask_threshold: float = 0.5,
    score_thresh: float = 0.0,
    progress: Union[bool, str] = False,
    desc: str = "tiles",
) -> Instances:
    """Predictions for ``image`` from overlapping tiles, stitched (see the module docstring).

    Args:
        predict_raw: ``predict_raw(tile (Tensor[C, h, w])) -> Instances`` in the tile's pixels with
            scores and soft masks (e.g. ``Predictor.predict_raw``, or a model's eval forward on one image).
        image: ``Tensor[C, H, W]`` (or a numpy array / memmap of that layout: read one tile at a time).
        tile_size: tile side in pixels (>= 64); an image no larger than a tile is predicted whole.
        overlap: pixels shared by neighbouring tiles (>= 0, < tile_size); at least the largest
            object's size for the ownership guarantee.
        merge: join views of one object across tiles (objects larger than the overlap, model jitter).
        merge_iou: IoU of two views' masks inside their tiles' shared region above which they are one object.
        mask_threshold: binarises soft masks for the cut test and the matching (outputs stay soft).
        score_thresh: instances scoring below it are dropped in each tile, before stitching (pass the
            lowest of ``test.score_thresh``: post-processing would drop them anyway; this keeps the
            pooled predictions small when the model's detection cap lets through many weak ones).
        progress: progress over the tiles (``maskrcnn.progress`` mode: ``bar``, on a terminal, else
            ``lines`` with an ETA; ``off``; True is ``bar``, False ``off``), labelled ``desc``.
    Returns:
        Instances in ``image``'s pixels (``image_size = (H, W)``), soft masks as crops, by decreasing score.
    """
    if len(image.shape) != 3:
        raise ValueError(f"tiled_predict: image must be [C, H, W], got shape {tuple(image.shape)}")
    H, W = int(image.shape[-2]), int(image.shape[-1])
    grid = plan_tiles((H, W), tile_size, overlap)
    tiles: List[Instances] = []
    mode = ("bar" if progress else "off") if isinstance(progress, bool) else progress
    it = track(range(len(grid)), desc, mode=mode if len(grid) > 1 else "off", unit="tile", leave=False)
    for t in it:  # a loop over tiles: only one tile's pixels and activations at a time
        x0, y0, x1, y1 = grid.window(t)
        inst = predict_raw(read_tile(image, x0, y0, x1, y1))
        if tuple(inst.image_size) != (y1 - y0, x1 - x0):
            raise ValueError(
                f"tiled_predict: predict_raw returned instances for an image of {inst.image_size}, "
                f"expected the tile's size {(y1 - y0, x1 - x0)}"
            )
        if inst.scores is None or inst.masks is None:
            raise ValueError("tiled_predict: predict_raw must return instances with scores and masks")
        if score_thresh > 0:
            inst = inst[torch.nonzero(inst.scores >= score_thresh, as_tuple=True)[0]]
        tiles.append(shift_instances(inst, x0, y0, (H, W)))
    return stitch(tiles, grid, merge=merge, merge_iou=merge_iou, mask_threshold=mask_threshold)
