"""Tiled inference: images larger than what fits, or than what the model was trained on.

``tiled_predict(predict_raw, image, tile_size, overlap)`` runs ``predict_raw`` on overlapping tiles
of ``image`` and stitches the instances back into the whole image's pixels, so that a cell cut by a
tile border comes out as one cell, whole, not as two halves and not twice. Masks stay crops
(``MaskList``, origins shifted by the tile's offset): memory follows the tile and the objects,
never ``H x W`` per instance. The result is what ``predict_raw`` returns for a whole image (soft
masks, scores), ready for ``maskrcnn.inference.filtering``.

Tiles (``TileGrid``): along each axis, ``k = ceil((n - overlap) / (tile_size - overlap))`` tiles of
``tile_size`` pixels, spread evenly from 0 to ``n`` (the first starts at 0, the last ends at ``n``),
so neighbours overlap by at least ``overlap`` pixels and all tiles have one size. An axis shorter
than ``tile_size`` is one tile. Each tile's **core** is the tile minus half of the actual overlap
on each interior side; the cores partition the image.

Stitching, in two modes:

- ``merge=False`` (ownership only): an instance is kept from the tile whose core holds the centre of
  its box. If every object is at most ``2 * (overlap // 2)`` pixels across (take ``overlap`` >= the
  largest cell), the owning tile sees the object whole (the core's margin is at least half the
  overlap), and a partial view of it in a neighbouring tile has its box centre outside that tile's
  core (the visible part is narrower than the overlap); so each object is kept exactly once, whole.
  This is the rule of StarDist's block-wise prediction (a block is "responsible" for the objects of
  its region; objects must be smaller than ``min_overlap``), here with the box centre.
- ``merge=True`` (default) also joins the views of one object across tiles, which copes with
  objects larger than the overlap and with a model that is not exactly consistent between tiles
  (a box centre one pixel either side of a core boundary would otherwise give a cell twice or not
  at all):

  1. An instance is *cut* when its binary mask reaches an interior side of its tile (within
     ``CUT_TOLERANCE`` pixels), else *whole*.
  2. Edges join instances of two overlapping tiles whose binary masks, both clipped to the two
     tiles' shared region, have IoU > ``merge_iou`` (inside that region both tiles see the same
     pixels, so two views of one object agree there; ``merge.cross_view_edges`` computes them).
  3. Whole instances are clustered NMS-like on their edges (``merge.greedy_clusters``; rank: in its
     tile's core first, then score): each cluster's seed is one object, as its tile saw it.
  4. Connected components over all edges: a component without a whole member is an object that no
     tile saw whole; its views are united (soft mask = pixel-wise max on the union of the crops,
     box = union of the boxes, score and label of the best view). Cut views in a component with
     whole members are dropped (they are partial views of those).
  5. Ownership, as in the first mode: an object is kept when the tile whose core holds its box
     centre contributed a view to its component. A lone view outside its own tile's core (a sliver
     of a cell that its owner saw whole but that did not match, or a cell the owner did not see)
     is dropped.

  With a consistent predictor the result equals the whole-image prediction for connected objects
  of any size (tested with a stub that reads objects from the image: cut objects, objects in
  overlaps, objects larger than the overlap and than a tile, empty tiles, images smaller than a
  tile, sizes that are not multiples of the stride, boxes that jitter between tiles). Instances
  whose binary mask is empty are dropped (post-processing would drop them too).

Only boxes, scores and flags are pooled over the tiles; each tile's masks stay in its own
``MaskList`` until the kept ones are gathered and re-cropped to their windows.

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

import math
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from maskrcnn.inference.merge import cross_view_edges, greedy_clusters
from maskrcnn.progress import track
from maskrcnn.structures import Instances, MaskList

# A mask within this many pixels of an interior tile side counts as cut by it: soft masks fade at
# a border, so a cut object's binary mask may stop one pixel short of it.
CUT_TOLERANCE = 1
MIN_TILE_SIZE = 64


def tile_starts(length: int, tile_size: int, overlap: int) -> List[int]:
    """Start positions of the tiles along an axis of ``length`` pixels (see the module docstring).

    Consecutive starts differ by at most ``tile_size - overlap``; the last tile ends at ``length``.
    """
    if length <= tile_size:
        return [0]
    stride = tile_size - overlap
    k = math.ceil((length - overlap) / stride)
    k = max(k, 2)
    span = length - tile_size
    # Integer spacing: floor(i * span / (k - 1)) steps by at most ceil(span / (k - 1)) <= stride.
    return [(i * span) // (k - 1) for i in range(k)]


@dataclass(frozen=True)
class TileGrid:
    """Tiles of an image of ``image_size`` (H, W): their windows and cores.

    Attributes:
        image_size (tuple[int, int]): ``(H, W)``.
        xs, ys (tuple[int, ...]): tile starts along x and y.
        tile_w, tile_h (int): tile size (``min(tile_size, W)``, ``min(tile_size, H)``).
        core_x, core_y (tuple[int, ...]): core boundaries, ``len(xs) + 1`` values from 0 to W
            (resp. H): tile column ``i`` owns ``[core_x[i], core_x[i + 1])``.
    Tile ``t = row * len(xs) + col`` covers ``[xs[col], xs[col] + tile_w) x [ys[row], ys[row] + tile_h)``.
    """

    image_size: Tuple[int, int]
    xs: Tuple[int, ...]
    ys: Tuple[int, ...]
    tile_w: int
    tile_h: int
    core_x: Tuple[int, ...]
    core_y: Tuple[int, ...]

    def __len__(self) -> int:
        return len(self.xs) * len(self.ys)

    def window(self, t: int) -> Tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of tile ``t``."""
        row, col = divmod(t, len(self.xs))
        return self.xs[col], self.ys[row], self.xs[col] + self.tile_w, self.ys[row] + self.tile_h

    def core(self, t: int) -> Tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of tile ``t``'s core."""
        row, col = divmod(t, len(self.xs))
        return self.core_x[col], self.core_y[row], self.core_x[col + 1], self.core_y[row + 1]

    def overlapping_pairs(self) -> List[Tuple[int, int]]:
        """Pairs ``(t, u)``, ``t < u``, of tiles whose windows overlap (neighbours, and more when the
        overlap exceeds half a tile)."""

        def axis(starts, size):
            return [(i, j) for i in range(len(starts)) for j in range(len(starts)) if abs(starts[j] - starts[i]) < size]

        nx = len(self.xs)
        pairs = []
        for r1, r2 in axis(self.ys, self.tile_h):
            for c1, c2 in axis(self.xs, self.tile_w):
                t, u = r1 * nx + c1, r2 * nx + c2
                if t < u:
                    pairs.append((t, u))
        return pairs

    def owner(self, points: Tensor) -> Tensor:
        """Tile ``Tensor[N]`` (int64) whose core holds each point of ``points (Tensor[N, 2])`` ``(x, y)``."""
        bx = torch.tensor(self.core_x[1:-1], dtype=points.dtype, device=points.device)
        by = torch.tensor(self.core_y[1:-1], dtype=points.dtype, device=points.device)
        col = torch.searchsorted(bx, points[:, 0].contiguous(), right=True)
        row = torch.searchsorted(by, points[:, 1].contiguous(), right=True)
        return row * len(self.xs) + col


