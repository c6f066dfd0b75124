"""Mask-level merging of predictions from several views (TTA) and several models (ensembles).

Input: one ``Instances`` per view, all in the original image's pixels, with soft crop masks.
The same code serves TTA and ensembles: a "view" is one (model, test-time transform) pair, so
models with different backbones or configs merge like views.

Algorithm (``merge_instances``):

1. Instances of all views are pooled and ranked by score (ties: earlier view, then earlier index).
   Each soft mask is binarised at its own class's mask threshold (``test.mask_thresh``: one value
   per class, or one for all); instances whose binary mask is empty are dropped (they cannot match
   anything).
2. Edges (``cross_view_edges``): pairs from *different* views whose binary masks have
   IoU > ``iou_threshold``, from the intersections of all pairs that share a pixel (a sparse
   product of pixel-incidence matrices; equal to ``crop_mask_iou``; only the edge list is kept,
   never an N x N matrix).
   Two instances of one view never merge with each other: suppressing duplicates within a view is
   the model's NMS's job.
3. Greedy clustering on the edges, as NMS: in rank order, an instance with no higher-ranked seed
   among its neighbours becomes a seed; any other instance joins the neighbouring higher-ranked
   seed with the highest IoU. The sequential rule is evaluated in vectorised rounds (each round
   settles every instance whose higher-ranked neighbours are all settled); it gives the same
   result as the sequential loop, in as many rounds as the longest chain of dependencies.
4. A cluster keeps at most one instance per view (the highest-ranked); lower-ranked instances of
   a view that is already represented are dropped as duplicates.
5. Fused outputs per cluster: score = sum of member scores / ``num_views`` (the mean over all
   views, a view that missed the object counting 0, so objects found by few views rank lower);
   soft mask = score-weighted mean of the members' soft masks on the union of their crop windows
   (a pixel outside a member's crop counts as 0 for that member); box = score-weighted mean of
   member boxes; label = the class with the largest summed member score.
6. Clusters with fewer than ``min_views`` members are dropped; the rest are sorted by fused score.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from maskrcnn.inference.per_class import per_class
from maskrcnn.ops import crop_pair_intersections
from maskrcnn.structures import Instances, MaskList


def candidate_pairs(boxes: Tensor, areas: Tensor, view_ids: Tensor, iou_threshold: float,
                    chunk: int = 256) -> Tuple[Tensor, Tensor]:
    """Pairs ``(i, j)``, ``i < j``, of different views that *can* have mask IoU > ``iou_threshold``.

    Args:
        boxes (Tensor[N, 4]): tight boxes of the binary masks (integer-valued xyxy).
        areas (Tensor[N]): pixel counts of the binary masks.
        view_ids (Tensor[N]): int64 view of each mask.
    A mask intersection lies inside the tight boxes' intersection and the union is at least the
    larger mask, so IoU > t needs ``box_inter > t * max(area_i, area_j)``. A sweep along x keeps the
    work near N x (neighbours): masks sorted by ``x0`` are taken ``chunk`` at a time, and compared only
    with the masks whose ``x0`` lies within one box width of the chunk's x-range (a ``searchsorted``).
    """
    n = boxes.shape[0]
    dev = boxes.device
    z = torch.zeros(0, dtype=torch.long, device=dev)
    if n == 0:
        return z, z
    b = boxes.float()
    a = areas.float()
    by_x = torch.sort(b[:, 0], stable=True)
    x0s, sweep = by_x.values, by_x.indices
    max_w = float((b[:, 2] - b[:, 0]).max())
    ii, jj = [], []
    for s in range(0, n, chunk):  # a loop over chunks of masks, not over masks
        rows = sweep[s:s + chunk]
        # A column overlaps a row only if col.x0 < row.x1 and col.x1 > row.x0, with col.x1 <= col.x0 + max_w.
        lo = int(torch.searchsorted(x0s, x0s[s:s + 1] - max_w, right=True))
        hi = int(torch.searchsorted(x0s, b[rows, 2].max()[None], right=False))
        cols = sweep[lo:hi]
        br, bc = b[rows], b[cols]
        iw = (torch.minimum(br[:, None, 2], bc[None, :, 2]) - torch.maximum(br[:, None, 0], bc[None, :, 0])).clamp(min=0)
        ih = (torch.minimum(br[:, None, 3], bc[None, :, 3]) - torch.maximum(br[:, None, 1], bc[None, :, 1])).clamp(min=0)
        ok = iw * ih > iou_threshold * torch.maximum(a[rows, None], a[None, cols])
        ok &= (cols[None, :] > rows[:, None]) & (view_ids[rows, None] != view_ids[None, cols])
        r, c = torch.nonzero(ok, as_tuple=True)
        ii.append(rows[r])
        jj.append(cols[c])
    return torch.cat(ii), torch.cat(jj)


def pixel_intersections(n_idx: Tensor, flat: Tensor, n: int, num_pixels: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Pixel counts of every pair of masks that share a pixel, as a sparse matrix product.

    Args:
        n_idx (Tensor[P]) int64, sorted: the mask of each foreground pixel; flat (Tensor[P]) int64:
            its index in the image (``y * W + x``); ``n`` masks, ``num_pixels`` = H * W.
    With ``A`` the ``[n, H*W]`` incidence matrix of mask pixels (CSR, built directly from the pixel
    list), ``A @ A.T`` holds the intersections; the cost follows the pixels covered by several
    masks, not the crops' padding or the neighbours whose crops merely touch.
    Returns:
        i (Tensor[E]), j (Tensor[E]) int64 with ``i < j``, and inter (Tensor[E]) int64 pixel counts.
    Raises RuntimeError / NotImplementedError where sparse CSR products are unsupported.
    """
    dev = n_idx.device
    ones = torch.ones(n_idx.shape[0], dtype=torch.float32, device=dev)
    zero = torch.zeros(1, dtype=torch.long, device=dev)
    crow = torch.cat([zero, torch.bincount(n_idx, minlength=n).cumsum(0)])
    by_px = torch.sort(flat, stable=True)
    crow_t = torch.cat([zero, torch.bincount(flat, minlength=num_pixels).cumsum(0)])
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        a = torch.sparse_csr_tensor(crow, flat, ones, (n, num_pixels))
        at = torch.sparse_csr_tensor(crow_t, n_idx[by_px.indices], ones, (num_pixels, n))
        prod = torch.sparse.mm(a, at)
    rows = torch.repeat_interleave(torch.arange(n, device=dev), prod.crow_indices().diff())
    cols = prod.col_indices()
    upper = cols > rows
    return rows[upper], cols[upper], prod.values()[upper].round().long()


