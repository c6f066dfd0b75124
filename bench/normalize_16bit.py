"""16-bit fluorescence images with a small range, with and without percentile normalisation.

    python -m bench.normalize_16bit --none W_NONE.pth --percentile W_PCT.pth \
        [--root ../shared/data/dsb2018/stage1_train] [--split-file output/splits/dsb2018_folds.json --fold 0] \
        [--images 20] [--max-value 235] [--out output/normalize_16bit]

Takes held-back DSB2018 fluorescence images (grayscale, dark background), writes each as a 16-bit
TIFF whose values span 0..``--max-value`` (``round(v / max(v) * max_value)`` of the 8-bit PNG: what
a microscope writing 16-bit files with a small range gives), reads it back with the project's
reader (16-bit / 65535) and counts the nuclei found, after post-processing with each
checkpoint's ``test`` settings, by:

- ``none`` model (trained with ``model.input.normalize: none``) on the PNG and on the TIFF;
- the same model with percentile normalisation switched on at inference only (no retraining);
- ``percentile`` model (trained with ``normalize: percentile``) on the PNG and on the TIFF.

Prints per-image counts and Kaggle scores against the ground truth, and the totals.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from PIL import Image


from maskrcnn.data.dsb2018 import DSB2018Dataset
from maskrcnn.formats.image_files import read_image
from maskrcnn.inference.checkpoint import load_model
from maskrcnn.evaluation.kaggle import image_score
from maskrcnn.inference.filtering import filter_predictions


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.normalize_16bit", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--none", required=True, help="checkpoint trained with model.input.normalize: none")
    p.add_argument("--percentile", required=True, help="checkpoint trained with model.input.normalize: percentile")
    p.add_argument("--root", default="../shared/data/dsb2018/stage1_train")
    p.add_argument("--split-file", default="output/splits/dsb2018_folds.json")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--max-value", type=int, default=235)
    p.add_argument("--out", default="output/normalize_16bit")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    m_none, c_none = load_model(args.none, "cpu")
    m_pct, c_pct = load_model(args.percentile, "cpu")
    m_none_pct, _ = load_model(args.none, "cpu")
    m_none_pct.normalize = "percentile"  # the none model, normalising at inference only
    for m, name in ((m_none, "none"), (m_pct, "percentile")):
        print(f"{name}: {getattr(m, 'normalize')} ({m.percentile_low}-{m.percentile_high})")

    ds = DSB2018Dataset(args.root, channels=1)
    folds = {}
    if args.split_file and os.path.isfile(args.split_file):
        with open(args.split_file) as f:
            folds = json.load(f)["folds"]
    strata = ds.strata()
    pick = [i for i, s in enumerate(strata) if s.endswith("/gray/dark")
            and (not folds or folds.get(ds.image_ids[i]) == args.fold)][: args.images]
    print(f"{len(pick)} fluorescence images{' of fold %d' % args.fold if folds else ''}; 16-bit range 0-{args.max_value}")
    variants = [("none, PNG", m_none, c_none, "png"), ("none, 16-bit TIFF", m_none, c_none, "tif"),
                ("none + percentile at inference, 16-bit TIFF", m_none_pct, c_none, "tif"),
                ("percentile, PNG", m_pct, c_pct, "png"), ("percentile, 16-bit TIFF", m_pct, c_pct, "tif")]
    header = "| image | size | GT | " + " | ".join(v[0] for v in variants) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    tot = {v[0]: [0, 0.0] for v in variants}
    gt_total = 0
    with torch.no_grad():
        for i in pick:  # a loop over images
            s = ds.load(i)
            png = ds.image_path(s.image_id)
            u8 = np.asarray(Image.open(png).convert("L"))
            u16 = np.round(u8.astype(np.float64) / max(1, int(u8.max())) * args.max_value).astype(np.uint16)
            tif = os.path.join(args.out, f"{s.image_id[:12]}.tif")
            Image.fromarray(u16).save(tif)
            images = {"png": s.image, "tif": read_image(tif, channels=1)}
            cells = []
            for name, model, cfg, kind in variants:
                final = filter_predictions(model([images[kind]])[0], cfg.test)
                sc = image_score(final, s.instances)
                tot[name][0] += len(final)
                tot[name][1] += sc
                cells.append(f"{len(final)} ({sc:.2f})")
            gt_total += len(s.instances)
            print(f"| {s.image_id[:8]} | {s.image.shape[2]}x{s.image.shape[1]} | {len(s.instances)} | "
                  + " | ".join(cells) + " |", flush=True)
    n = max(1, len(pick))
    print(f"| all | | {gt_total} | " + " | ".join(f"{tot[v[0]][0]} ({tot[v[0]][1] / n:.3f})" for v in variants) + " |")
    print("cells found (mean Kaggle score of the images)")


if __name__ == "__main__":
    main()
