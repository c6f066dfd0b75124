"""Reader speed, side by side with naive readers (ratios printed; nothing asserted).

1. DSB2018: load every image of stage1_train with its masks.
   - ours: ``DSB2018Dataset.load`` (each mask PNG cropped to its box as it is decoded);
   - naive: each mask PNG decoded to a dense array, stacked to ``[N, H, W]``, then cropped
     (``MaskList.from_dense``) to give the same output;
   - cache (with ``--cache FILE``): ``CacheDataset.load`` from a file written by ``maskrcnn.formats.dataset_cache``.
2. RLE: decode ~73k Sartorius-like rows (606 images of 520x704, ~121 objects each; the masks come
   from the synthetic generator at that size).
   - ours: ``rle.decode_crops`` per image (one parse and one fill for all rows of an image);
   - numpy dense: ``rle.decode`` per row (vectorised, but one full-image mask per object);
   - naive: a Python decoder (loop over runs, ``flat[s:s + n] = 1`` per run), stacked per image.

    python -m bench.data [--dsb ../shared/data/dsb2018/stage1_train] [--cache dsb.npz] [--limit N] [--rle-images 606]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from PIL import Image


from maskrcnn.formats import rle
from maskrcnn.data.dsb2018 import DSB2018Dataset
from maskrcnn.formats.image_files import read_image
from maskrcnn.data.synthetic import SyntheticCells
from maskrcnn.structures import MaskList


def naive_dsb_load(ds: DSB2018Dataset, index: int) -> MaskList:
    image_id = ds.image_ids[index]
    read_image(ds.image_path(image_id), channels=3)
    dense = np.stack([np.asarray(Image.open(p)) > 0 for p in ds.mask_paths(image_id)])
    return MaskList.from_dense(torch.from_numpy(dense))


def naive_rle_decode(text: str, H: int, W: int) -> np.ndarray:
    flat = np.zeros(H * W, dtype=bool)
    nums = text.split()
    for k in range(0, len(nums), 2):  # a loop over runs, as in public notebooks
        s, n = int(nums[k]) - 1, int(nums[k + 1])
        flat[s:s + n] = True
    return flat.reshape(H, W)


def bench_dsb(root: str, limit: int, cache: str) -> None:
    ds = DSB2018Dataset(root)
    n = len(ds) if limit <= 0 else min(limit, len(ds))
    idx = list(range(n))
    t = time.perf_counter()
    ours = [ds.load(i) for i in idx]
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    naive = [naive_dsb_load(ds, i) for i in idx]
    t_naive = time.perf_counter() - t
    for k in range(0, n, max(1, n // 20)):  # same masks
        assert torch.equal(ours[k].instances.masks.to_dense(), naive[k].to_dense()), ds.image_ids[k]
    objs = sum(len(s.instances) for s in ours)
    print(f"DSB2018: {n} images, {objs} nuclei")
    print(f"  naive dense per-mask reader : {t_naive:7.2f} s  ({1000 * t_naive / n:6.1f} ms/image)")
    print(f"  ours (crop as decoded)      : {t_ours:7.2f} s  ({1000 * t_ours / n:6.1f} ms/image)  "
          f"speed-up x{t_naive / t_ours:.2f}")
    if cache:
        from maskrcnn.formats.dataset_cache import CacheDataset

        t = time.perf_counter()
        c = CacheDataset(cache)
        t_open = time.perf_counter() - t
        t = time.perf_counter()
        cached = [c.load(i) for i in idx]
        t_cache = time.perf_counter() - t
        for k in range(0, n, max(1, n // 20)):
            assert torch.equal(cached[k].image, ours[k].image)
            assert torch.equal(cached[k].instances.masks.to_dense(), ours[k].instances.masks.to_dense())
        print(f"  cache {os.path.getsize(cache) / 1e6:.1f} MB (open {t_open:.2f} s): {t_cache:7.2f} s  "
              f"({1000 * t_cache / n:6.1f} ms/image)  speed-up x{t_naive / t_cache:.2f} vs naive")


def bench_rle(n_images: int, per_image: int, distinct: int) -> None:
    H, W = 520, 704
    synth = SyntheticCells(distinct, H, W, (per_image - 20, per_image + 20), seed=3)
    tables = []
    for i in range(distinct):
        m = synth.load(i).instances.masks
        tables.append(rle.encode_crops(m.crops, m.origins, (H, W), "row"))
    images = [tables[i % distinct] for i in range(n_images)]
    rows = sum(len(t) for t in images)
    print(f"RLE: {n_images} images of {H}x{W}, {rows} rows ({distinct} distinct images cycled)")
    t = time.perf_counter()
    for strs in images:
        rle.decode_crops(strs, H, W, "row")
    t_ours = time.perf_counter() - t
    sub = images[: max(1, n_images // 10)]  # the slow decoders on a tenth, scaled up
    sub_rows = sum(len(s) for s in sub)
    t = time.perf_counter()
    for strs in sub:
        np.stack([rle.decode(s, H, W, "row") for s in strs])
    t_dense = (time.perf_counter() - t) * rows / sub_rows
    t = time.perf_counter()
    for strs in sub:
        np.stack([naive_rle_decode(s, H, W) for s in strs])
    t_naive = (time.perf_counter() - t) * rows / sub_rows
    ref = np.stack([naive_rle_decode(s, H, W) for s in images[0]])
    assert torch.equal(rle.decode_crops(images[0], H, W).to_dense(), torch.from_numpy(ref))
    print(f"  naive Python decoder, dense  : {t_naive:7.2f} s  ({1e6 * t_naive / rows:6.1f} us/row; from {sub_rows} rows)")
    print(f"  numpy rle.decode per row     : {t_dense:7.2f} s  ({1e6 * t_dense / rows:6.1f} us/row)  "
          f"x{t_naive / t_dense:.2f} vs naive")
    print(f"  ours decode_crops per image  : {t_ours:7.2f} s  ({1e6 * t_ours / rows:6.1f} us/row)  "
          f"x{t_naive / t_ours:.2f} vs naive, x{t_dense / t_ours:.2f} vs numpy dense")


def main() -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dsb", default=os.path.join(os.path.dirname(here), "shared", "data", "dsb2018", "stage1_train"))
    p.add_argument("--cache", default="", help="a DSB2018 cache file to time as well")
    p.add_argument("--limit", type=int, default=0, help="DSB2018 images to load (0: all)")
    p.add_argument("--rle-images", type=int, default=606)
    p.add_argument("--rle-per-image", type=int, default=121)
    p.add_argument("--rle-distinct", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: fair to the single-threaded baselines)")
    p.add_argument("--skip-dsb", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_dsb:
        if os.path.isdir(args.dsb):
            bench_dsb(args.dsb, args.limit, args.cache)
        else:
            print(f"DSB2018 folder {args.dsb} not found; skipping (pass --dsb)")
    bench_rle(args.rle_images, args.rle_per_image, args.rle_distinct)


if __name__ == "__main__":
    main()