AUTO_TILE_INPUT = 1024  # pixels at the model's input (after model.input.scale) of an automatic tile
AUTO_TILE_WHOLE = 3  # images up to this many automatic tiles on a side are first predicted whole


def auto_tile_size(cfg) -> Tuple[int, int]:
    """``(tile, limit)`` in image pixels for automatic tiling with the model of ``cfg`` (a ``Config``).

    The model learnt from crops of ``data.augment.crop_size`` (or whole images) resized by
    ``model.input.scale``, and its caps (RPN top-k, detections per image) were sized for such
    inputs. A tile is ``AUTO_TILE_INPUT`` (1024) pixels at the model's input, at least twice the
    training crop: ``max(2 * crop, 1024 / scale)``, rounded up to a multiple of 32 (the nuclei model:
    256-px crops at scale 2 -> 512-px tiles). An image longer than ``limit = 3 * tile`` on a side
    (1536 px) is tiled at once, which bounds memory by the tile; a smaller one is predicted whole,
    and tiled only when the whole image reached a detection cap (``maskrcnn.inference.caps``).
    """
    crop = max(int(v) for v in cfg.data.augment.crop_size)
    scale = float(cfg.model.input.scale) if cfg.model.input.min_size_test <= 0 else 1.0
    tile = max(2 * crop, int(math.ceil(AUTO_TILE_INPUT / scale)), MIN_TILE_SIZE * 4)
    tile = int(math.ceil(tile / 32.0) * 32)
    return tile, AUTO_TILE_WHOLE * tile