_SPARSE_UNSUPPORTED = (RuntimeError, NotImplementedError, TypeError, AttributeError)


def _edges_from_pixels(n_idx, flat, n, num_pixels, areas, view_ids, iou_threshold):
    i, j, inter = pixel_intersections(n_idx, flat, n, num_pixels)
    iou = inter.float() / (areas[i] + areas[j] - inter).clamp(min=1).float()
    ok = (iou > iou_threshold) & (view_ids[i] != view_ids[j])
    return i[ok], j[ok], iou[ok]


def _edges_from_pairs(masks: MaskList, areas, view_ids, iou_threshold):
    boxes = masks.tight_boxes()
    i, j = candidate_pairs(boxes, areas, view_ids, iou_threshold)
    b = boxes.long()
    window = torch.cat([torch.maximum(b[i, :2], b[j, :2]), torch.minimum(b[i, 2:], b[j, 2:])], dim=1)
    inter = crop_pair_intersections(masks.crops, masks.origins, masks.crops, masks.origins, i, j, window)
    union = areas[i].long() + areas[j].long() - inter
    iou = torch.where(union > 0, inter.float() / union.clamp(min=1).float(), torch.zeros_like(inter, dtype=torch.float32))
    ok = iou > iou_threshold
    return i[ok], j[ok], iou[ok]


