"""What `evaluate.py score` (``score_files``) costs, time and peak memory, on an adversarial but
valid file and on a normal one, this tree against another revision (``--old``).

The adversarial file: one 520 x 704 image whose submission holds a frame-shaped mask
(a 2-pixel border of the whole image: its box is the image) and 999 tiny cells (2 x 2 pixels); the
label file holds the same objects. Until e1502d4 every mask was decoded into a crop padded to the
largest one, so this ~24 KB file cost 1,000 full images per side. The normal case: images of ~1,000
similar cells (ellipses of radius 4-14 px, predictions jittered, 5% false positives).

Each implementation scores each file in its own process (``score_files``, what `evaluate.py
score` runs); printed: seconds of the scoring call, peak RSS of the process (after imports, and at
the end) and the mAP, side by side, with the ratio. The old implementation is the package at
``--old`` (default e1502d4, the last one before run lists), extracted with ``git archive`` into a
temporary folder (the compiled extension is copied along when present).

    python -m bench.score_files [--cells 999] [--normal-images 16] [--old e1502d4] [--skip-old-adversarial]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 520, 704

# Runs in a fresh interpreter with the implementation's root first on sys.path.
CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from maskrcnn.evaluation.score import score_files
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
r = score_files(sys.argv[2], sys.argv[3])
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "rss_start_mb": rss0 / 1024, "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "mAP": r.summary["mAP"], "images": r.summary["num_images"], "rows": r.num_rows}))
"""


def write_adversarial(folder: str, cells: int) -> tuple:
    """(submission, labels) of the frame + ``cells`` tiny cells image; both hold the same objects."""
    from maskrcnn.formats.rle import encode

    frame = np.zeros((H, W), dtype=bool)
    frame[:2], frame[-2:], frame[:, :2], frame[:, -2:] = True, True, True, True
    rles = [encode(frame)]
    for y in range(5, H - 5, 6):
        for x in range(5, W - 5, 6):
            if len(rles) > cells:
                break
            m = np.zeros((H, W), dtype=bool)
            m[y:y + 2, x:x + 2] = True
            rles.append(encode(m))
    sub, lab = os.path.join(folder, "adversarial_sub.csv"), os.path.join(folder, "adversarial_labels.csv")
    with open(sub, "w") as f:
        f.write("id,predicted\n" + "".join(f"img,{r}\n" for r in rles))
    with open(lab, "w") as f:
        f.write("id,annotation,width,height\n" + "".join(f"img,{r},{W},{H}\n" for r in rles))
    return sub, lab


def write_normal(folder: str, images: int, cells: int, seed: int = 0) -> tuple:
    """(submission, labels) of ``images`` images of ~``cells`` similar cells each (bench.metric's
    data; jittered predictions may touch a neighbour, which both implementations report alike)."""
    from bench.metric import synthetic_image
    from maskrcnn.formats.kaggle_csv import masks_to_rows, write_labels, write_submission

    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for k in range(images):
        gt, pred = synthetic_image(rng, H, W, cells, "cpu")
        labels.append((f"im{k}", gt, "cell"))
        rows += masks_to_rows(f"im{k}", pred)
    sub, lab = os.path.join(folder, "normal_sub.csv"), os.path.join(folder, "normal_labels.csv")
    write_submission(rows, sub)
    write_labels(lab, labels)
    return sub, lab


def old_tree(rev: str, folder: str) -> str:
    """The package at git revision ``rev``, extracted into ``folder`` (with the compiled extension)."""
    dst = os.path.join(folder, f"old_{rev}")
    os.makedirs(dst)
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "maskrcnn"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dst], input=archive, check=True)
    for so in glob.glob(os.path.join(ROOT, "maskrcnn", "_C*.so")):
        shutil.copy(so, os.path.join(dst, "maskrcnn"))
    return dst


def run(root: str, sub: str, lab: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CHILD, root, sub, lab], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return {"failed": (res.stderr.strip().splitlines() or ["?"])[-1][:120], "wall": time.perf_counter() - t}
    return json.loads(res.stdout.strip().splitlines()[-1])


def fmt(r: dict) -> str:
    if "failed" in r:
        return f"failed after {r['wall']:.0f} s: {r['failed']}"
    return (f"{r['seconds']:8.2f} s  peak RSS {r['rss_peak_mb']:7.0f} MB (+{r['rss_peak_mb'] - r['rss_start_mb']:.0f} MB "
            f"over the {r['rss_start_mb']:.0f} MB after imports)  mAP {r['mAP']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=999, help="tiny cells beside the frame")
    ap.add_argument("--normal-images", type=int, default=16)
    ap.add_argument("--normal-cells", type=int, default=1000)
    ap.add_argument("--old", default="e1502d4", help="git revision of the implementation to compare with")
    ap.add_argument("--skip-old-adversarial", action="store_true", help="the old run takes ~7 GB and ~80 s")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adv = write_adversarial(tmp, args.cells)
        normal = write_normal(tmp, args.normal_images, args.normal_cells)
        old = old_tree(args.old, tmp)
        print(f"adversarial: 1 image {H}x{W}, frame + {args.cells} cells, submission {os.path.getsize(adv[0]) / 1e3:.0f} KB; "
              f"normal: {args.normal_images} images of ~{args.normal_cells} cells, submission "
              f"{os.path.getsize(normal[0]) / 1e6:.1f} MB; 1 torch thread")
        for name, (sub, lab), skip_old in (("adversarial", adv, args.skip_old_adversarial), ("normal", normal, False)):
            new = run(ROOT, sub, lab)
            before = {"failed": "skipped", "wall": 0.0} if skip_old else run(old, sub, lab)
            print(f"{name:<12} ours     {fmt(new)}")
            print(f"{'':<12} {args.old:<8} {fmt(before)}")
            if "failed" not in new and "failed" not in before:
                print(f"{'':<12} ratio    time {before['seconds'] / new['seconds']:.1f}x, "
                      f"peak RSS {before['rss_peak_mb'] / new['rss_peak_mb']:.1f}x")


if __name__ == "__main__":
    main()
