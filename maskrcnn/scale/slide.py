"""One large image on a Dask cluster: blocks predicted on workers, cells joined across block borders
by the tiling's own rules, a chunked zarr label image and a per-cell table.

The blocks are ``maskrcnn.inference.tile_grid``'s tiles (``plan_tiles(shape, block, overlap)``), so the
distributed result is the single-process tiled prediction's, computed in three kinds of task:

1. ``predict_block(job, t)``: read block ``t``'s window from the source (only its zarr chunks or
   TIFF tiles), skip it when it holds no foreground (the cheap test below), else run every model and
   TTA view on it and merge them (as ``Predictor`` does for one tile), drop detections under the
   lowest ``test.score_thresh`` and move them into the slide's pixels. Soft masks as crops.
2. ``finish_block(job, t, *neighbours)``: ``stitching.stitch`` on the blocks whose windows overlap
   block ``t``'s rows and columns (its neighbourhood, usually 3 x 3), post-processing
   (``filter_predictions``: thresholds, overlap removal) in the neighbourhood's own frame, and the objects
   whose box centre lies in block ``t``'s core are block ``t``'s. Every object whose views lie in
   the blocks overlapping it is joined and post-processed identically in the neighbourhoods of all
   the blocks that see it (their windows all overlap the object, so all of them are in each
   neighbourhood), and exactly one core holds its centre: one cell, never two halves, never twice.
   With objects smaller than the overlap this equals stitching all blocks at once (tested against
   ``Predictor`` with tiles, which does that). The image-class rule of ``filter_predictions``
   (``test.image_class``, several classes) is decided per neighbourhood, not per slide.
3. ``write_chunk``: each chunk of the output label image is painted by one task from the objects
   of the blocks that reach it (no two tasks write one chunk), where masks overlap the better score
   wins; chunks without objects are not written (zarr's fill value is 0).

Labels are ``uint32``, numbered 1..N in block order (row-major) then by decreasing score within a
block; the table (``cells.csv``) has one row per label: ``id, x0, y0, x1, y1`` (tight box,
exclusive ends), ``centroid_x, centroid_y`` (pixel centres, 0-based), ``area`` (pixels),
``score``, ``class``.

Intensities: pixels are scaled as ``read_image`` scales them (uint8 / 255, uint16 / 65535). A model
with percentile normalisation gets the percentiles of a strided subsample of the whole slide
(at most ``SUBSAMPLE_PIXELS`` per channel, ``ImageSource.subsample``), the same for every block.

Foreground test (``--skip-contrast F``): a block whose intensity span (max - min over its pixels
and channels) is below ``F`` times the slide's (99.8th - 1st percentile of the subsample) is
background and skipped without running the model. 0 runs every block.
"""
from __future__ import annotations

import csv
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from maskrcnn.fileio import atomic_open
from maskrcnn.inference.merge import merge_instances
from maskrcnn.inference.filtering import filter_predictions
from maskrcnn.inference.stitching import box_centres, stitch
from maskrcnn.inference.tile_grid import TileGrid, plan_tiles
from maskrcnn.inference.tiling import read_tile, shift_instances
from maskrcnn.scale.sources import ImageSource
from maskrcnn.scale.workers import ModelSpec, predictor_for
from maskrcnn.structures import Instances

SUBSAMPLE_PIXELS = 4_000_000
TABLE_HEADER = ("id", "x0", "y0", "x1", "y1", "centroid_x", "centroid_y", "area", "score", "class")


@dataclass(frozen=True)
class SlideJob:
    """What every block task needs (small, picklable): the source, the block grid, the model and the
    slide-wide intensity settings."""

    source: ImageSource
    grid: TileGrid
    model: ModelSpec
    ranges: Optional[Tuple[Optional[torch.Tensor], ...]] = None  # per model: Tensor[C, 2] or None
    skip_span: float = 0.0  # blocks whose max - min (scaled pixels) is below it are skipped


@dataclass
class BlockPrediction:
    """A block's merged raw predictions in the slide's pixels (soft masks)."""

    inst: Instances
    skipped: bool
    seconds: float
    cpu_seconds: float = 0.0  # this thread's CPU time (what the block cost, whatever else runs on the machine)


@dataclass
class BlockResult:
    """The final objects a block owns (bool masks, slide pixels, by decreasing score) and their table."""

    inst: Instances
    table: Dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0


