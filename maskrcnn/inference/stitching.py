"""Stitching: per-tile predictions (already in the whole image's pixels) -> one image's instances.

``stitch(tiles, grid)`` keeps each object once, whole, from the tiles of a ``TileGrid``
(``maskrcnn.inference.tile_grid``), in two modes:

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
     ``CUT_TOLERANCE`` pixels), else *whole* (``_cut_views``).
  2. Edges join instances of two overlapping tiles whose binary masks, both clipped to the two
     tiles' shared region, have IoU > ``merge_iou`` (inside that region both tiles see the same
     pixels, so two views of one object agree there; ``merge.cross_view_edges`` computes them;
     ``_cross_tile_edges``).
  3. Whole instances are clustered NMS-like on their edges (``merge.greedy_clusters``; rank: in its
     tile's core first, then score): each cluster's seed is one object, as its tile saw it
     (``_whole_view_seeds``).
  4. Connected components over all edges: a component without a whole member is an object that no
     tile saw whole; its views are united (soft mask = pixel-wise max on the union of the crops,
     box = union of the boxes, score and label of the best view; ``_union_views``). Cut views in a
     component with whole members are dropped (they are partial views of those).
  5. Ownership, as in the first mode: an object is kept when the tile whose core holds its box
     centre contributed a view to its component. A lone view outside its own tile's core (a sliver
     of a cell that its owner saw whole but that did not match, or a cell the owner did not see)
     is dropped (``_owned_objects``).

  With a consistent predictor the result equals the whole-image prediction for connected objects
  of any size (tested with a stub that reads objects from the image: cut objects, objects in
  overlaps, objects larger than the overlap and than a tile, empty tiles, images smaller than a
  tile, sizes that are not multiples of the stride, boxes that jitter between tiles). Instances
  whose binary mask is empty are dropped (post-processing would drop them too).

Only boxes, scores and flags are pooled over the tiles; each tile's masks stay in its own
``MaskList`` until the kept ones are gathered and re-cropped to their windows.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from maskrcnn.inference.merge import cross_view_edges, greedy_clusters, union_windows
from maskrcnn.inference.tile_grid import TileGrid
from maskrcnn.structures import Instances, MaskList

# A mask within this many pixels of an interior tile side counts as cut by it: soft masks fade at
# a border, so a cut object's binary mask may stop one pixel short of it.
CUT_TOLERANCE = 1


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
    T = len(grid)
    dev = tiles[0].boxes.device
    counts = torch.tensor([len(x) for x in tiles], dtype=torch.long, device=dev)
    starts = torch.cumsum(counts, 0) - counts
    n = int(counts.sum())
    if n == 0:
        return _no_instances(tiles[0], size)
    tile_id = torch.repeat_interleave(torch.arange(T, device=dev), counts)
    boxes = torch.cat([x.boxes.float() for x in tiles])
    scores = torch.cat([x.scores.float() for x in tiles])
    centres = box_centres(boxes)
    in_core = grid.owner(centres) == tile_id
    if not merge or T == 1:
        keep = torch.nonzero(in_core, as_tuple=True)[0]
        return _sorted(_gather(tiles, starts, keep) if keep.numel() else tiles[0][keep])

    binaries = [MaskList(_binary(x.masks, mask_threshold), x.masks.origins, size) for x in tiles]
    tight = torch.cat([b.tight_boxes() for b in binaries])
    cut = _cut_views(tight, grid, tile_id)
    empty = tight[:, 2] <= tight[:, 0]
    ei, ej, ew = _cross_tile_edges(grid, binaries, tight, empty, starts, counts, merge_iou)
    whole = torch.nonzero(~cut & ~empty, as_tuple=True)[0]
    seeds = _whole_view_seeds(whole, scores, in_core, ei, ej, ew)
    comp = _components(n, ei, ej)
    return _owned_objects(tiles, grid, starts, tile_id, centres, comp, whole, seeds, empty)


def _no_instances(ref: Instances, size: Tuple[int, int]) -> Instances:
    """Empty instances of an image of ``size`` with masks of ``ref``'s dtype."""
    dev = ref.boxes.device
    dtype = ref.masks.crops.dtype if ref.masks is not None else torch.float32
    return Instances.empty(size, dev, with_scores=True).replace(masks=MaskList.empty(size, dev, dtype))


