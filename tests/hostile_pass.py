"""A hostile pass over issue 23's classes, beyond the cases of ``tests/bad_inputs.py``: each case is
run through its front end's ``main(argv)`` in a temp folder and sorted into one outcome:

- ``clear error``: exit 2, one ``error:`` line holding the expected words, nothing written;
- ``handled``: the documented non-error behaviour (exit 0 or 3, a warning, the good images' results);
- ``silently wrong``: exit 0 or 3 without the expected warning or result;
- ``traceback``: an exception escaped (a bug of ours);
- ``data loss``: an input file the run was given changed or vanished (checked for every case).

    python -m tests.hostile_pass            # the table and the counts per class

It is a script, not a test: ``tests/test_bad_inputs.py`` keeps the table's behaviour; this counts.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from tests.bad_inputs import Files, Outcome, _rows, attempt, build_files, injected, predict_args


@dataclass
class Hostile:
    cls: str  # one of CLASSES
    name: str
    tool: str
    argv: Callable[[Files, str], List[str]]
    words: Sequence[str] = ()  # a clear error holding these, or:
    handled: Optional[Callable[[Outcome, Files, str], bool]] = None  # the documented behaviour
    marks: Dict[str, str] = field(default_factory=dict)


CLASSES = ("outputs over inputs", "one image kills the run", "settings that mean something else",
           "readers that drop or misread", "faults mid-write")


def fixtures(f: Files) -> None:
    """Files of this pass only (the bad-input fixtures are there too)."""
    from maskrcnn.config import load_config, to_dict
    from maskrcnn.formats.rle import encode
    from maskrcnn.model import build_model

    rng = np.random.default_rng(9)
    good = rng.integers(0, 255, (40, 48), dtype=np.uint8)
    os.symlink(f.p("images", "b.png"), f.p("link_to_b.png"))
    f.image("mixed/good.png", good)
    pages = [Image.fromarray(good), Image.fromarray(255 - good)]
    pages[0].save(f.p("mixed", "two_pages.tif"), save_all=True, append_images=pages[1:])
    with open(f.p("images", "a.png"), "rb") as fh:
        png = fh.read()
    f.write("mixed/cut.png", png[: len(png) // 3])
    os.symlink("missing.png", f.p("mixed", "dangling.png"))
    f.image("big2/good.png", good)
    f.image("big2/huge.png", np.zeros((2500, 2500), np.uint8))
    f.image("tiled/wide.png", np.zeros((1200, 1200), np.uint8))
    frames = [Image.fromarray(good), Image.fromarray(good[::-1].copy())]
    f.image("apng/good.png", good)
    frames[0].save(f.p("apng", "anim.png"), save_all=True, append_images=frames[1:])
    f.image("long_csv/" + "z" * 250 + ".png", good)
    # settings
    f.write("nested_dup.yaml", "model:\n  roi_heads: {num_classes: 1}\n  roi_heads: {num_classes: 3}\n")
    f.write("base_dup.yaml", "solver:\n  lr: 0.1\nsolver:\n  lr: 0.2\n")
    f.write("child_of_dup.yaml", "base: base_dup.yaml\ntrain: {device: cpu}\n")
    f.write("only_base_empty.yaml", "base: comments.yaml\n")
    cfg3 = load_config(f.p("tiny.yaml"), ["data.classes=[x,y,z]"])
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg3.model, load_weights=False, verbose=False).state_dict(),
                "config": to_dict(cfg3), "iteration": 0}, f.p("tiny_xyz.pth"))
    with open(f.p("tiny.pth"), "rb") as src:
        ck = torch.load(src, weights_only=True)
    torch.save({"model": ck["model"], "config": [1, 2], "iteration": 0}, f.p("config_list.pth"))
    # readers
    obj = np.zeros((40, 48), bool)
    obj[2:9, 3:20] = True
    rle = encode(obj)
    f.write("labels_twice_ws.csv", f"id,annotation,width,height\na,{rle},48,40\na,{rle.replace(' ', '  ')},48,40\n")
    f.write("coco_anns_dict.json", '{"images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 48}], '
            '"annotations": {}, "categories": [{"id": 1, "name": "cell"}]}')
    f.write("coco_gt_float_id.json", '{"images": [{"id": 1.5, "file_name": "a.png", "height": 40, "width": 48}], '
            '"annotations": [], "categories": [{"id": 1, "name": "cell"}]}')
    f.write("dsb_train.yaml", open(f.p("train.yaml")).read().replace("format: synthetic", "format: dsb2018"))
    f.write("resume_str/run_marker.json", "{}\n")
    f.write("resume_str/last_checkpoint", "model_0000001.pth\n")
    with open(f.p("config_string.pth"), "rb") as src:
        f.write("resume_str/model_0000001.pth", src.read())
    f.write("metrics_only/metrics.jsonl", '{"iteration": 1}\n')
    signed = __import__("PIL.TiffImagePlugin", fromlist=["x"]).ImageFileDirectory_v2()
    signed[339] = 2
    f.image("signed16/good.png", good)
    Image.fromarray((good.astype(np.uint16) * 200)).save(f.p("signed16", "s16.tif"), tiffinfo=signed)
    f.image("dsb_link/ok/images/ok.png", good)
    os.makedirs(f.p("dsb_link", "gone", "images"))
    os.symlink("missing.png", f.p("dsb_link", "gone", "images", "gone.png"))
    f.write("thr_mixed.yaml", "score_thresh: [0.9]\ntest:\n  mask_thresh: [0.4]\n")
    f.write("folds.json", json.dumps({"folds": {"a": 0, "b": 1, "c": 1, "d": 1}, "strata": {}}))


def snapshot(root: str) -> Dict[str, str]:
    """Hash of every file under ``root`` (the inputs), symlinks by their target."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in files:
            p = os.path.join(d, n)
            if os.path.islink(p):
                out[p] = "link:" + os.readlink(p)
                continue
            with open(p, "rb") as fh:
                out[p] = hashlib.sha1(fh.read()).hexdigest()
    return out