@dataclass(frozen=True)
class _Neighbourhood(TileGrid):
    """The blocks around one block, in slide pixels; a point outside their cores has no owner (-1)."""

    def owner(self, points: torch.Tensor) -> torch.Tensor:
        t = super().owner(points)
        inside = ((points[:, 0] >= self.core_x[0]) & (points[:, 0] < self.core_x[-1])
                  & (points[:, 1] >= self.core_y[0]) & (points[:, 1] < self.core_y[-1]))
        return torch.where(inside, t, torch.full_like(t, -1))


def _axis_neighbours(starts: Sequence[int], size: int, i: int) -> range:
    """Indices of the blocks along one axis whose windows overlap block ``i``'s (a contiguous run)."""
    near = [j for j in range(len(starts)) if abs(starts[j] - starts[i]) < size]
    return range(min(near), max(near) + 1)


def neighbourhood(grid: TileGrid, t: int) -> Tuple[List[int], _Neighbourhood]:
    """The blocks whose rows and columns overlap block ``t``'s (row-major) and their sub-grid."""
    row, col = divmod(t, len(grid.xs))
    rows = _axis_neighbours(grid.ys, grid.tile_h, row)
    cols = _axis_neighbours(grid.xs, grid.tile_w, col)
    sub = _Neighbourhood(grid.image_size, tuple(grid.xs[c] for c in cols), tuple(grid.ys[r] for r in rows),
                         grid.tile_w, grid.tile_h, tuple(grid.core_x[cols.start:cols.stop + 1]),
                         tuple(grid.core_y[rows.start:rows.stop + 1]))
    return [r * len(grid.xs) + c for r in rows for c in cols], sub


def scaled(a: np.ndarray) -> torch.Tensor:
    """``ndarray[C, h, w]`` as a float tensor scaled as ``read_image`` scales (uint8 / 255, uint16 / 65535)."""
    return read_tile(a, 0, 0, a.shape[-1], a.shape[-2])


# ------------------------------------------------------------------------------ tasks
def slide_ranges(source: ImageSource, spec: ModelSpec) -> Tuple[Tuple[Optional[torch.Tensor], ...], Tuple[float, float]]:
    """Per model, the percentile range of the slide's subsample its normalisation uses (None: the model
    does not normalise by percentiles), and the subsample's (1st, 99.8th) percentiles over all
    channels (for the foreground test). Runs on a worker (it loads the models)."""
    sub = scaled(source.subsample(SUBSAMPLE_PIXELS))
    pred = predictor_for(spec)
    ranges = []
    for m in pred.models:
        fn = getattr(m, "input_ranges", None)
        r = fn([sub]) if callable(fn) else None
        ranges.append(None if r is None else r[0].cpu())
    lo, hi = np.percentile(sub.numpy().ravel(), [1.0, 99.8])
    return tuple(ranges), (float(lo), float(hi))


def predict_block(job: SlideJob, t: int) -> BlockPrediction:
    """Block ``t``'s merged raw predictions (step 1 of the module doc)."""
    t0, c0 = time.perf_counter(), time.thread_time()
    x0, y0, x1, y1 = job.grid.window(t)
    tile = scaled(job.source.read(x0, y0, x1, y1))
    size = job.grid.image_size
    if job.skip_span > 0 and float(tile.amax() - tile.amin()) < job.skip_span:
        return BlockPrediction(Instances.empty(size, with_scores=True, with_masks=True), True,
                               time.perf_counter() - t0, time.thread_time() - c0)
    pred = predictor_for(job.model)
    ranges = None if job.ranges is None else list(job.ranges)
    with torch.no_grad():
        views = pred.predict_views(tile, ranges)
        inst = merge_instances(views, pred.merge_iou, pred.min_views, pred.mask_threshold, pred.num_views)
    inst = inst.to("cpu")
    thresh = min(job.model.test.score_thresh)
    if thresh > 0:
        inst = inst[torch.nonzero(inst.scores >= thresh, as_tuple=True)[0]]
    return BlockPrediction(shift_instances(inst, x0, y0, size), False, time.perf_counter() - t0, time.thread_time() - c0)


