"""How many predicted objects are split into several pieces, with and without ``test.one_piece``.

For each image: one raw prediction (the checkpoint's test settings, TTA included), post-processed
twice, with ``test.one_piece`` off and on; printed per image and in total: objects, objects of
more than one 4-connected piece (in the final masks, and in the label image ``--format labels``
writes), the pixels the rule removes, and the seconds ``filter_predictions`` took each way.

    python -m bench.one_piece --weights W.pth --images ../shared/data/dsb2018/stage1_train \
        [--split-file output/splits/dsb2018_folds.json --fold 0] [--limit 20]

With a split file, the first ``--limit`` images of that fold (images the model did not train on);
else the first ``--limit`` images of the folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch

from maskrcnn.formats.image_files import read_image
from maskrcnn.formats.label_images import masks_from_label_array
from maskrcnn.inference.checkpoint import load_model
from maskrcnn.formats.label_images import to_label_image
from maskrcnn.inference.filtering import filter_predictions
from maskrcnn.inference.predict_run import image_ids, list_images
from maskrcnn.inference.predictor import build_predictor
from maskrcnn.ops.pieces import count_pieces


def split_count(final) -> tuple:
    """(objects, objects of > 1 piece in the masks, ids of > 1 piece in the label image)."""
    if len(final) == 0:
        return 0, 0, 0
    in_masks = int((count_pieces(final.masks.crops) > 1).sum())
    lab = masks_from_label_array(to_label_image(final).astype("int64"))
    in_labels = int((count_pieces(lab.crops) > 1).sum()) if len(lab) else 0
    return len(final), in_masks, in_labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--split-file", default="")
    p.add_argument("--fold", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    paths = list_images(args.images)
    if args.split_file:
        with open(args.split_file) as f:
            folds = json.load(f)
        keep = {i for i, k in folds["folds"].items() if k == args.fold}  # {id: fold} (maskrcnn.data.splits)
        paths = [pth for pth, i in zip(paths, image_ids(paths)) if i in keep]
    paths = paths[: args.limit]
    model, cfg = load_model(args.weights, "cpu")
    predictor = build_predictor([model], cfg.test, device="cpu")
    off_cfg = dataclasses.replace(cfg.test, one_piece=False)
    on_cfg = dataclasses.replace(cfg.test, one_piece=True)
    tot = {"off": [0, 0, 0], "on": [0, 0, 0], "px": 0, "t_off": 0.0, "t_on": 0.0}
    print(f"{'image':<20}{'objects':>8}{'split':>7}{'split(labels)':>14}{'objects(on)':>12}{'split(on)':>10}{'px removed':>11}")
    for path, iid in zip(paths, image_ids(paths)):
        raw = predictor.predict_raw(read_image(path))
        t0 = time.perf_counter()
        off = filter_predictions(raw, off_cfg)
        t1 = time.perf_counter()
        on = filter_predictions(raw, on_cfg)
        t2 = time.perf_counter()
        a, b = split_count(off), split_count(on)
        px = int(off.masks.areas().sum()) - int(on.masks.areas().sum()) if len(off) else 0
        for k in range(3):
            tot["off"][k] += a[k]
            tot["on"][k] += b[k]
        tot["px"] += px
        tot["t_off"] += t1 - t0
        tot["t_on"] += t2 - t1
        print(f"{iid[:18]:<20}{a[0]:>8}{a[1]:>7}{a[2]:>14}{b[0]:>12}{b[1]:>10}{px:>11}")
    print(f"total over {len(paths)} images ({os.path.basename(args.weights)}): one_piece off: {tot['off'][0]} objects, "
          f"{tot['off'][1]} of several pieces ({tot['off'][2]} in the label images); on: {tot['on'][0]} objects, "
          f"{tot['on'][1]} ({tot['on'][2]}); {tot['px']} pixels removed; postprocess {tot['t_off']:.2f} s off, "
          f"{tot['t_on']:.2f} s on")


if __name__ == "__main__":
    main()