def check_tiling(tile_size: int, overlap: int) -> None:
    """Raise ValueError unless ``tile_size >= MIN_TILE_SIZE`` and ``0 <= overlap < tile_size``."""
    if int(tile_size) < MIN_TILE_SIZE:
        raise ValueError(f"tile size must be at least {MIN_TILE_SIZE} pixels, got {tile_size}")
    if not 0 <= int(overlap) < int(tile_size):
        raise ValueError(f"tile overlap must be >= 0 and below the tile size ({tile_size}), got {overlap}")


def plan_tiles(image_size: Tuple[int, int], tile_size: int, overlap: int) -> TileGrid:
    """The ``TileGrid`` of an image of ``image_size = (H, W)``."""
    check_tiling(tile_size, overlap)
    H, W = int(image_size[0]), int(image_size[1])
    if H <= 0 or W <= 0:
        raise ValueError(f"cannot tile an empty image of size {H}x{W}")

    def axis(n: int):
        starts = tile_starts(n, tile_size, overlap)
        size = min(tile_size, n)
        # Core boundary between neighbours: the middle of their actual overlap (rounded down).
        bounds = [0] + [(starts[i + 1] + starts[i] + size) // 2 for i in range(len(starts) - 1)] + [n]
        return tuple(starts), size, tuple(bounds)

    xs, tw, cx = axis(W)
    ys, th, cy = axis(H)
    return TileGrid((H, W), xs, ys, tw, th, cx, cy)


def _read_tile(image, x0: int, y0: int, x1: int, y1: int) -> Tensor:
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


def _shift(inst: Instances, dx: int, dy: int, image_size: Tuple[int, int]) -> Instances:
    """A tile's Instances moved into the whole image's pixels (crops unchanged, origins shifted)."""
    off = torch.tensor([dx, dy], dtype=torch.long, device=inst.boxes.device)
    boxes = inst.boxes + inst.boxes.new_tensor([dx, dy, dx, dy])
    masks = MaskList(inst.masks.crops, inst.masks.origins + off.to(inst.masks.origins.device), image_size)
    return Instances(image_size, boxes, inst.labels, inst.scores, masks)


def _binary(masks: MaskList, mask_threshold: float) -> Tensor:
    return masks.crops >= mask_threshold if masks.is_soft else masks.crops


def _clip_crops(crops: Tensor, origins: Tensor, region: Tuple[int, int, int, int]) -> Tensor:
    """Binary ``crops [N, h, w]`` with the pixels outside ``region`` (x0, y0, x1, y1; image pixels) cleared."""
    n, h, w = crops.shape
    x0, y0, x1, y1 = region
    ys = origins[:, 1, None] + torch.arange(h, device=crops.device)
    xs = origins[:, 0, None] + torch.arange(w, device=crops.device)
    inside = ((ys >= y0) & (ys < y1))[:, :, None] & ((xs >= x0) & (xs < x1))[:, None, :]
    return crops & inside


def _components(n: int, i: Tensor, j: Tensor) -> Tensor:
    """Connected-component label ``Tensor[n]`` (the smallest member index) of an undirected edge list."""
    lab = torch.arange(n, device=i.device)
    if i.numel() == 0:
        return lab
    while True:  # min-label propagation with pointer jumping; rounds ~ log of the component diameter
        new = lab.clone()
        new.scatter_reduce_(0, i, lab[j], reduce="amin")
        new.scatter_reduce_(0, j, lab[i], reduce="amin")
        new = new[new]
        if torch.equal(new, lab):
            return lab
        lab = new


def _union_views(views: Instances, groups: Tensor) -> Instances:
    """One object per group of ``views`` (``groups``: labels 0..K-1): soft mask = pixel-wise max on
    the union of the crop windows, box = union box, score and label of the best view."""
    dev = views.boxes.device
    K = int(groups.max()) + 1
    masks = views.masks
    _, h, w = masks.crops.shape
    org = masks.origins
    big = torch.iinfo(torch.long).max
    u0 = torch.stack([torch.full((K,), big, dtype=torch.long, device=dev).scatter_reduce(
        0, groups, org[:, c], reduce="amin") for c in (0, 1)], dim=1)
    u1 = torch.stack([torch.full((K,), -big, dtype=torch.long, device=dev).scatter_reduce(
        0, groups, org[:, c] + (w, h)[c], reduce="amax") for c in (0, 1)], dim=1)
    Wc, Hc = (int(v) for v in (u1 - u0).max(dim=0).values)
    acc = torch.zeros(K * Hc * Wc, dtype=torch.float32, device=dev)
    d = org - u0[groups]
    base = groups * (Hc * Wc) + d[:, 1] * Wc + d[:, 0]
    grid = torch.arange(h, device=dev)[:, None] * Wc + torch.arange(w, device=dev)[None, :]
    acc.scatter_reduce_(0, (base[:, None, None] + grid).reshape(-1), masks.crops.float().reshape(-1), reduce="amax")
    crops = acc.view(K, Hc, Wc).to(masks.crops.dtype)
    b = views.boxes.float()
    inf = float("inf")
    boxes = torch.stack([
        torch.full((K,), inf, device=dev).scatter_reduce(0, groups, b[:, 0], reduce="amin"),
        torch.full((K,), inf, device=dev).scatter_reduce(0, groups, b[:, 1], reduce="amin"),
        torch.full((K,), -inf, device=dev).scatter_reduce(0, groups, b[:, 2], reduce="amax"),
        torch.full((K,), -inf, device=dev).scatter_reduce(0, groups, b[:, 3], reduce="amax"),
    ], dim=1).to(views.boxes.dtype)
    s = views.scores.float()
    best_score = torch.full((K,), -inf, device=dev).scatter_reduce(0, groups, s, reduce="amax")
    # The best view of each group: the first one reaching the group's best score.
    is_best = s == best_score[groups]
    pos = torch.arange(len(views), device=dev)
    best = torch.full((K,), len(views), dtype=torch.long, device=dev).scatter_reduce(
        0, groups[is_best], pos[is_best], reduce="amin")
    return Instances(views.image_size, boxes, views.labels[best], views.scores[best],
                     MaskList(crops, u0, views.image_size))


def _gather(tiles: Sequence[Instances], starts: Tensor, idx: Tensor) -> Instances:
    """``Instances`` of the pooled indices ``idx`` (in that order), taken tile by tile.

    Tiles keep their own crop sizes until here, and the selected masks are re-cropped to their
    windows (``compact``), so one large detection somewhere pads only what is kept, not the pool."""
    tile_of = torch.searchsorted(starts, idx, right=True) - 1
    parts, where = [], []
    for t in torch.unique(tile_of).tolist():  # a loop over the tiles that hold selected instances
        sel = torch.nonzero(tile_of == t, as_tuple=True)[0]
        part = tiles[t][idx[sel] - starts[t]]
        parts.append(part.replace(masks=part.masks.compact(pad=0)))
        where.append(sel)
    out = Instances.cat(parts)
    order = torch.empty_like(idx)
    order[torch.cat(where)] = torch.arange(idx.numel(), device=idx.device)
    return out[order]


def stitch(tiles: Sequence[Instances], grid: TileGrid, merge: bool = True, merge_iou: float = 0.5,
           mask_threshold: float = 0.5) -> Instances:
    """Stitch per-tile predictions (already in the whole image's pixels) into one image's instances.

    Args:
        tiles: one ``Instances`` per tile of ``grid`` (tile order), with ``image_size`` = the whole
            image's, ``scores`` and soft (or bool) ``masks``.
        grid: the tiles.
        merge, merge_iou, mask_threshold: see the module docstring.
    Returns:
        Instances of the whole image (crop masks), sorted by decreasing score.

    Only boxes, scores and flags are pooled over all tiles; masks stay in their tiles' own
    ``MaskList`` (each its own crop size) until the kept ones are gathered.
    """
    if len(tiles) != len(grid):
        raise ValueError(f"stitch: {len(tiles)} tile predictions for a grid of {len(grid)} tiles")
    size = grid.image_size
    H, W = size
    T = len(grid)
    dev = tiles[0].boxes.device
    counts = torch.tensor([len(x) for x in tiles], dtype=torch.long, device=dev)
    starts = torch.cumsum(counts, 0) - counts
    n = int(counts.sum())
    if n == 0:
        ref = tiles[0]
        dtype = ref.masks.crops.dtype if ref.masks is not None else torch.float32
        return Instances(size, torch.zeros((0, 4), device=dev), torch.zeros(0, dtype=torch.long, device=dev),
                         torch.zeros(0, device=dev),
                         MaskList(torch.zeros((0, 1, 1), dtype=dtype, device=dev),
                                  torch.zeros((0, 2), dtype=torch.long, device=dev), size))
    tile_id = torch.repeat_interleave(torch.arange(T, device=dev), counts)
    boxes = torch.cat([x.boxes.float() for x in tiles])
    scores = torch.cat([x.scores.float() for x in tiles])
    centres = _centres(boxes)
    in_core = grid.owner(centres) == tile_id
    if not merge or T == 1:
        keep = torch.nonzero(in_core, as_tuple=True)[0]
        return _sorted(_gather(tiles, starts, keep) if keep.numel() else tiles[0][keep])

    binaries = [MaskList(_binary(x.masks, mask_threshold), x.masks.origins, size) for x in tiles]
    tight = torch.cat([b.tight_boxes() for b in binaries])
    win = torch.tensor([grid.window(t) for t in range(T)], dtype=torch.float32, device=dev)[tile_id]
    tol = CUT_TOLERANCE
    cut = (((tight[:, 0] <= win[:, 0] + tol) & (win[:, 0] > 0)) | ((tight[:, 2] >= win[:, 2] - tol) & (win[:, 2] < W))
           | ((tight[:, 1] <= win[:, 1] + tol) & (win[:, 1] > 0)) | ((tight[:, 3] >= win[:, 3] - tol) & (win[:, 3] < H)))
    empty = tight[:, 2] <= tight[:, 0]

    # 2. Edges between views of overlapping tiles, from their masks clipped to the shared region.
    ei, ej, ew = [], [], []
    for t, u in grid.overlapping_pairs():  # a loop over pairs of overlapping tiles
        a, b = grid.window(t), grid.window(u)
        region = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
        sel, parts = [], []
        for v in (t, u):
            g = torch.arange(int(starts[v]), int(starts[v] + counts[v]), device=dev)
            tb = tight[g]
            ok = (~empty[g] & (tb[:, 0] < region[2]) & (tb[:, 2] > region[0])
                  & (tb[:, 1] < region[3]) & (tb[:, 3] > region[1]))
            g = g[ok]
            sel.append(g)
            parts.append(binaries[v][g - starts[v]])
        if sel[0].numel() == 0 or sel[1].numel() == 0:
            continue
        idx = torch.cat(sel)
        # In the region's own frame, so the pixel-incidence product is region-sized, not image-sized;
        # the two tiles are the two views (numbered view-major, as idx).
        shift = torch.tensor([region[0], region[1]], dtype=torch.long, device=dev)
        size = (region[3] - region[1], region[2] - region[0])
        local = [MaskList(_clip_crops(m.crops, m.origins, region), m.origins - shift, size) for m in parts]
        i, j, iou, _ = cross_view_edges(local, merge_iou)
        ei.append(idx[i])
        ej.append(idx[j])
        ew.append(iou)
    z = torch.zeros(0, dtype=torch.long, device=dev)
    ei = torch.cat(ei) if ei else z
    ej = torch.cat(ej) if ej else z
    ew = torch.cat(ew) if ew else torch.zeros(0, device=dev)

    # 3. Whole views, clustered NMS-like: rank = in core first, then score, then pool order.
    whole = torch.nonzero(~cut & ~empty, as_tuple=True)[0]
    order = whole[torch.sort(scores[whole], descending=True, stable=True).indices]
    order = order[torch.sort((~in_core[order]).to(torch.uint8), stable=True).indices]
    rank = torch.full((n,), -1, dtype=torch.long, device=dev)
    rank[order] = torch.arange(order.numel(), device=dev)
    ww = (rank[ei] >= 0) & (rank[ej] >= 0)
    ri, rj = rank[ei[ww]], rank[ej[ww]]
    seed_rank = greedy_clusters(int(order.numel()), torch.minimum(ri, rj), torch.maximum(ri, rj), ew[ww])
    seeds = order[seed_rank == torch.arange(order.numel(), device=dev)]

    # 4. Components over all edges; those without a whole view are united.
    comp = _components(n, ei, ej)
    has_whole = torch.zeros(n, dtype=torch.bool, device=dev)
    has_whole[comp[whole]] = True
    cut_only = torch.nonzero(~has_whole[comp] & ~empty, as_tuple=True)[0]

    # 5. Ownership: keep an object when the tile owning its box centre gave a view to its component.
    member_keys = torch.unique(comp[~empty] * T + tile_id[~empty])
    kept = seeds[torch.isin(comp[seeds] * T + grid.owner(centres[seeds]), member_keys)]
    parts: List[Instances] = [_gather(tiles, starts, kept)] if kept.numel() else []
    if cut_only.numel():
        _, groups = torch.unique(comp[cut_only], return_inverse=True)
        united = _union_views(_gather(tiles, starts, cut_only), groups)
        first = torch.full((int(groups.max()) + 1,), n, dtype=torch.long, device=dev).scatter_reduce(
            0, groups, cut_only, reduce="amin")
        keep_union = torch.isin(comp[first] * T + grid.owner(_centres(united.boxes)), member_keys)
        parts.append(united[torch.nonzero(keep_union, as_tuple=True)[0]])
    if not parts:
        return tiles[0][torch.zeros(0, dtype=torch.long, device=dev)].replace(image_size=size)
    return _sorted(Instances.cat(parts))


def _centres(boxes: Tensor) -> Tensor:
    """Box centres ``Tensor[N, 2]`` ``(x, y)`` (float32) of xyxy ``boxes``."""
    b = boxes.float()
    return torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)


def _sorted(inst: Instances) -> Instances:
    if len(inst) == 0:
        return inst
    return inst[torch.sort(inst.scores, descending=True, stable=True).indices]


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
        inst = predict_raw(_read_tile(image, x0, y0, x1, y1))
        if tuple(inst.image_size) != (y1 - y0, x1 - x0):
            raise ValueError(
                f"tiled_predict: predict_raw returned instances for an image of {inst.image_size}, "
                f"expected the tile's size {(y1 - y0, x1 - x0)}"
            )
        if inst.scores is None or inst.masks is None:
            raise ValueError("tiled_predict: predict_raw must return instances with scores and masks")
        if score_thresh > 0:
            inst = inst[torch.nonzero(inst.scores >= score_thresh, as_tuple=True)[0]]
        tiles.append(_shift(inst, x0, y0, (H, W)))
    return stitch(tiles, grid, merge=merge, merge_iou=merge_iou, mask_threshold=mask_threshold)
