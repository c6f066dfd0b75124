"""What a model zoo export (fp16 weights) changes: size, weights and the objects predicted.

    python -m bench.zoo_fp16 --checkpoint output/nuclei_cpu/model_final.pth \
        --images ../shared/data/dsb2018/stage1_train [--limit 20] [--tta ""]

Exports the checkpoint with ``python -m maskrcnn zoo export``'s code into a temporary zoo, loads the
float32 checkpoint and the fp16 entry with the Python API (``maskrcnn.load_model``; the same test
settings: the checkpoint's, no thresholds file) and, on the first ``--limit`` images of
``--images`` (sorted by name; a flat folder or a DSB2018 folder), prints per image the objects
each finds, whether the label images are identical, and the Kaggle score of the fp16 objects
against the float32 objects as the reference (1.0: the same objects at every IoU threshold).
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
from PIL import Image

from maskrcnn import load_model
from maskrcnn.data.image_folders import list_image_files
from maskrcnn.evaluation.kaggle import image_score
from maskrcnn.formats.label_images import to_label_image
from maskrcnn.zoo.export import export


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.zoo_fp16", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--tta", default=None, help="--tta for both (default: the checkpoint's test.tta)")
    args = p.parse_args()
    paths = list_image_files(args.images)[: args.limit]
    with tempfile.TemporaryDirectory() as zoo:
        r = export(args.checkpoint, "fp16", out_dir=zoo)
        print(f"size: checkpoint {r['source_bytes'] / 2**20:.2f} MiB -> {r['bytes'] / 2**20:.2f} MiB "
              f"({r['bytes'] / r['source_bytes']:.3f}x); tensors {r['fp32_bytes'] / 2**20:.2f} MiB in float32 -> "
              f"{r['fp16_bytes'] / 2**20:.2f} MiB in float16; largest relative rounding error {r['max_rel_error']:.2e} "
              f"({r['worst']}); {r['flushed']} nonzero value(s) rounded to 0")
        full = load_model(args.checkpoint, device="cpu", thresholds=None, tta=args.tta)
        half = load_model(r["weights"], device="cpu", thresholds=None, tta=args.tta)
        print(f"{'image':<18}{'fp32':>6}{'fp16':>6}{'same labels':>13}{'pixels equal':>14}{'score vs fp32':>15}")
        n32 = n16 = same = 0
        scores = []
        for path in paths:
            image = np.asarray(Image.open(path))
            a, b = full.predict_instances(image), half.predict_instances(image)
            la, lb = to_label_image(a), to_label_image(b)
            s = image_score(b.masks, a.masks) if len(a) or len(b) else 1.0
            n32, n16, same = n32 + len(a), n16 + len(b), same + int(np.array_equal(la, lb))
            scores.append(s)
            px = float((la == lb).mean())
            print(f"{os.path.basename(path)[:16]:<18}{len(a):6d}{len(b):6d}{str(np.array_equal(la, lb)):>13}"
                  f"{px:14.6f}{s:15.4f}")
        print(f"{len(paths)} images: {n32} objects (fp32), {n16} (fp16); identical label images {same}/{len(paths)}; "
              f"mean score of fp16 vs fp32 {np.mean(scores):.4f}")


if __name__ == "__main__":
    main()