def exit3_rows(n_rows: int, bad: Sequence[str], out: str = "sub.csv"):
    def ok(o: Outcome, f: Files, t: str) -> bool:
        rows = _rows(os.path.join(t, out))[1:] if os.path.isfile(os.path.join(t, out)) else []
        return (o.code == 3 and len({r[0] for r in rows}) == n_rows
                and all(b in o.err.split("could not be read")[-1] for b in bad))
    return ok


def code_is(code: int, *warn_words: str, path: str = ""):
    def ok(o: Outcome, f: Files, t: str) -> bool:
        warned = all(w in o.err for w in warn_words)
        return o.code == code and warned and (not path or os.path.exists(os.path.join(t, path)))
    return ok


def nothing_left(code: int):
    def ok(o: Outcome, f: Files, t: str) -> bool:
        return o.code == code and os.listdir(t) == []
    return ok


def _train(f: Files, t: str, *extra: str, config: str = "train.yaml") -> List[str]:
    return [f.p(config), "--set", f"train.output_dir={t}/run", *extra]


def _label(f: Files, t: str, images: str, *extra: str) -> List[str]:
    return ["label", "--weights", f.p("tiny.pth"), "--images", f.p(images), "--out", os.path.join(t, "pl"),
            "--device", "cpu", "--keep", "0", "--ignore", "0", "--no-progress", "--classes", "a,b,c", *extra]