def cross_view_edges(views: Sequence[MaskList], iou_threshold: float,
                     method: str = "sparse") -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sparse pairs ``(i, j)``, ``i < j``, from different views whose binary masks have IoU > threshold.

    Args:
        views: each view's binary crop masks (nonzero = foreground) of one image. Masks are
            numbered view-major: view 0's, then view 1's, and so on.
        method: ``sparse`` (``pixel_intersections``; falls back to ``pairs`` where the sparse
            product is unsupported) or ``pairs`` (``candidate_pairs`` + ``crop_pair_intersections``).
    Returns:
        i (Tensor[E]), j (Tensor[E]) int64 and iou (Tensor[E]) float32; areas (Tensor[N]) int64,
        each mask's pixels inside the image.

    Either way only the edges are kept, never an N x N matrix; ``crop_mask_iou`` on all window pairs
    of 8 views of 1,000 cells took minutes on CPU, as its cost follows the crops' padded windows.
    Pixel lists are built view by view: the views' crops are never padded into one tensor.
    """
    if method not in ("sparse", "pairs"):
        raise ValueError(f"cross_view_edges: method must be 'sparse' or 'pairs', got {method!r}")
    dev = views[0].device
    H, W = views[0].image_size
    counts = [len(v) for v in views]
    view_ids = torch.cat([torch.full((c,), k, dtype=torch.long, device=dev) for k, c in enumerate(counts)])
    px_n, px_flat, start = [], [], 0
    for v in views:  # a loop over views
        n_idx, _, flat = v.foreground_pixels()
        px_n.append(n_idx + start)
        px_flat.append(flat)
        start += len(v)
    n_idx, flat = torch.cat(px_n), torch.cat(px_flat)
    areas = torch.bincount(n_idx, minlength=start)
    if method == "sparse":
        try:
            return (*_edges_from_pixels(n_idx, flat, start, H * W, areas, view_ids, iou_threshold), areas)
        except _SPARSE_UNSUPPORTED:
            pass
    pooled = MaskList.cat([MaskList(v.crops != 0, v.origins, v.image_size) for v in views])
    return (*_edges_from_pairs(pooled, areas, view_ids, iou_threshold), areas)


def greedy_clusters_reference(n: int, src: Tensor, dst: Tensor, weight: Tensor) -> Tensor:
    """The sequential rule of :func:`greedy_clusters` as the obvious loop over items (slow; the
    oracle for tests and the baseline of ``bench/bench_inference.py``). Same arguments and result."""
    nbr = {}
    for s, d, x in zip(src.tolist(), dst.tolist(), weight.tolist()):
        nbr.setdefault(d, []).append((s, x))
    seed_of = list(range(n))
    is_seed = [False] * n
    for k in range(n):
        seeds = [(x, -s) for s, x in nbr.get(k, []) if is_seed[s]]
        if seeds:
            seed_of[k] = -max(seeds)[1]  # highest weight; ties: the better-ranked (smaller) seed
        else:
            is_seed[k] = True
    return torch.tensor(seed_of, dtype=torch.long)


def greedy_clusters(n: int, src: Tensor, dst: Tensor, weight: Tensor) -> Tensor:
    """Greedy (NMS-like) clustering of ``n`` ranked items on a sparse graph.

    Args:
        n: number of items, ranked 0 (best) .. n-1.
        src (Tensor[E]), dst (Tensor[E]) int64: edges with ``src < dst`` (higher rank first).
        weight (Tensor[E]) float: affinity used to choose among several seeds (e.g. IoU).
    Returns:
        Tensor[n] int64: the seed (an item index) of each item's cluster; seeds point to themselves.

    Sequential rule: item ``k`` is a seed iff no seed ``j < k`` shares an edge with it; a non-seed
    joins its highest-weight seed neighbour (ties: the better-ranked seed). Evaluated in rounds:
    a round settles every unsettled item that has a seed parent (it is suppressed) or whose parents
    are all settled non-seeds (it is a seed); the best-ranked unsettled item always settles.
    """
    dev = src.device
    UNKNOWN, SEED, MEMBER = 0, 1, 2
    state = torch.zeros(n, dtype=torch.int8, device=dev)
    s, d = src, dst
    while True:  # rounds (dependency depth), each vectorised over the edges
        undecided = state == UNKNOWN
        if not bool(undecided.any()):
            break
        ps = state[s]
        seed_parent = torch.zeros(n, dtype=torch.bool, device=dev)
        seed_parent[d[ps == SEED]] = True
        open_parent = torch.zeros(n, dtype=torch.bool, device=dev)
        open_parent[d[ps == UNKNOWN]] = True
        state[undecided & seed_parent] = MEMBER
        state[undecided & ~seed_parent & ~open_parent] = SEED
        # Edges into settled items, and from non-seeds, no longer decide anything.
        live = (state[d] == UNKNOWN) & (state[s] != MEMBER)
        s, d = s[live], d[live]
    seed_of = torch.arange(n, device=dev)
    to_seed = (state[src] == SEED) & (state[dst] == MEMBER)
    es, ed, ew = src[to_seed], dst[to_seed], weight[to_seed].float()
    if ed.numel():
        best = torch.full((n,), -1.0, device=dev).scatter_reduce(0, ed, ew, reduce="amax")
        cand = ew == best[ed]
        big = torch.full((n,), n, dtype=torch.long, device=dev)
        chosen = big.scatter_reduce(0, ed[cand], es[cand], reduce="amin")
        member = state == MEMBER
        seed_of[member] = chosen[member]
    return seed_of


def merge_instances(
    views: Sequence[Instances],
    iou_threshold: float = 0.5,
    min_views: int = 1,
    mask_threshold: Union[float, Sequence[float]] = 0.5,
    num_views: Optional[int] = None,
    max_elements: int = 1 << 24,
    return_view_counts: bool = False,
) -> Union[Instances, Tuple[Instances, Tensor]]:
    """Merge per-view predictions of one image at mask level (see the module docstring).

    Args:
        views: one ``Instances`` per view, all with ``image_size`` of the original image, ``scores``
            and soft (float) ``masks``; crop sizes may differ between views.
        iou_threshold: two instances of different views match when their binary masks' IoU is above it.
        min_views: keep a cluster seen in at least this many views.
        mask_threshold: binarises soft masks for matching (the averaged masks stay soft): one value,
            or one per class (``test.mask_thresh``), each instance at its own class's value.
        num_views: the divisor of the fused score (default ``len(views)``).
        max_elements: bound on the elements of the temporary ``[members, h, w]`` averaging chunk.
        return_view_counts: also return how many views each output object was seen in (its
            agreement, e.g. for pseudo-labelling).
    Returns:
        Instances with soft ``masks`` (crops on each cluster's union window), fused ``scores``,
        ``labels`` and ``boxes``, sorted by decreasing score. One view is returned as it is.
        With ``return_view_counts``: ``(instances, counts Tensor[K] int64)``.

    Views are never concatenated into one padded crop tensor: pixels lists are built per view and
    soft masks are accumulated view by view, so memory is about the views' own crops.
    """
    V = _check_views(views, min_views, num_views)
    if len(views) == 1 and min_views <= 1 and V == 1:
        if return_view_counts:
            return views[0], torch.ones(len(views[0]), dtype=torch.long, device=views[0].boxes.device)
        return views[0]
    size, dev = views[0].image_size, views[0].boxes.device
    out_dtype = next((v.masks.crops.dtype for v in views if v.masks.is_soft), torch.float32)
    gi, gj, iou, areas = cross_view_edges([_binary(v, mask_threshold) for v in views], iou_threshold)
    scores = torch.cat([v.scores.float() for v in views])
    view_ids = torch.cat([torch.full((len(v),), k, dtype=torch.long, device=dev) for k, v in enumerate(views)])

    # Rank by score; the stable sort keeps view order, then index order, for ties. Masks empty at
    # their threshold cannot match anything and are dropped.
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[areas[order] > 0]
    n = int(order.numel())
    if n == 0:
        empty = Instances.empty(size, dev, with_scores=True).replace(masks=MaskList.empty(size, dev, out_dtype))
        return (empty, torch.zeros(0, dtype=torch.long, device=dev)) if return_view_counts else empty
    # Re-index the edges by rank, higher rank first.
    rank = torch.full((scores.shape[0],), -1, dtype=torch.long, device=dev)
    rank[order] = torch.arange(n, device=dev)
    ri, rj = rank[gi], rank[gj]
    seed_of = greedy_clusters(n, torch.minimum(ri, rj), torch.maximum(ri, rj), iou)
    m_g, m_cl, K = _one_member_per_view(seed_of, order, view_ids[order], V)
    out, members = _fuse_clusters(views, scores, view_ids, m_g, m_cl, K, V, min_views, out_dtype, max_elements)
    return (out, members) if return_view_counts else out


def _fuse_clusters(views: Sequence[Instances], scores: Tensor, view_ids: Tensor, m_g: Tensor, m_cl: Tensor, K: int,
                   V: int, min_views: int, out_dtype: torch.dtype, max_elements: int) -> Tuple[Instances, Tensor]:
    """Step 5 and 6 of the module docstring: each cluster's fused score, soft mask, box and label from
    its members (``m_g``: pooled index, ``m_cl``: cluster), the clusters seen in at least
    ``min_views`` views, by decreasing fused score; and their member counts."""
    size, dev = views[0].image_size, views[0].boxes.device
    w = scores[m_g].clamp(min=1e-12)  # weights of the soft-mask and box averages
    wsum = torch.zeros(K, device=dev).index_add_(0, m_cl, w)
    fused = torch.zeros(K, device=dev).index_add_(0, m_cl, scores[m_g]) / V
    u_org, acc = _sum_weighted_masks(views, view_ids, m_g, m_cl, K, w, max_elements)
    acc = acc / wsum[:, None, None]
    boxes_all = torch.cat([v.boxes.float() for v in views])
    boxes = torch.zeros((K, 4), device=dev).index_add_(0, m_cl, boxes_all[m_g] * w[:, None]) / wsum[:, None]
    labels_all = torch.cat([v.labels for v in views])
    num_classes = int(labels_all.max()) + 1
    votes = torch.zeros((K * num_classes,), device=dev).index_add_(0, m_cl * num_classes + labels_all[m_g], w)
    labels = votes.view(K, num_classes).argmax(dim=1)

    members = torch.bincount(m_cl, minlength=K)
    kept = torch.nonzero(members >= min_views, as_tuple=True)[0]
    kept = kept[torch.sort(fused[kept], descending=True, stable=True).indices]
    out_masks = MaskList(acc[kept].to(out_dtype), u_org[kept], size)
    out = Instances(size, boxes[kept].to(views[0].boxes.dtype), labels[kept],
                    fused[kept].to(views[0].scores.dtype), out_masks)
    return out, members[kept]


def _check_views(views: Sequence[Instances], min_views: int, num_views: Optional[int]) -> int:
    """The divisor of the fused score (``num_views`` or the number of views), after checking ``views``."""
    if len(views) == 0:
        raise ValueError("merge_instances needs at least one view")
    size = views[0].image_size
    for k, v in enumerate(views):
        if v.image_size != size:
            raise ValueError(f"merge_instances: view {k} is for an image of {v.image_size}, view 0 of {size}")
        if v.scores is None or v.masks is None:
            raise ValueError(f"merge_instances: view {k} lacks scores or masks")
    V = len(views) if num_views is None else int(num_views)
    if min_views > V:
        raise ValueError(f"min_views={min_views} exceeds the number of views ({V})")
    return V


def _binary(view: Instances, mask_threshold: Union[float, Sequence[float]]) -> MaskList:
    """The view's masks binarised at each instance's class threshold (bool masks pass through)."""
    m = view.masks
    if not m.is_soft:
        return m
    thresholds = [mask_threshold] if isinstance(mask_threshold, (int, float)) else list(mask_threshold)
    t = per_class(thresholds, view.labels, "mask_thresh").to(m.crops.dtype)
    return MaskList(m.crops >= t[:, None, None], m.origins, m.image_size)


def _one_member_per_view(seed_of: Tensor, order: Tensor, vid: Tensor, V: int) -> Tuple[Tensor, Tensor, int]:
    """Cluster members, at most one per (cluster, view): items are in rank order, so the first of
    each (cluster, view) wins. Returns the pooled index of each member, its cluster (0..K-1, in
    the order of the seeds' ranks) and K."""
    n = int(seed_of.numel())
    dev = seed_of.device
    key = seed_of * V + vid
    first = torch.full((n * V,), n, dtype=torch.long, device=dev).scatter_reduce(
        0, key, torch.arange(n, device=dev), reduce="amin")
    member = first[key] == torch.arange(n, device=dev)
    _, cluster = torch.unique(seed_of, return_inverse=True)  # seeds ascending = by rank
    m_idx = torch.nonzero(member, as_tuple=True)[0]
    return order[m_idx], cluster[m_idx], int(cluster.max()) + 1


def union_windows(starts: Tensor, ends: Tensor, groups: Tensor, K: int) -> Tuple[Tensor, Tensor]:
    """Per group ``0..K-1``, the window holding its members' windows ``[starts, ends)``
    (``Tensor[M, 2]`` int64, ``(x, y)``): ``(lo Tensor[K, 2], hi Tensor[K, 2])``."""
    big = torch.iinfo(torch.long).max
    dev = starts.device
    lo = torch.stack([
        torch.full((K,), big, dtype=torch.long, device=dev).scatter_reduce(0, groups, starts[:, c], reduce="amin")
        for c in (0, 1)], dim=1)
    hi = torch.stack([
        torch.full((K,), -big, dtype=torch.long, device=dev).scatter_reduce(0, groups, ends[:, c], reduce="amax")
        for c in (0, 1)], dim=1)
    return lo, hi


def _sum_weighted_masks(views: Sequence[Instances], view_ids: Tensor, m_g: Tensor, m_cl: Tensor, K: int,
                        w: Tensor, max_elements: int) -> Tuple[Tensor, Tensor]:
    """Each cluster's union window of its members' crop windows, ``origins (Tensor[K, 2])``, and the
    weighted sum of its members' soft masks on that window, ``Tensor[K, Hc, Wc]`` float32."""
    dev = w.device
    origins = torch.cat([v.masks.origins for v in views])
    ext = torch.cat([torch.tensor(v.masks.crops.shape[1:], device=dev).repeat(len(v), 1) for v in views])
    starts = [sum(len(u) for u in views[:k]) for k in range(len(views))]
    m_org = origins[m_g]
    m_end = m_org + ext[m_g].flip(1)  # (x0 + w, y0 + h), each member's own crop size
    u_org, u_end = union_windows(m_org, m_end, m_cl, K)
    Wc, Hc = (int(x) for x in (u_end - u_org).max(dim=0).values)
    acc = torch.zeros((K * Hc * Wc,), dtype=torch.float32, device=dev)
    m_view = view_ids[m_g]
    for k, v in enumerate(views):  # a loop over views; members of one view in chunks
        sel = torch.nonzero(m_view == k, as_tuple=True)[0]
        if sel.numel() == 0:
            continue
        crops = v.masks.crops
        _, h, wd = crops.shape
        # Each member's crop lies inside its cluster's window (offsets >= 0 by the union's
        # definition): scatter-add its weighted pixels at flat positions of the [K, Hc, Wc] buffer.
        grid = torch.arange(h, device=dev)[:, None] * Wc + torch.arange(wd, device=dev)[None, :]
        chunk = max(1, max_elements // max(1, h * wd))
        for s in range(0, int(sel.numel()), chunk):
            c = sel[s:s + chunk]
            d = m_org[c] - u_org[m_cl[c]]
            base = m_cl[c] * (Hc * Wc) + d[:, 1] * Wc + d[:, 0]
            vals = crops.index_select(0, m_g[c] - starts[k]).float() * w[c, None, None]
            acc.index_add_(0, (base[:, None, None] + grid).reshape(-1), vals.reshape(-1))
    return u_org, acc.view(K, Hc, Wc)