def finish_block(job: SlideJob, t: int, *around: BlockPrediction) -> BlockResult:
    """Block ``t``'s final objects (step 2 of the module doc); ``around``: the predictions of
    ``neighbourhood(job.grid, t)``'s blocks, in its order."""
    t0, c0 = time.perf_counter(), time.thread_time()
    blocks, sub = neighbourhood(job.grid, t)
    if len(around) != len(blocks):
        raise ValueError(f"finish_block: {len(around)} predictions for a neighbourhood of {len(blocks)} blocks")
    grid, test = job.grid, job.model.test
    # the Predictor's tiling settings (``Predictor._predict_tiled``), without loading the model here
    joined = stitch([b.inst for b in around], sub, merge=True, merge_iou=test.merge_iou,
                    mask_threshold=min(test.mask_thresh))
    ox, oy = sub.xs[0], sub.ys[0]
    frame = (sub.ys[-1] + sub.tile_h - oy, sub.xs[-1] + sub.tile_w - ox)
    final = filter_predictions(shift_instances(joined, -ox, -oy, frame), job.model.test)
    final = shift_instances(final, ox, oy, grid.image_size)
    if len(final):
        final = final[torch.nonzero(grid.owner(box_centres(final.boxes)) == t, as_tuple=True)[0]]
    return BlockResult(final, cell_table(final), time.perf_counter() - t0, time.thread_time() - c0)


def cell_table(inst: Instances) -> Dict[str, np.ndarray]:
    """Per object of ``inst`` (bool masks): tight box, centroid, area, score and class (numpy columns)."""
    m = inst.masks
    n = len(inst)
    if n == 0:
        return {k: np.zeros(0) for k in TABLE_HEADER[1:]}
    crops = m.crops.float()
    area = crops.sum((1, 2))
    _, h, w = crops.shape
    cy = (crops.sum(2) * torch.arange(h, dtype=torch.float32)).sum(1) / area.clamp(min=1) + m.origins[:, 1]
    cx = (crops.sum(1) * torch.arange(w, dtype=torch.float32)).sum(1) / area.clamp(min=1) + m.origins[:, 0]
    box = m.tight_boxes().long()
    return {"x0": box[:, 0].numpy(), "y0": box[:, 1].numpy(), "x1": box[:, 2].numpy(), "y1": box[:, 3].numpy(),
            "centroid_x": cx.double().numpy(), "centroid_y": cy.double().numpy(), "area": area.long().numpy(),
            "score": inst.scores.double().numpy(), "class": inst.labels.numpy()}


def block_summary(result: BlockResult) -> Tuple[Dict[str, np.ndarray], float, float]:
    """What the client gathers of a block: its table (boxes among it), the finishing seconds and CPU seconds."""
    return result.table, result.seconds, result.cpu_seconds


def prediction_summary(p: BlockPrediction) -> Tuple[bool, float, int, float]:
    """(skipped, seconds, detections, CPU seconds) of a block prediction."""
    return p.skipped, p.seconds, len(p.inst), p.cpu_seconds


def paint(window: Tuple[int, int, int, int], parts: Sequence[Tuple[BlockResult, int]]) -> np.ndarray:
    """``uint32[h, w]`` labels of ``window`` (x0, y0, x1, y1) from blocks' objects: object ``k`` of a
    block with id offset ``o`` is ``o + k + 1``; a pixel two objects cover goes to the better score."""
    x0, y0, x1, y1 = window
    h, w = y1 - y0, x1 - x0
    ids, score, n_idx, ys, xs = [], [], [], [], []
    base = 0
    for res, offset in parts:  # a loop over the blocks that reach the window
        m = res.inst.masks
        if len(res.inst) == 0:
            continue
        k, yy, xx = torch.nonzero(m.crops, as_tuple=True)
        gy, gx = yy + m.origins[k, 1], xx + m.origins[k, 0]
        ok = (gy >= y0) & (gy < y1) & (gx >= x0) & (gx < x1)
        n_idx.append(k[ok] + base)
        ys.append(gy[ok] - y0)
        xs.append(gx[ok] - x0)
        ids.append(torch.arange(len(res.inst), dtype=torch.long) + offset + 1)
        score.append(res.inst.scores.float())
        base += len(res.inst)
    out = np.zeros((h, w), dtype=np.uint32)
    if not ids or sum(int(v.numel()) for v in n_idx) == 0:
        return out
    ids, score, n_idx = torch.cat(ids), torch.cat(score), torch.cat(n_idx)
    # rank 0 = best score (ties: lower id) wins a shared pixel
    order = torch.sort(ids).indices
    order = order[torch.sort(score[order], descending=True, stable=True).indices]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    flat = torch.cat(ys) * w + torch.cat(xs)
    owner = torch.full((h * w,), order.numel(), dtype=torch.long)
    owner.scatter_reduce_(0, flat, rank[n_idx], reduce="amin")
    lut = torch.cat([ids[order], torch.zeros(1, dtype=torch.long)])
    return lut[owner].view(h, w).numpy().astype(np.uint32)