O, B, S, R, W = CLASSES
CASES: List[Hostile] = [
    # ----------------------------------------------------------------- outputs over inputs
    Hostile(O, "predict --out images/../images/b.png", "predict",
            lambda f, t: predict_args(f, t, out=os.path.join(f.p("images"), "..", "images", "b.png")), ["input"]),
    Hostile(O, "predict --out a symlink to an input image", "predict",
            lambda f, t: predict_args(f, t, out=f.p("link_to_b.png")), ["input"]),
    Hostile(O, "predict --format dsb --out the --config", "predict",
            lambda f, t: predict_args(f, t, "--format", "dsb", "--config", f.p("tiny.yaml"), out=f.p("tiny.yaml")),
            ["input", "tiny.yaml"]),
    Hostile(O, "predict --format coco --out the --coco-gt", "predict",
            lambda f, t: predict_args(f, t, "--format", "coco", "--coco-gt", f.p("coco_zero_anns.json"),
                                      out=f.p("coco_zero_anns.json")), ["input"]),
    Hostile(O, "predict --format labels --out a file", "predict",
            lambda f, t: predict_args(f, t, "--format", "labels", out=f.p("labels.csv")), ["labels.csv"]),
    Hostile(O, "viz --out the --gt CSV", "viz",
            lambda f, t: ["--image", f.p("images", "a.png"), "--gt", f.p("labels.csv"), "--out", f.p("labels.csv")],
            ["input", "labels.csv"]),
    Hostile(O, "viz --out the --pred CSV", "viz",
            lambda f, t: ["--image", f.p("images", "a.png"), "--pred", f.p("sub.csv"), "--out", f.p("sub.csv")],
            ["input", "sub.csv"]),
    Hostile(O, "viz --images --out a folder holding the images", "viz",
            lambda f, t: ["--images", f.p("images"), "--out", f.root], ["holds an input"]),
    Hostile(O, "evaluate tune --out the --labels", "evaluate",
            lambda f, t: ["tune", "--predictions", f.p("nope"), "--labels", f.p("labels.csv"), "--out", f.p("labels.csv")],
            ["input", "labels.csv"]),
    Hostile(O, "pseudo_label --out the weights' folder", "pseudo_label",
            lambda f, t: _label(f, t, "images")[:6] + [f.root] + _label(f, t, "images")[7:], ["holds an input"]),
    Hostile(O, "pseudo_label split --labeled the split file", "pseudo_label",
            lambda f, t: ["split", "--split-file", f.p("folds.json"), "--labeled", f.p("folds.json"), "--unlabeled",
                          os.path.join(t, "u.json")], ["input", "folds.json"]),
    Hostile(O, "train into a folder holding someone's metrics.jsonl", "train",
            lambda f, t: [f.p("train.yaml"), "--set", f"train.output_dir={f.p('metrics_only')}"],
            ["metrics.jsonl", "no run marker"]),
    Hostile(O, "train --resume over a user's config.yaml", "train",
            lambda f, t: [f.p("train.yaml"), "--resume", "--set", f"train.output_dir={f.p('user_run')}"],
            ["config.yaml", "no run marker"]),
    # ----------------------------------------------------------------- one image kills the run
    Hostile(B, "a folder of 1 good, 2-page TIFF, truncated, dangling link", "predict",
            lambda f, t: predict_args(f, t, images=f.p("mixed")),
            handled=exit3_rows(4, ["two_pages.tif", "cut.png", "dangling.png"])),
    Hostile(B, "scale=8 TTA on a 2500x2500 image, 2 GiB free", "predict",
            lambda f, t: predict_args(f, t, "--tta", "scale=8", images=f.p("big2")),
            handled=exit3_rows(2, ["huge.png"]), marks={"free_gib": "2"}),
    Hostile(B, "--format coco with a too-large image", "predict",
            lambda f, t: predict_args(f, t, "--format", "coco", images=f.p("big2"), out=os.path.join(t, "r.json")),
            handled=code_is(3, "huge.png", path="r.json"), marks={"free_gib": "0.1"}),
    Hostile(B, "--format labels with an unreadable image", "predict",
            lambda f, t: predict_args(f, t, "--format", "labels", images=f.p("imgs_garbage"),
                                      out=os.path.join(t, "labels")),
            handled=lambda o, f, t: o.code == 3 and os.listdir(os.path.join(t, "labels")) == ["good.png"]),
    Hostile(B, "pseudo_label with a too-large image", "pseudo_label", lambda f, t: _label(f, t, "big2"),
            handled=code_is(3, "huge.png", path="pl/pseudo_labels.npz"), marks={"free_gib": "0.1"}),
    Hostile(B, "--tile 512 makes a large image fit", "predict",
            lambda f, t: predict_args(f, t, "--tile", "512", "--tile-overlap", "64", images=f.p("tiled")),
            handled=code_is(0, path="sub.csv"), marks={"free_gib": "0.05"}),
    Hostile(B, "allocation failure with --strict", "predict",
            lambda f, t: predict_args(f, t, "--strict", images=f.p("imgs_big")), ["big.png", "out of memory"],
            marks={"oom_on": "3000"}),
    # ----------------------------------------------------------------- settings
    Hostile(S, "a key twice inside model:", "train", lambda f, t: _train(f, t, config="nested_dup.yaml"),
            ["'roi_heads'", "twice"]),
    Hostile(S, "a key twice in a base: file", "train", lambda f, t: _train(f, t, config="child_of_dup.yaml"),
            ["'solver'", "twice", "base_dup.yaml"]),
    Hostile(S, "a config whose base is comments only", "train", lambda f, t: _train(f, t, config="only_base_empty.yaml"),
            ["empty", "comments.yaml"]),
    Hostile(S, "anchor aspect ratio nan", "train", lambda f, t: _train(f, t, "model.anchors.aspect_ratios=[.nan]"),
            ["aspect_ratios", "nan"]),
    Hostile(S, "crop_size [0, 64]", "train", lambda f, t: _train(f, t, "data.augment.crop_size=[0,64]"), ["crop_size"]),
    Hostile(S, "num_classes 0", "train", lambda f, t: _train(f, t, "model.roi_heads.num_classes=0"), ["num_classes"]),
    Hostile(S, "cells_per_image [5, 2]", "train", lambda f, t: _train(f, t, "data.synthetic.cells_per_image=[5,2]"),
            ["cells_per_image"]),
    Hostile(S, "scale_range [0, 1]", "train", lambda f, t: _train(f, t, "data.augment.scale_range=[0,1]"),
            ["scale_range"]),
    Hostile(S, "--tta scale=0.01", "predict", lambda f, t: predict_args(f, t, "--tta", "scale=0.01"), ["scale", "0.01"]),
    Hostile(S, "--tta scale=3+scale=3 (9 in all)", "predict", lambda f, t: predict_args(f, t, "--tta", "scale=3+scale=3"),
            ["scale", "9"]),
    Hostile(S, "--tile 100 --tile-overlap 60", "predict",
            lambda f, t: predict_args(f, t, "--tile", "100", "--tile-overlap", "60"), ["tile_overlap", "60"]),
    Hostile(S, "an ensemble with other class names", "predict",
            lambda f, t: predict_args(f, t, weights=[f.p("tiny.pth"), f.p("tiny_xyz.pth")]), ["ensemble"]),
    Hostile(S, "--set with one key twice", "predict",
            lambda f, t: predict_args(f, t, "--set", "test.min_area=[5]", "test.min_area=[50]"), ["min_area", "twice"]),
    Hostile(S, "thresholds with top-level keys beside test:", "predict",
            lambda f, t: predict_args(f, t, "--thresholds", f.p("thr_mixed.yaml")), ["score_thresh", "test"]),
    Hostile(S, "evaluate tune --out ''", "evaluate",
            lambda f, t: ["tune", "--predictions", f.p("nope"), "--labels", f.p("labels.csv"), "--out", ""], ["empty"]),
    Hostile(S, "viz --out ''", "viz", lambda f, t: ["--image", f.p("images", "a.png"), "--out", ""], ["empty"]),
    # ----------------------------------------------------------------- readers
    Hostile(R, "an animated PNG (2 frames)", "predict", lambda f, t: predict_args(f, t, images=f.p("apng")),
            handled=exit3_rows(2, ["anim.png"])),
    Hostile(R, "a 16-bit signed TIFF", "predict",
            lambda f, t: predict_args(f, t, images=f.p("signed16")), handled=exit3_rows(2, ["s16.tif"])),
    Hostile(R, "a DSB-layout folder with a dangling image link", "predict",
            lambda f, t: predict_args(f, t, images=f.p("dsb_link")), handled=exit3_rows(2, ["gone.png"])),
    Hostile(R, "labels: one object twice, other spacing", "evaluate",
            lambda f, t: ["score", "--submission", f.p("sub.csv"), "--labels", f.p("labels_twice_ws.csv")],
            ["same object", "line 3"]),
    Hostile(R, "COCO annotations as an empty dict", "make_cache",
            lambda f, t: ["--format", "coco", "--ann-file", f.p("coco_anns_dict.json"), "--root", f.p("coco_images"),
                          "--out", os.path.join(t, "c.npz")], ["no annotations"]),
    Hostile(R, "--coco-gt image id 1.5", "predict",
            lambda f, t: predict_args(f, t, "--format", "coco", "--coco-gt", f.p("coco_gt_float_id.json"),
                                      out=os.path.join(t, "r.json")), ["1.5", "integers"]),
    Hostile(R, "evaluate coco, GT image without id", "evaluate",
            lambda f, t: ["coco", "--predictions", f.p("empty_results.json"), "--labels", f.p("coco_gt_no_id.json")],
            ["no id"]),
    Hostile(R, "a checkpoint whose config is a list", "predict",
            lambda f, t: predict_args(f, t, weights=[f.p("config_list.pth")]), ["config_list.pth", "mapping"]),
    Hostile(R, "--resume from a checkpoint whose config is a string", "train",
            lambda f, t: [f.p("train.yaml"), "--resume", "--set", f"train.output_dir={f.p('resume_str')}"],
            ["not a mapping"]),
    Hostile(R, "evaluate labels of a DSB folder with an empty masks/", "evaluate",
            lambda f, t: ["labels", "--config", f.p("dsb_train.yaml"), "--split", "all", "--out",
                          os.path.join(t, "l.csv"), "--set", f"data.root={f.p('dsb_bare')}"],
            handled=code_is(0, "no mask PNG", "d2", path="l.csv")),
    Hostile(R, "viz --pred folder holding an RGB image", "viz",
            lambda f, t: ["--image", f.p("images", "a.png"), "--pred", f.p("imgs_rgba"), "--id", "rgba", "--out",
                          os.path.join(t, "o.png")], ["one channel"]),
    # ----------------------------------------------------------------- faults mid-write
    Hostile(W, "disk full writing COCO results", "predict",
            lambda f, t: predict_args(f, t, "--format", "coco", out=os.path.join(t, "r.json")),
            ["disk full writing", "r.json"], marks={"enospc": "1"}),
    Hostile(W, "disk full writing label images", "predict",
            lambda f, t: predict_args(f, t, "--format", "labels", out=os.path.join(t, "labels")),
            ["disk full writing", "a.png"], marks={"enospc": "1"}),
    Hostile(W, "disk full writing evaluate labels", "evaluate",
            lambda f, t: ["labels", "--config", f.p("train.yaml"), "--out", os.path.join(t, "l.csv")],
            ["disk full writing", "l.csv"], marks={"enospc": "1"}),
    Hostile(W, "disk full writing pseudo-labels", "pseudo_label", lambda f, t: _label(f, t, "images"),
            ["disk full writing"], marks={"enospc": "1"}),
    Hostile(W, "Ctrl-C during a csv prediction", "predict", lambda f, t: predict_args(f, t),
            handled=nothing_left(130), marks={"interrupt_on": "2"}),
    Hostile(W, "a 250-character id in a csv", "predict", lambda f, t: predict_args(f, t, images=f.p("long_csv")),
            handled=lambda o, f, t: o.code == 0 and _rows(os.path.join(t, "sub.csv"))[1][0] == "z" * 250),
    Hostile(W, "an --out name of 300 characters", "predict", lambda f, t: predict_args(f, t, out=os.path.join(t, "s" * 300)),
            ["255"]),
    Hostile(W, "read-only file system writing the submission", "predict", lambda f, t: predict_args(f, t),
            ["read-only file system writing", "sub.csv"], marks={"erofs": "1"}),
]