def _cut_views(tight: Tensor, grid: TileGrid, tile_id: Tensor) -> Tensor:
    """Step 1: ``bool[N]``, the views whose binary mask (``tight`` box) reaches an interior side of its tile."""
    H, W = grid.image_size
    win = torch.tensor([grid.window(t) for t in range(len(grid))], dtype=torch.float32, device=tile_id.device)[tile_id]
    tol = CUT_TOLERANCE
    return (((tight[:, 0] <= win[:, 0] + tol) & (win[:, 0] > 0)) | ((tight[:, 2] >= win[:, 2] - tol) & (win[:, 2] < W))
            | ((tight[:, 1] <= win[:, 1] + tol) & (win[:, 1] > 0)) | ((tight[:, 3] >= win[:, 3] - tol) & (win[:, 3] < H)))


def _cross_tile_edges(grid: TileGrid, binaries: Sequence[MaskList], tight: Tensor, empty: Tensor, starts: Tensor,
                      counts: Tensor, merge_iou: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Step 2: edges ``(i, j, iou)`` between views of overlapping tiles (pooled indices), from their
    masks clipped to the two tiles' shared region."""
    dev = starts.device
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
        region_size = (region[3] - region[1], region[2] - region[0])
        local = [MaskList(_clip_crops(m.crops, m.origins, region), m.origins - shift, region_size) for m in parts]
        i, j, iou, _ = cross_view_edges(local, merge_iou)
        ei.append(idx[i])
        ej.append(idx[j])
        ew.append(iou)
    z = torch.zeros(0, dtype=torch.long, device=dev)
    return (torch.cat(ei) if ei else z, torch.cat(ej) if ej else z,
            torch.cat(ew) if ew else torch.zeros(0, device=dev))


def _whole_view_seeds(whole: Tensor, scores: Tensor, in_core: Tensor, ei: Tensor, ej: Tensor, ew: Tensor) -> Tensor:
    """Step 3: the seeds (pooled indices) of the whole views clustered NMS-like on their edges;
    rank = in core first, then score, then pool order."""
    n = scores.shape[0]
    dev = scores.device
    order = whole[torch.sort(scores[whole], descending=True, stable=True).indices]
    order = order[torch.sort((~in_core[order]).to(torch.uint8), stable=True).indices]
    rank = torch.full((n,), -1, dtype=torch.long, device=dev)
    rank[order] = torch.arange(order.numel(), device=dev)
    ww = (rank[ei] >= 0) & (rank[ej] >= 0)
    ri, rj = rank[ei[ww]], rank[ej[ww]]
    seed_rank = greedy_clusters(int(order.numel()), torch.minimum(ri, rj), torch.maximum(ri, rj), ew[ww])
    return order[seed_rank == torch.arange(order.numel(), device=dev)]


def _owned_objects(tiles: Sequence[Instances], grid: TileGrid, starts: Tensor, tile_id: Tensor, centres: Tensor,
                   comp: Tensor, whole: Tensor, seeds: Tensor, empty: Tensor) -> Instances:
    """Steps 4 and 5: the seeds and the united cut-only components that the tile owning their box
    centre contributed a view to, by decreasing score."""
    n = comp.numel()
    T = len(grid)
    dev = comp.device
    has_whole = torch.zeros(n, dtype=torch.bool, device=dev)
    has_whole[comp[whole]] = True
    cut_only = torch.nonzero(~has_whole[comp] & ~empty, as_tuple=True)[0]
    member_keys = torch.unique(comp[~empty] * T + tile_id[~empty])
    kept = seeds[torch.isin(comp[seeds] * T + grid.owner(centres[seeds]), member_keys)]
    parts: List[Instances] = [_gather(tiles, starts, kept)] if kept.numel() else []
    if cut_only.numel():
        _, groups = torch.unique(comp[cut_only], return_inverse=True)
        united = _union_views(_gather(tiles, starts, cut_only), groups)
        first = torch.full((int(groups.max()) + 1,), n, dtype=torch.long, device=dev).scatter_reduce(
            0, groups, cut_only, reduce="amin")
        keep_union = torch.isin(comp[first] * T + grid.owner(box_centres(united.boxes)), member_keys)
        parts.append(united[torch.nonzero(keep_union, as_tuple=True)[0]])
    if not parts:
        return tiles[0][torch.zeros(0, dtype=torch.long, device=dev)].replace(image_size=grid.image_size)
    return _sorted(Instances.cat(parts))


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
    u0, u1 = union_windows(org, org + torch.tensor([w, h], device=org.device), groups, K)
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


def box_centres(boxes: Tensor) -> Tensor:
    """Box centres ``Tensor[N, 2]`` ``(x, y)`` (float32) of xyxy ``boxes``."""
    b = boxes.float()
    return torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)


def _sorted(inst: Instances) -> Instances:
    if len(inst) == 0:
        return inst
    return inst[torch.sort(inst.scores, descending=True, stable=True).indices]