def write_chunk(out_path: str, window: Tuple[int, int, int, int], *parts_and_offsets) -> int:
    """Paint one chunk of the label image into the zarr array ``out_path``; returns its labelled pixels."""
    import zarr

    parts = list(zip(parts_and_offsets[0::2], parts_and_offsets[1::2]))
    labels = paint(window, parts)
    n = int(np.count_nonzero(labels))
    if n:
        x0, y0, x1, y1 = window
        zarr.open_array(out_path, mode="r+")[y0:y1, x0:x1] = labels
    return n


# ------------------------------------------------------------------------- the client side
def plan_blocks(source: ImageSource, block: int, overlap: int) -> TileGrid:
    """The block grid of ``source`` (``tile_grid.plan_tiles``); the overlap must be at most half a block,
    so that a block's neighbourhood is the blocks next to it."""
    if not 0 <= overlap <= block // 2:
        raise ValueError(f"--overlap must be between 0 and half the block ({block // 2}), got {overlap}")
    return plan_tiles(source.shape[1:], block, overlap)


def chunk_windows(size: Tuple[int, int], chunk: int) -> List[Tuple[int, int, int, int]]:
    """The output chunks' windows (x0, y0, x1, y1), row-major."""
    H, W = size
    return [(x, y, min(x + chunk, W), min(y + chunk, H)) for y in range(0, H, chunk) for x in range(0, W, chunk)]


def write_table(path: str, tables: Sequence[Dict[str, np.ndarray]], offsets: Sequence[int]) -> int:
    """The per-cell CSV (``TABLE_HEADER``), rows in id order, written atomically; returns the row count."""
    rows = 0
    with atomic_open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(TABLE_HEADER)
        for table, offset in zip(tables, offsets):  # a loop over blocks; rows are written by the csv module
            n = len(table["x0"])
            cols = [np.arange(offset + 1, offset + n + 1)] + [table[k] for k in TABLE_HEADER[1:]]
            fmt = [str, str, str, str, str, "{:.2f}".format, "{:.2f}".format, str, "{:.5f}".format, str]
            out.writerows(zip(*[[f_(v) for v in c.tolist()] for f_, c in zip(fmt, cols)]))
            rows += n
    return rows


def _union_boxes(tables: Sequence[Dict[str, np.ndarray]]) -> np.ndarray:
    """Per block, the box ``(x0, y0, x1, y1)`` holding all its objects (empty blocks: an empty box)."""
    out = np.zeros((len(tables), 4), dtype=np.int64)
    for i, t in enumerate(tables):  # a loop over blocks (numbers only)
        if len(t["x0"]):
            out[i] = (t["x0"].min(), t["y0"].min(), t["x1"].max(), t["y1"].max())
    return out


def replace_folder(tmp: str, final: str) -> None:
    """Move the finished folder ``tmp`` onto ``final`` (an earlier ``final`` is removed first)."""
    if os.path.exists(final):
        shutil.rmtree(final) if os.path.isdir(final) else os.remove(final)
    os.replace(tmp, final)


def _gather(client, futures, desc: str, mode: str, unit: str = "block") -> list:
    """The results of ``futures`` in their order, with progress as they complete."""
    from distributed import as_completed

    from maskrcnn.progress import track

    for _ in track(as_completed(futures), desc=desc, total=len(futures), mode=mode, unit=unit):
        pass
    return client.gather(futures)