def classify(case: Hostile, o: Outcome, before: Dict[str, str], after: Dict[str, str], f: Files, t: str) -> str:
    if o.code is None or "Traceback (most recent call last)" in o.err:
        return "traceback"
    if any(after.get(p) != h for p, h in before.items()):  # an input changed or vanished (new files are no loss)
        return "data loss"
    if case.handled is not None:
        return "handled" if case.handled(o, f, t) else "silently wrong"
    if o.code == 2 and len(o.error_lines) == 1 and all(w.lower() in o.error_lines[0].lower() for w in case.words):
        return "clear error"
    return "silently wrong" if o.code in (0, 3) else f"other (exit {o.code})"


def main() -> int:
    torch.set_num_threads(1)
    counts: Dict[str, Counter] = defaultdict(Counter)
    with tempfile.TemporaryDirectory() as root:
        f = build_files(os.path.join(root, "files"))
        fixtures(f)
        for k, case in enumerate(CASES):
            t = os.path.join(root, f"case{k}")
            os.makedirs(t)
            before = snapshot(f.root)
            with injected(case.marks):
                o = attempt(case.tool, case.argv(f, t))
            verdict = classify(case, o, before, snapshot(f.root), f, t)
            counts[case.cls][verdict] += 1
            what = o.error_lines[0][:110] if o.error_lines else o.describe()[:110]
            print(f"| {case.cls} | {case.name} | {case.tool} | {verdict} | {what} |".replace("\n", " "), flush=True)
    print()
    kinds = ("clear error", "handled", "silently wrong", "traceback", "data loss")
    print("| class | cases | " + " | ".join(kinds) + " |")
    for c in CLASSES:
        n = sum(counts[c].values())
        print(f"| {c} | {n} | " + " | ".join(str(counts[c][k]) for k in kinds) + " |")
    total = Counter()
    for c in counts.values():
        total.update(c)
    print(f"| all | {sum(total.values())} | " + " | ".join(str(total[k]) for k in kinds) + " |")
    return 0 if total["traceback"] + total["data loss"] + total["silently wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