def run_slide(client, source: ImageSource, spec: ModelSpec, out: str, table: str, block: int = 512, overlap: int = 64,
              chunk: int = 1024, skip_contrast: float = 0.1, progress: str = "bar") -> Dict[str, float]:
    """Predict ``source`` on ``client``'s cluster; write the labels (zarr, ``out``) and the table (CSV).

    Args:
        client: a ``distributed.Client``.
        spec: the model (its ``test.tile_size`` is ignored: the blocks are the tiles).
        out: the label image's zarr folder (written beside it, then moved into place).
        block, overlap: block side and overlap in pixels (``overlap`` <= ``block / 2``, >= the largest cell).
        chunk: the label image's chunk side.
        skip_contrast: the foreground test's factor (module doc; 0: predict every block).
        progress: ``bar``, ``lines`` or ``off``.
    Returns:
        counts and seconds: ``blocks``, ``skipped``, ``cells``, ``predict_s`` and ``finish_s`` (per
        block, mean over the blocks predicted / all blocks), ``predict_cpu_s`` (the predicting
        thread's CPU seconds per predicted block), ``wall_s``.
    """
    import uuid

    t_start = time.perf_counter()
    spec = spec.without_tiles()
    grid = plan_blocks(source, block, overlap)
    ranges, (lo, hi) = client.submit(slide_ranges, source, spec, pure=False).result()
    job = SlideJob(source, grid, spec, ranges, skip_contrast * (hi - lo) if skip_contrast > 0 else 0.0)
    run = uuid.uuid4().hex[:8]
    finished, info, summaries = _predict_and_finish(client, job, run, progress)
    tables = [s[0] for s in summaries]
    counts = np.array([len(t["x0"]) for t in tables], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    folder = os.path.dirname(os.path.abspath(out))
    tmp = os.path.join(folder, f".{os.path.basename(out)}.{os.getpid()}.{run}.partial")
    arr, painted = _write_labels(client, tmp, grid.image_size, chunk, finished, tables, counts, offsets, run, progress)
    del finished
    arr.attrs.update({"source": os.path.abspath(source.path), "cells": int(counts.sum()), "block": block,
                      "overlap": overlap, "weights": list(spec.weights), "painted_pixels": int(painted)})
    rows = write_table(table, tables, offsets)
    replace_folder(tmp, out)
    done = [s for s in info if not s[0]]
    return {"blocks": len(grid), "skipped": sum(1 for s in info if s[0]), "cells": int(rows),
            "detections": int(sum(s[2] for s in info)),
            "predict_s": float(np.mean([s[1] for s in done])) if done else 0.0,
            "predict_cpu_s": float(np.mean([s[3] for s in done])) if done else 0.0,
            "finish_s": float(np.mean([s[1] for s in summaries])),
            "finish_cpu_s": float(np.mean([s[2] for s in summaries])), "wall_s": time.perf_counter() - t_start}


def _predict_and_finish(client, job: SlideJob, run: str, progress: str):
    """Steps 1 and 2 of the module doc on the cluster: the futures of every block's ``BlockResult``,
    and the gathered ``prediction_summary`` and ``block_summary`` of each block."""
    T = len(job.grid)
    preds = [client.submit(predict_block, job, t, key=f"predict-{run}-{t}") for t in range(T)]
    finished = [client.submit(finish_block, job, t, *[preds[u] for u in neighbourhood(job.grid, t)[0]],
                              key=f"finish-{run}-{t}") for t in range(T)]
    info = [client.submit(prediction_summary, p, key=f"info-{run}-{t}") for t, p in enumerate(preds)]
    del preds  # each block's predictions are freed once its neighbours are finished
    summaries = _gather(client, [client.submit(block_summary, f, key=f"summary-{run}-{t}")
                                 for t, f in enumerate(finished)], "blocks", progress)
    return finished, client.gather(info), summaries


def _write_labels(client, tmp: str, size: Tuple[int, int], chunk: int, finished, tables, counts: np.ndarray,
                  offsets: np.ndarray, run: str, progress: str):
    """Step 3 of the module doc: the zarr label image at ``tmp``, each chunk painted by one task from
    the blocks whose objects reach it; returns the array and the painted pixels."""
    import zarr

    H, W = size
    arr = zarr.open_array(tmp, mode="w", shape=(H, W), chunks=(min(chunk, H), min(chunk, W)), dtype="uint32",
                          fill_value=0)
    reach = _union_boxes(tables)
    writes = []
    for c, (x0, y0, x1, y1) in enumerate(chunk_windows((H, W), chunk)):  # a loop over output chunks
        hit = np.nonzero((counts > 0) & (reach[:, 0] < x1) & (reach[:, 2] > x0) & (reach[:, 1] < y1) & (reach[:, 3] > y0))[0]
        if hit.size:
            args = [a for b in hit.tolist() for a in (finished[b], int(offsets[b]))]
            writes.append(client.submit(write_chunk, tmp, (x0, y0, x1, y1), *args, key=f"write-{run}-{c}"))
    painted = sum(_gather(client, writes, "chunks", progress, unit="chunk")) if writes else 0
    return arr, painted
