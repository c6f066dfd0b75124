"""The bad-input table: what a careless or hostile user may hand each front end, and what must happen.

Every case runs a front end's ``main(argv)`` in this process (it returns the exit code; a bug of
ours escapes as an exception, i.e. a traceback). ``Expect.error`` means: exit 2 and exactly one
stderr line ``error: ...`` holding the given words (the thing and where it is); ``Expect.ok``
means the documented behaviour, checked by a function. Cases marked ``before_images`` must fail
before predict reads any image (validation before the expensive work).

``tests/test_bad_inputs.py`` runs the table; ``python -m tests.bad_inputs`` prints it with what
happens now (case, outcome, message), which is how the table in docs/reliability.md was made.
"""
from __future__ import annotations

import contextlib
import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

H, W = 40, 48  # image size of the predict and score cases

TINY_MODEL = """
model:
  backbone: {name: resnet18, norm: gn, freeze_at: 0, stem_out_channels: 32, res2_out_channels: 32}
  fpn: {out_channels: 64, norm: gn}
  rpn: {pre_nms_topk_test: 50, post_nms_topk_test: 30}
  roi_heads: {num_classes: 3, box_fc_dim: 32, detections_per_image: 20, score_thresh: 0.0}
  mask_head: {num_convs: 1, conv_dim: 32, norm: gn}
  input: {in_channels: 1, pixel_mean: [0.5], pixel_std: [0.25]}
test: {score_thresh: [0.0]}
train: {device: cpu}
"""

TRAIN_TINY = TINY_MODEL + """
data: {format: synthetic, batch_size: 1, num_workers: 0, synthetic: {num_images: 4, height: 32, width: 32}}
solver: {max_iter: 1, warmup_iters: 0, steps: []}
"""


# ------------------------------------------------------------------------------ fixtures
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 40000) -> bytes:
    """A tiny PNG whose header claims ``side x side`` pixels (Pillow refuses it at open)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")


def _rect(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


class Files:
    """Every file the cases use, built once in ``root``."""

    def __init__(self, root: str):
        self.root = str(root)
        os.makedirs(self.root, exist_ok=True)

    def p(self, *parts) -> str:
        return os.path.join(self.root, *parts)

    def write(self, name: str, data) -> str:
        path = self.p(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb" if isinstance(data, (bytes, bytearray)) else "w") as f:
            f.write(data)
        return path

    def image(self, name: str, array: np.ndarray, mode: Optional[str] = None) -> str:
        path = self.p(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path)
        return path


def build_files(root: str) -> Files:
    from maskrcnn.config import load_config, to_dict
    from maskrcnn.formats.rle import encode
    from maskrcnn.model import build_model

    f = Files(root)
    # --- weights
    f.write("tiny.yaml", TINY_MODEL)
    f.write("train.yaml", TRAIN_TINY)
    cfg = load_config(f.p("tiny.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg.model, load_weights=False, verbose=False)
    state = model.state_dict()
    torch.save({"model": state, "config": to_dict(cfg), "iteration": 0}, f.p("tiny.pth"))
    torch.save(state, f.p("bare.pth"))
    nan_state = {k: v.clone() for k, v in state.items()}
    bad_key = next(k for k, v in nan_state.items() if v.is_floating_point() and "roi_heads" in k)
    nan_state[bad_key].view(-1)[0] = float("nan")
    f.nan_key = bad_key
    torch.save({"model": nan_state, "config": to_dict(cfg), "iteration": 0}, f.p("nan.pth"))
    other = load_config(f.p("tiny.yaml"), ["model.roi_heads.num_classes=2", "test.score_thresh=[0.0]"])
    torch.save({"model": build_model(other.model, load_weights=False, verbose=False).state_dict(),
                "config": to_dict(cfg), "iteration": 0}, f.p("other_arch.pth"))
    f.write("random.pth", np.random.default_rng(0).bytes(3000))
    f.write("empty.pth", b"")
    with open(f.p("tiny.pth"), "rb") as src:
        f.write("truncated.pth", src.read()[:5000])
    torch.save({"foo": 1}, f.p("no_model.pth"))
    os.makedirs(f.p("weights_dir.pth"), exist_ok=True)
    # --- images (values are arbitrary: the random model predicts what it predicts)
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        f.image(f"images/{name}.png", rng.integers(0, 255, (H, W), dtype=np.uint8))
    os.makedirs(f.p("no_images"), exist_ok=True)
    f.write("no_images/readme.txt", "not an image")
    good = rng.integers(0, 255, (H, W), dtype=np.uint8)
    with open(f.p("images", "a.png"), "rb") as src:
        png = src.read()
    for folder, name, data in [
        ("imgs_garbage", "bad.png", b"this is not a png"),
        ("imgs_zero", "zero.png", b""),
        ("imgs_truncated", "cut.png", png[: len(png) // 2]),
        ("imgs_bomb", "bomb.png", bomb_png()),
    ]:
        f.image(f"{folder}/good.png", good)
        f.write(f"{folder}/{name}", data)
    f.image("imgs_tiny/one.png", np.array([[128]], dtype=np.uint8))
    f.image("imgs_la/la.png", np.stack([good, np.full_like(good, 255)], -1), "LA")
    f.image("imgs_rgba/rgba.png", np.stack([good] * 3 + [np.full_like(good, 255)], -1))
    f.image("imgs_16bit/deep.png", good.astype(np.uint16) * 257)
    f.image("imgs_nan_tif/good.png", good)
    Image.fromarray(np.full((H, W), np.nan, dtype=np.float32)).save(f.p("imgs_nan_tif", "nan.tif"))
    f.image("imgs_dup/x.png", good)
    Image.fromarray(good).save(f.p("imgs_dup", "x.tif"))
    # --- test settings
    f.write("thr_len.yaml", "test:\n  score_thresh: [0.1, 0.2]\n")
    f.write("thr_range.yaml", "score_thresh: [1.5]\n")
    f.write("thr_nan.yaml", "mask_thresh: [.nan]\n")
    f.write("thr_negative.yaml", "min_area: [-5]\n")
    f.write("thr_list.yaml", "- 0.5\n- 0.6\n")
    f.write("thr_binary.yaml", bytes(range(256)) * 4)
    f.write("thr_unknown.yaml", "test:\n  score_threshold: [0.5]\n")
    # --- CSV files (two images, row-major)
    objs = {"a": [_rect(2, 9, 3, 20), _rect(15, 30, 10, 14), _rect(30, 38, 30, 46)], "b": [_rect(5, 25, 5, 9)]}
    f.write("labels.csv", "id,annotation,width,height,cell_type\n" + "".join(
        f"{i},{encode(m)},{W},{H},astro\n" for i, ms in objs.items() for m in ms))
    f.write("sub.csv", "id,predicted\n" + "".join(f"{i},{encode(m)}\n" for i, ms in objs.items() for m in ms))
    f.write("sub_col.csv", "id,predicted\n" + "".join(f"{i},{encode(m, 'col')}\n" for i, ms in objs.items() for m in ms))
    f.write("labels_col.csv", "id,annotation,width,height\n" + "".join(
        f"{i},{encode(m, 'col')},{W},{H}\n" for i, ms in objs.items() for m in ms))
    f.write("sub_binary.csv", bytes(range(256)) * 8)
    f.write("sub_nul.csv", "id,predicted\na,1 3\0\n")
    f.write("sub_header.csv", "ImageId,EncodedPixels\na,1 3\n")
    f.write("sub_fields.csv", "id,predicted\na,1 3,extra\n")
    os.makedirs(f.p("sub_dir.csv"), exist_ok=True)
    f.write("labels_nan.csv", f"id,annotation,width,height\na,1 3,nan,{H}\n")
    f.write("labels_negative.csv", f"id,annotation,width,height\na,1 3,-4,{H}\n")
    f.write("labels_huge.csv", "id,annotation,width,height\na,1 3,10000000000,10000000000\n")
    f.write("labels_bad_rle.csv", f"id,annotation,width,height\na,1 x,{W},{H}\n")
    f.write("labels_header.csv", "id,predicted\na,1 3\n")
    f.write("labels_empty.csv", "")
    # --- viz
    f.write("gt_empty.csv", "")
    f.write("gt_header.csv", "image,rle\na,1 3\n")
    os.makedirs(f.p("masks_none"), exist_ok=True)
    # --- COCO json and DSB folders (train-time readers)
    f.write("coco_nan.json", '{"images": [{"id": 1, "file_name": "a.png", "height": %d, "width": %d}], '
            '"annotations": [{"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0, '
            '"segmentation": [[1, 1, NaN, 10, 10, 10, 10, 1]], "bbox": [1, 1, 9, 9], "area": 81}], '
            '"categories": [{"id": 1, "name": "cell"}]}' % (H, W))
    f.image("coco_images/a.png", good)
    f.write("coco_truncated.json", '{"images": [{"id": 1, ')
    f.write("coco_huge.json", '{"images": [{"id": 1, "file_name": "a.png", "height": %d, "width": %d}], '
            '"annotations": [{"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0, '
            '"segmentation": [[1, 1, 1e9, 10, 10, 10, 10, 1]], "bbox": [1, 1, 9, 9], "area": 81}], '
            '"categories": [{"id": 1, "name": "cell"}]}' % (H, W))
    f.write("sart_binary/train.csv", bytes(range(256)) * 8)
    f.write("garbage.npz", np.random.default_rng(3).bytes(5000))
    f.write("empty.yaml", "")
    f.write("sub_empty.csv", "")
    f.write("sub_odd.csv", "id,predicted\na,1 3 7\n")
    os.makedirs(f.p("readonly"), exist_ok=True)
    os.chmod(f.p("readonly"), 0o555)
    add_rgb_masks(f)
    add_round2_files(f)
    return f


# ------------------------------------------------------------------------------- running
@dataclass
class Outcome:
    code: Optional[int]  # None: an exception escaped (a traceback)
    out: str
    err: str
    exc: Optional[BaseException] = None
    images_read: int = 0

    @property
    def error_lines(self) -> List[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("error:")]

    def describe(self) -> str:
        if self.code is None:
            return f"traceback ({type(self.exc).__name__}: {str(self.exc).splitlines()[0][:100] if str(self.exc) else ''})"
        if self.code == 2 and self.error_lines:
            return f"exit 2: {self.error_lines[0][:120]}"
        warn = [ln for ln in self.err.splitlines() if "warning" in ln.lower()]
        return f"exit {self.code}" + (f" ({warn[0][:110]})" if warn else "")


def _tool(name: str):
    if name == "predict":
        from maskrcnn.cli.predict import main
    elif name == "evaluate":
        from evaluate import main
    elif name == "train":
        from train import main
    elif name == "viz":
        from maskrcnn.cli.viz import main
    elif name == "make_cache":
        from maskrcnn.cli.make_cache import main
    elif name == "synthetic":
        from maskrcnn.cli.synthetic import main
    elif name == "pseudo_label":
        from maskrcnn.cli.pseudo_label import main
    else:
        raise KeyError(name)
    return main


def attempt(tool: str, argv: Sequence[str]) -> Outcome:
    """Run ``tool``'s ``main(argv)`` here, capturing stdout/stderr, counting images predict reads."""
    import warnings

    from maskrcnn.inference import predict_run

    reads = [0]
    real_read = predict_run.read_image_with_depth

    def counting_read(*a, **k):
        reads[0] += 1
        return real_read(*a, **k)

    out, err = io.StringIO(), io.StringIO()
    predict_run.read_image_with_depth = counting_read
    old_debug = os.environ.pop("MASKRCNN_DEBUG", None)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = lambda m, c, fn, ln, file=None, line=None: err.write(f"warning: {m}\n")
            try:
                code = _tool(tool)(list(argv))
                exc = None
            except BaseException as e:  # noqa: BLE001 - a traceback is an outcome here
                code, exc = None, e
    finally:
        predict_run.read_image_with_depth = real_read
        if old_debug is not None:
            os.environ["MASKRCNN_DEBUG"] = old_debug
    return Outcome(code, out.getvalue(), err.getvalue(), exc, reads[0])


SCRIPTS = {"predict": ["predict.py"], "evaluate": ["evaluate.py"], "train": ["train.py"], "viz": ["-m", "maskrcnn", "viz"],
           "make_cache": ["-m", "maskrcnn", "make_cache"], "synthetic": ["-m", "maskrcnn", "synthetic"],
           "pseudo_label": ["-m", "maskrcnn", "pseudo_label"]}


def attempt_subprocess(tool: str, argv: Sequence[str], timeout: float = 300) -> Outcome:
    """Run ``tool`` as a user does (``python predict.py ...``) from the repository root; a traceback
    on stderr counts as an escaped exception."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MASKRCNN_DEBUG", None)
    res = subprocess.run([sys.executable, *SCRIPTS[tool], *argv], cwd=repo, capture_output=True, text=True,
                         timeout=timeout, env=env)
    exc = RuntimeError(res.stderr.strip().splitlines()[-1]) if "Traceback (most recent call last)" in res.stderr else None
    return Outcome(None if exc else res.returncode, res.stdout, res.stderr, exc)


# --------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One bad input: ``tool`` run with ``argv(files, tmp)``; ``words`` must appear in the one
    ``error:`` line, or ``check(outcome, files, tmp)`` holds for a documented non-error behaviour."""

    name: str
    tool: str
    argv: Callable[[Files, str], List[str]]
    words: Sequence[str] = ()
    check: Optional[Callable[[Outcome, Files, str], None]] = None
    before_images: bool = False
    slow: bool = False
    marks: Dict[str, str] = field(default_factory=dict)


def predict_args(f: Files, tmp: str, *extra, weights=None, images=None, out=None) -> List[str]:
    return ["--weights", *(weights or [f.p("tiny.pth")]), "--images", images or f.p("images"),
            "--out", out or os.path.join(tmp, "sub.csv"), "--device", "cpu", "--no-progress", *extra]


def score_args(f: Files, tmp: str, sub="sub.csv", labels="labels.csv", *extra) -> List[str]:
    return ["score", "--submission", f.p(sub), "--labels", f.p(labels), *extra]


def _rows(path: str) -> List[List[str]]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _skipped_image_run(bad_name: str):
    """A folder with one good and one unreadable image: the run goes on, the submission lists both
    ids (an empty row for the bad one), a warning and the summary name the file, exit code 3."""
    def check(o: Outcome, f: Files, tmp: str):
        assert o.code == 3, o.describe() + o.err[-2000:]
        rows = _rows(os.path.join(tmp, "sub.csv"))
        ids = {r[0] for r in rows[1:]}
        bad_id = os.path.splitext(bad_name)[0]
        assert ids == {"good", bad_id}, ids
        assert [r[1] for r in rows[1:] if r[0] == bad_id] == [""]
        warn = [ln for ln in o.err.splitlines() if ln.startswith("warning:") and bad_name in ln]
        assert warn, o.err
        assert "1 image(s) could not be read" in o.out + o.err and bad_name in (o.out + o.err).split("could not be read")[1]
    return check


def _rejected(*words):
    """``evaluate.py score`` of a submission Kaggle would reject: exit 1, each problem on an
    ``error:`` line naming the file and line, then the count."""
    def check(o: Outcome, f: Files, tmp: str):
        assert o.code == 1, o.describe() + o.err
        assert any(all(w in ln for w in words) for ln in o.error_lines), o.err
        assert "Kaggle would reject" in o.err
    return check


def _predicted_ok(o: Outcome, f: Files, tmp: str):
    assert o.code == 0, o.describe() + o.err[-2000:]
    assert len(_rows(os.path.join(tmp, "sub.csv"))) >= 2


def _score_hint(o: Outcome, f: Files, tmp: str):
    assert o.code == 0, o.describe()
    assert "try --order col" in o.err, o.err
    assert o.out.strip().splitlines()[-1] == "mAP 0.0000"


def _score_perfect(o: Outcome, f: Files, tmp: str):
    assert o.code == 0, o.describe() + o.err
    assert o.out.strip().splitlines()[-1] == "mAP 1.0000", o.out


def _out_folder_made(o: Outcome, f: Files, tmp: str):
    assert o.code == 0, o.describe() + o.err[-2000:]
    assert os.path.isfile(os.path.join(tmp, "new", "deeper", "sub.csv"))


def _no_cuda(o: Outcome, f: Files, tmp: str):
    assert o.code == 2 and o.error_lines == [
        "error: CUDA is not available: turn on the GPU accelerator or use --device auto"], o.describe() + o.err


def _viz_rgb_mask(o: Outcome, f: Files, tmp: str):
    assert o.code == 0, o.describe() + o.err
    assert "gt 2 objects" in o.out, o.out


CASES: List[Case] = [
    # ---------------------------------------------------------------- predict.py: weights
    Case("weights: missing file", "predict", lambda f, t: predict_args(f, t, weights=[f.p("nope.pth")]), ["nope.pth"]),
    Case("weights: a directory", "predict", lambda f, t: predict_args(f, t, weights=[f.p("weights_dir.pth")]),
         ["folder", "weights_dir.pth"]),
    Case("weights: a YAML config", "predict", lambda f, t: predict_args(f, t, weights=[f.p("tiny.yaml")]),
         ["text file", "tiny.yaml"]),
    Case("weights: random bytes", "predict", lambda f, t: predict_args(f, t, weights=[f.p("random.pth")]),
         ["not a checkpoint", "random.pth"]),
    Case("weights: empty file", "predict", lambda f, t: predict_args(f, t, weights=[f.p("empty.pth")]),
         ["empty", "empty.pth"]),
    Case("weights: truncated checkpoint", "predict", lambda f, t: predict_args(f, t, weights=[f.p("truncated.pth")]),
         ["truncated.pth"]),
    Case("weights: a dict without 'model'", "predict", lambda f, t: predict_args(f, t, weights=[f.p("no_model.pth")]),
         ["no_model.pth", "state dict"]),
    Case("weights: bare state dict, no --config", "predict", lambda f, t: predict_args(f, t, weights=[f.p("bare.pth")]),
         ["bare.pth", "--config"]),
    Case("weights: state dict of another architecture", "predict",
         lambda f, t: predict_args(f, t, weights=[f.p("other_arch.pth")]), ["other_arch.pth", "do not fit"]),
    Case("weights: NaN in a tensor", "predict", lambda f, t: predict_args(f, t, weights=[f.p("nan.pth")]),
         ["nan.pth", "non-finite", "roi_heads"], before_images=True),
    Case("config: an empty file", "predict", lambda f, t: predict_args(f, t, "--config", f.p("empty.yaml")),
         ["empty", "empty.yaml"], before_images=True),
    Case("config: binary file", "predict", lambda f, t: predict_args(f, t, "--config", f.p("thr_binary.yaml")),
         ["thr_binary.yaml"]),
    # ---------------------------------------------------------------- predict.py: settings
    Case("thresholds: missing file", "predict", lambda f, t: predict_args(f, t, "--thresholds", f.p("nope.yaml")),
         ["nope.yaml"], before_images=True),
    Case("thresholds: a folder", "predict", lambda f, t: predict_args(f, t, "--thresholds", f.p("images")),
         ["folder", "images"], before_images=True),
    Case("thresholds: an empty file (no change)", "predict",
         lambda f, t: predict_args(f, t, "--thresholds", f.p("empty.yaml")), check=lambda o, f, t: _predicted_ok(o, f, t)),
    Case("thresholds: 2 values for 3 classes", "predict", lambda f, t: predict_args(f, t, "--thresholds", f.p("thr_len.yaml")),
         ["score_thresh", "2 values", "3 classes"], before_images=True),
    Case("thresholds: score 1.5", "predict", lambda f, t: predict_args(f, t, "--thresholds", f.p("thr_range.yaml")),
         ["score_thresh", "1.5", "thr_range.yaml"], before_images=True),
    Case("thresholds: mask NaN", "predict", lambda f, t: predict_args(f, t, "--thresholds", f.p("thr_nan.yaml")),
         ["mask_thresh", "nan"], before_images=True),
    Case("thresholds: min area -5", "predict", lambda f, t: predict_args(f, t, "--thresholds", f.p("thr_negative.yaml")),
         ["min_area", "-5"], before_images=True),
    Case("thresholds: a YAML list", "predict", lambda f, t: predict_args(f, t, "--thresholds", f.p("thr_list.yaml")),
         ["thr_list.yaml", "mapping"], before_images=True),
    Case("thresholds: binary file", "predict", lambda f, t: predict_args(f, t, "--thresholds", f.p("thr_binary.yaml")),
         ["thr_binary.yaml"], before_images=True),
    Case("thresholds: unknown key", "predict", lambda f, t: predict_args(f, t, "--thresholds", f.p("thr_unknown.yaml")),
         ["score_threshold"], before_images=True),
    Case("--set test.merge_iou=0", "predict", lambda f, t: predict_args(f, t, "--set", "test.merge_iou=0"),
         ["merge_iou", "0"], before_images=True),
    Case("--set test.merge_iou=1.5", "predict", lambda f, t: predict_args(f, t, "--set", "test.merge_iou=1.5"),
         ["merge_iou", "1.5"], before_images=True),
    Case("--merge-iou nan", "predict", lambda f, t: predict_args(f, t, "--merge-iou", "nan"),
         ["merge_iou", "nan"], before_images=True),
    Case("--set test.score_thresh=[0.5,-0.1,0.5]", "predict",
         lambda f, t: predict_args(f, t, "--set", "test.score_thresh=[0.5,-0.1,0.5]"), ["score_thresh", "-0.1"],
         before_images=True),
    Case("--set test.score_thresh=[]", "predict", lambda f, t: predict_args(f, t, "--set", "test.score_thresh=[]"),
         ["score_thresh", "empty"], before_images=True),
    Case("--set test.overlap_min_keep=2", "predict", lambda f, t: predict_args(f, t, "--set", "test.overlap_min_keep=2"),
         ["overlap_min_keep"], before_images=True),
    Case("--set test.image_class=vote", "predict", lambda f, t: predict_args(f, t, "--set", "test.image_class=vote"),
         ["image_class", "vote"], before_images=True),
    Case("--set model.x=1", "predict", lambda f, t: predict_args(f, t, "--set", "model.roi_heads.num_classes=2"),
         ["test.*"], before_images=True),
    Case("--tta blur", "predict", lambda f, t: predict_args(f, t, "--tta", "hflip,blur"), ["blur"], before_images=True),
    Case("--tta scale=0", "predict", lambda f, t: predict_args(f, t, "--tta", "scale=0"), ["scale", "0"], before_images=True),
    Case("--tta scale=abc", "predict", lambda f, t: predict_args(f, t, "--tta", "scale=abc"), ["scale", "abc"],
         before_images=True),
    Case("--tta scale=nan", "predict", lambda f, t: predict_args(f, t, "--tta", "scale=nan"), ["scale", "nan"],
         before_images=True),
    Case("--tta hflip,hflip", "predict", lambda f, t: predict_args(f, t, "--tta", "hflip,hflip"), ["hflip", "once"],
         before_images=True),
    Case("--min-views 0", "predict", lambda f, t: predict_args(f, t, "--min-views", "0"), ["--min-views", "0"],
         before_images=True),
    Case("--min-views 3 with 2 views", "predict", lambda f, t: predict_args(f, t, "--tta", "hflip", "--min-views", "3"),
         ["min_views", "3", "2"], before_images=True),
    Case("--device gpu", "predict", lambda f, t: predict_args(f, t)[:-3] + ["--device", "gpu", "--no-progress"],
         ["--device", "gpu"], before_images=True),
    Case("--device cuda without CUDA", "predict", lambda f, t: predict_args(f, t)[:-3] + ["--device", "cuda", "--no-progress"],
         check=_no_cuda, before_images=True, marks={"no_cuda": "1"}),
    Case("--batch-size 0", "predict", lambda f, t: predict_args(f, t, "--batch-size", "0"), ["--batch-size", "0"],
         before_images=True),
    Case("--limit -1", "predict", lambda f, t: predict_args(f, t, "--limit", "-1"), ["--limit", "-1"], before_images=True),
    # ---------------------------------------------------------------- predict.py: output
    Case("--out is a directory", "predict", lambda f, t: predict_args(f, t, out=f.p("images")), ["directory", "images"],
         before_images=True),
    Case("--out under a file", "predict", lambda f, t: predict_args(f, t, out=os.path.join(f.p("labels.csv"), "sub.csv")),
         ["labels.csv"], before_images=True),
    Case("--out in a read-only folder", "predict",
         lambda f, t: predict_args(f, t, out=os.path.join(f.p("readonly"), "sub.csv")), ["not writable", "readonly"],
         before_images=True, marks={"non_root": "1"}),
    Case("--out in a folder that does not exist", "predict",
         lambda f, t: predict_args(f, t, out=os.path.join(t, "new", "deeper", "sub.csv")), check=_out_folder_made),
    # ---------------------------------------------------------------- predict.py: images
    Case("--images missing", "predict", lambda f, t: predict_args(f, t, images=f.p("nope")), ["nope"]),
    Case("--images is a file", "predict", lambda f, t: predict_args(f, t, images=f.p("labels.csv")), ["labels.csv"]),
    Case("--images without images", "predict", lambda f, t: predict_args(f, t, images=f.p("no_images")),
         ["no images", "no_images"]),
    Case("images: two files, one id", "predict", lambda f, t: predict_args(f, t, images=f.p("imgs_dup")),
         ["'x'", "imgs_dup"], before_images=True),
    Case("image: not an image", "predict", lambda f, t: predict_args(f, t, images=f.p("imgs_garbage")),
         check=_skipped_image_run("bad.png")),
    Case("image: 0 bytes", "predict", lambda f, t: predict_args(f, t, images=f.p("imgs_zero")),
         check=_skipped_image_run("zero.png")),
    Case("image: truncated PNG", "predict", lambda f, t: predict_args(f, t, images=f.p("imgs_truncated")),
         check=_skipped_image_run("cut.png")),
    Case("image: decompression bomb", "predict", lambda f, t: predict_args(f, t, images=f.p("imgs_bomb")),
         check=_skipped_image_run("bomb.png")),
    Case("image: float TIFF of NaN", "predict", lambda f, t: predict_args(f, t, images=f.p("imgs_nan_tif")),
         check=_skipped_image_run("nan.tif")),
    Case("image: unreadable, --strict", "predict", lambda f, t: predict_args(f, t, "--strict", images=f.p("imgs_garbage")),
         ["bad.png", "decode"]),
    Case("image: 1x1 pixel", "predict", lambda f, t: predict_args(f, t, images=f.p("imgs_tiny")), check=_predicted_ok),
    Case("image: gray+alpha (2 channels)", "predict", lambda f, t: predict_args(f, t, images=f.p("imgs_la")),
         check=_predicted_ok),
    Case("image: RGBA for a gray model", "predict", lambda f, t: predict_args(f, t, images=f.p("imgs_rgba")),
         check=_predicted_ok),
    Case("image: 16-bit PNG", "predict", lambda f, t: predict_args(f, t, images=f.p("imgs_16bit")), check=_predicted_ok),
    # ---------------------------------------------------------------- evaluate.py score
    Case("score: submission missing", "evaluate", lambda f, t: score_args(f, t, sub="nope.csv"), ["nope.csv"]),
    Case("score: submission is a directory", "evaluate", lambda f, t: score_args(f, t, sub="sub_dir.csv"),
         ["folder", "sub_dir.csv"]),
    Case("score: submission empty", "evaluate", lambda f, t: score_args(f, t, sub="sub_empty.csv"),
         ["sub_empty.csv", "empty"]),
    Case("score: submission cut mid-row", "evaluate", lambda f, t: score_args(f, t, sub="sub_odd.csv"),
         check=_rejected("sub_odd.csv: line 2", "odd number")),
    Case("score: labels given as the submission", "evaluate", lambda f, t: score_args(f, t, sub="labels.csv"),
         ["labels.csv", "header"]),
    Case("score: submission of random bytes", "evaluate", lambda f, t: score_args(f, t, sub="sub_binary.csv"),
         ["sub_binary.csv"]),
    Case("score: submission with a NUL byte", "evaluate", lambda f, t: score_args(f, t, sub="sub_nul.csv"),
         check=_rejected("sub_nul.csv: line 2", "non-integer")),
    Case("score: submission with a DSB header", "evaluate", lambda f, t: score_args(f, t, sub="sub_header.csv"),
         ["sub_header.csv", "header"]),
    Case("score: submission row with 3 fields", "evaluate", lambda f, t: score_args(f, t, sub="sub_fields.csv"),
         ["sub_fields.csv", "line 2"]),
    Case("score: labels empty", "evaluate", lambda f, t: score_args(f, t, labels="labels_empty.csv"), ["labels_empty.csv"]),
    Case("score: labels are a submission", "evaluate", lambda f, t: score_args(f, t, labels="labels_header.csv"),
         ["labels_header.csv", "missing column"]),
    Case("score: labels width nan", "evaluate", lambda f, t: score_args(f, t, labels="labels_nan.csv"),
         ["labels_nan.csv", "line 2", "nan"]),
    Case("score: labels width -4", "evaluate", lambda f, t: score_args(f, t, labels="labels_negative.csv"),
         ["labels_negative.csv", "line 2"]),
    Case("score: labels 10^10 x 10^10 pixels", "evaluate", lambda f, t: score_args(f, t, labels="labels_huge.csv"),
         ["labels_huge.csv", "line 2", "10000000000"]),
    Case("score: labels with a bad RLE", "evaluate", lambda f, t: score_args(f, t, labels="labels_bad_rle.csv"),
         ["labels_bad_rle.csv", "'x'"]),
    Case("score: column-major submission, row-major labels", "evaluate",
         lambda f, t: score_args(f, t, "sub_col.csv"), check=_score_hint),
    Case("score: --order col with row-major labels: --labels-order", "evaluate",
         lambda f, t: score_args(f, t, "sub_col.csv", "labels.csv", "--order", "col", "--labels-order", "row"),
         check=_score_perfect),
    Case("score: column-major labels, --labels-order col", "evaluate",
         lambda f, t: score_args(f, t, "sub.csv", "labels_col.csv", "--labels-order", "col"), check=_score_perfect),
    Case("score: --max-errors -1", "evaluate", lambda f, t: score_args(f, t, "sub.csv", "labels.csv", "--max-errors", "-1"),
         ["--max-errors", "-1"]),
    # ------------------------------------------------------------ evaluate.py tune / ablate / labels
    Case("tune: predictions folder missing", "evaluate",
         lambda f, t: ["tune", "--predictions", f.p("nope"), "--labels", f.p("labels.csv"), "--out", os.path.join(t, "x.yaml")],
         ["nope"]),
    Case("tune: --out is a directory", "evaluate",
         lambda f, t: ["tune", "--predictions", f.p("nope"), "--labels", f.p("labels.csv"), "--out", f.p("images")],
         ["directory", "images"]),
    Case("labels: --out is a directory", "evaluate",
         lambda f, t: ["labels", "--config", f.p("train.yaml"), "--out", f.p("images")], ["directory", "images"]),
    Case("ablate: spec missing", "evaluate", lambda f, t: ["ablate", f.p("nope.yaml")], ["nope.yaml"]),
    Case("ablate: spec is binary", "evaluate", lambda f, t: ["ablate", f.p("thr_binary.yaml")], ["thr_binary.yaml"]),
    Case("labels: config is binary", "evaluate",
         lambda f, t: ["labels", "--config", f.p("thr_binary.yaml"), "--out", os.path.join(t, "l.csv")], ["thr_binary.yaml"]),
    # ---------------------------------------------------------------- viz
    Case("viz: --id not in the CSV files", "viz",
         lambda f, t: ["--image", f.p("images", "a.png"), "--gt", f.p("labels.csv"), "--id", "zzz", "--out",
                       os.path.join(t, "o.png")], ["zzz", "labels.csv"]),
    Case("viz: image id not in the CSV files", "viz",
         lambda f, t: ["--image", f.p("imgs_tiny", "one.png"), "--pred", f.p("sub.csv"), "--out", os.path.join(t, "o.png")],
         ["one", "sub.csv"]),
    Case("viz: empty --gt CSV", "viz",
         lambda f, t: ["--image", f.p("images", "a.png"), "--gt", f.p("gt_empty.csv"), "--out", os.path.join(t, "o.png")],
         ["gt_empty.csv", "empty"]),
    Case("viz: --gt CSV without id/annotation", "viz",
         lambda f, t: ["--image", f.p("images", "a.png"), "--gt", f.p("gt_header.csv"), "--out", os.path.join(t, "o.png")],
         ["gt_header.csv"]),
    Case("viz: --gt CSV of another image size", "viz",
         lambda f, t: ["--image", f.p("imgs_tiny", "one.png"), "--gt", f.p("labels.csv"), "--id", "a", "--out",
                       os.path.join(t, "o.png")], ["labels.csv", "40x48"]),
    Case("viz: --gt folder without mask PNGs", "viz",
         lambda f, t: ["--image", f.p("images", "a.png"), "--gt", f.p("masks_none"), "--out", os.path.join(t, "o.png")],
         ["masks_none", "no mask"]),
    Case("viz: --gt folder with an RGB mask (blue)", "viz",
         lambda f, t: ["--image", f.p("images", "a.png"), "--gt", f.p("masks_rgb"), "--out", os.path.join(t, "o.png")],
         check=_viz_rgb_mask),
    Case("viz: --pred of random bytes", "viz",
         lambda f, t: ["--image", f.p("images", "a.png"), "--pred", f.p("sub_binary.csv"), "--out", os.path.join(t, "o.png")],
         ["sub_binary.csv"]),
    Case("viz: --thickness 0", "viz",
         lambda f, t: ["--image", f.p("images", "a.png"), "--thickness", "0", "--out", os.path.join(t, "o.png")],
         ["--thickness", "0"]),
    Case("viz: --out is a directory", "viz", lambda f, t: ["--image", f.p("images", "a.png"), "--out", f.p("images")],
         ["directory", "images"]),
    Case("viz: --image is garbage", "viz", lambda f, t: ["--image", f.p("imgs_garbage", "bad.png")], ["bad.png"]),
    # ---------------------------------------------------------------- train.py
    Case("train: config is binary", "train", lambda f, t: [f.p("thr_binary.yaml")], ["thr_binary.yaml"]),
    Case("train: config is a YAML list", "train", lambda f, t: [f.p("thr_list.yaml")], ["thr_list.yaml", "mapping"]),
    Case("train: solver.lr=nan", "train", lambda f, t: [f.p("train.yaml"), "--set", "solver.lr=.nan",
                                                       f"train.output_dir={t}/run"], ["solver.lr", "nan"]),
    Case("train: solver.lr=-0.1", "train", lambda f, t: [f.p("train.yaml"), "--set", "solver.lr=-0.1",
                                                        f"train.output_dir={t}/run"], ["solver.lr", "-0.1"]),
    Case("train: solver.max_iter=0", "train", lambda f, t: [f.p("train.yaml"), "--set", "solver.max_iter=0",
                                                           f"train.output_dir={t}/run"], ["solver.max_iter", "0"]),
    Case("train: data.batch_size=0", "train", lambda f, t: [f.p("train.yaml"), "--set", "data.batch_size=0",
                                                           f"train.output_dir={t}/run"], ["data.batch_size", "0"]),
    Case("train: test.score_thresh=[2]", "train", lambda f, t: [f.p("train.yaml"), "--set", "test.score_thresh=[2]",
                                                               f"train.output_dir={t}/run"], ["test.score_thresh", "2"]),
    Case("train: test.mask_thresh of 2 values, 3 classes", "train",
         lambda f, t: [f.p("train.yaml"), "--set", "test.mask_thresh=[0.5,0.5]", f"train.output_dir={t}/run"],
         ["test.mask_thresh", "3 classes"]),
    Case("train: train.device=cuda without CUDA", "train",
         lambda f, t: [f.p("train.yaml"), "--set", "train.device=cuda", f"train.output_dir={t}/run"],
         ["CUDA is not available"], marks={"no_cuda": "1"}),
    Case("train: backbone weights = a YAML file", "train",
         lambda f, t: [f.p("train.yaml"), "--set", f"model.backbone.weights={f.p('tiny.yaml')}", f"train.output_dir={t}/run"],
         ["tiny.yaml", "text file"]),
    Case("train: backbone weights = random bytes", "train",
         lambda f, t: [f.p("train.yaml"), "--set", f"model.backbone.weights={f.p('random.pth')}", f"train.output_dir={t}/run"],
         ["random.pth"]),
    Case("train: output_dir is a file", "train",
         lambda f, t: [f.p("train.yaml"), "--set", f"train.output_dir={f.p('labels.csv')}"], ["labels.csv"]),
    Case("make_cache: COCO polygon with NaN", "make_cache",
         lambda f, t: ["--format", "coco", "--ann-file", f.p("coco_nan.json"), "--root", f.p("coco_images"),
                       "--out", os.path.join(t, "c.npz")], ["coco_nan.json", "annotation 7", "nan"]),
    Case("train: config is a folder", "train", lambda f, t: [f.p("images")], ["folder", "images"]),
    Case("train: Sartorius train.csv of random bytes", "train",
         lambda f, t: [f.p("train.yaml"), "--set", "data.format=sartorius", f"data.root={f.p('sart_binary')}",
                       f"train.output_dir={t}/run"], ["train.csv", "UTF-8"]),
    Case("train: dataset cache of random bytes", "train",
         lambda f, t: [f.p("train.yaml"), "--set", "data.format=cache", f"data.root={f.p('garbage.npz')}",
                       f"train.output_dir={t}/run"], ["garbage.npz", "dataset cache"]),
    Case("train: split file of random bytes", "train",
         lambda f, t: [f.p("train.yaml"), "--set", f"data.split_file={f.p('garbage.npz')}", f"train.output_dir={t}/run"],
         ["garbage.npz", "split file"]),
    Case("train: COCO json truncated", "train",
         lambda f, t: [f.p("train.yaml"), "--set", "data.format=coco", f"data.ann_file={f.p('coco_truncated.json')}",
                       f"data.root={f.p('coco_images')}", f"train.output_dir={t}/run"], ["coco_truncated.json"]),
    Case("train: data.root missing", "train",
         lambda f, t: [f.p("train.yaml"), "--set", "data.format=dsb2018", f"data.root={f.p('nope')}",
                       f"train.output_dir={t}/run"], ["nope"]),
    # ---------------------------------------------------------------- data tools
    Case("make_cache: --out is a directory", "make_cache",
         lambda f, t: ["--format", "synthetic", "--out", f.p("images")], ["images"]),
    Case("make_cache: COCO polygon at x = 1e9", "make_cache",
         lambda f, t: ["--format", "coco", "--ann-file", f.p("coco_huge.json"), "--root", f.p("coco_images"),
                       "--out", os.path.join(t, "c.npz")], ["coco_huge.json", "annotation 7", "1000000000"]),
    Case("synthetic: --out is a file", "synthetic", lambda f, t: ["--out", f.p("labels.csv"), "--num-images", "1"],
         ["labels.csv"]),
    Case("synthetic: --num-images -1", "synthetic", lambda f, t: ["--out", os.path.join(t, "syn"), "--num-images", "-1"],
         ["--num-images", "-1"]),
    Case("synthetic: --height 0", "synthetic", lambda f, t: ["--out", os.path.join(t, "syn"), "--height", "0"],
         ["--height", "0"]),
]


# ---------------------------------------------------------------------- round 2 (issue 23)
def add_round2_files(f: Files) -> None:
    """Fixtures of the second round: inputs a run must not overwrite, images it cannot represent,
    settings outside their range, COCO / DSB / label files that hold less than they seem to."""
    from maskrcnn.config import load_config, to_dict
    from maskrcnn.formats.rle import encode
    from maskrcnn.model import build_model
    from PIL import TiffImagePlugin

    rng = np.random.default_rng(5)
    good = rng.integers(0, 255, (H, W), dtype=np.uint8)
    # an ensemble partner with one class (tiny.pth has three)
    one = load_config(f.p("tiny.yaml"), ["model.roi_heads.num_classes=1"])
    torch.manual_seed(1)
    torch.save({"model": build_model(one.model, load_weights=False, verbose=False).state_dict(),
                "config": to_dict(one), "iteration": 0}, f.p("tiny1.pth"))
    with open(f.p("tiny.pth"), "rb") as src:
        ck = torch.load(src, weights_only=True)
    torch.save({"model": ck["model"], "config": "model: resnet18", "iteration": 0}, f.p("config_string.pth"))
    # images a reader cannot represent, each next to a good one
    f.image("imgs_broken_link/good.png", good)
    os.symlink("nowhere.png", f.p("imgs_broken_link", "gone.png"))
    f.image("imgs_link_loop/good.png", good)
    os.symlink("loop.png", f.p("imgs_link_loop", "loop.png"))
    f.image("imgs_pages/good.png", good)
    pages = [Image.fromarray(np.full((H, W), 40 * k, np.uint8)) for k in range(3)]
    pages[0].save(f.p("imgs_pages", "stack.tif"), save_all=True, append_images=pages[1:])
    f.image("imgs_signed/good.png", good)
    signed = TiffImagePlugin.ImageFileDirectory_v2()
    signed[339] = 2  # SampleFormat: signed integer
    Image.fromarray(good).save(f.p("imgs_signed", "int8.tif"), tiffinfo=signed)
    f.image("imgs_big/good.png", good)
    f.image("imgs_big/big.png", np.zeros((3000, 3000), np.uint8))  # 9 Mpx: a few KB as PNG
    f.image("imgs_photo/a.png", good)  # an ordinary image where label images are expected
    f.image("imgs_long/good.png", good)
    f.image("imgs_long/" + "x" * 240 + ".png", good)
    f.write("empty_results.json", "[]")
    # settings
    f.write("dup_model.yaml", TINY_MODEL.replace("model:\n", "model:\n  channels_last: false\n", 1)
            + "model:\n  roi_heads: {num_classes: 1}\n")
    f.write("comments.yaml", "# nothing here yet\n\n# model: ...\n")
    f.write("thr_beside.yaml", "score_thresh: [0.9]\ntest:\n  mask_thresh: [0.4]\n")
    f.image("dsb_dangling/ok/images/ok.png", good)
    os.makedirs(f.p("dsb_dangling", "gone", "images"))
    os.symlink("missing.png", f.p("dsb_dangling", "gone", "images", "gone.png"))
    f.write("thr_dup.yaml", "score_thresh: [0.4]\nmask_thresh: [0.5]\nscore_thresh: [0.6]\n")
    # label, COCO and DSB files that hold less (or more) than they seem to
    obj = _rect(2, 9, 3, 20)
    f.write("labels_twice.csv", "id,annotation,width,height\n" + f"a,{encode(obj)},{W},{H}\n" * 2)
    image = '{"id": 1, "file_name": "a.png", "height": %d, "width": %d}' % (H, W)
    f.write("coco_no_anns.json", '{"images": [%s], "categories": [{"id": 1, "name": "cell"}]}' % image)
    f.write("coco_zero_anns.json", '{"images": [%s], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}'
            % image)
    f.write("coco_gt_str_id.json", '{"images": [{"id": "a", "file_name": "a.png", "height": %d, "width": %d}], '
            '"annotations": [], "categories": [{"id": 1, "name": "cell"}]}' % (H, W))
    f.write("coco_gt_no_id.json", '{"images": [{"file_name": "a.png", "height": %d, "width": %d}], '
            '"annotations": [], "categories": [{"id": 1, "name": "cell"}]}' % (H, W))
    for i, masks in (("d1", [_rect(3, 9, 3, 9)]), ("d2", [])):
        f.image(f"dsb_bare/{i}/images/{i}.png", good)
        os.makedirs(f.p("dsb_bare", i, "masks"), exist_ok=True)
        for k, m in enumerate(masks):
            f.image(f"dsb_bare/{i}/masks/{k}.png", (m * 255).astype(np.uint8))
    # run folders train.py did not write
    f.write("user_run/config.yaml", "# my own notes, not a run's\nmodel: {}\n")
    f.write("not_a_run/model_0000001.pth", b"user's file")
    f.write("marked_run/run_marker.json", "{}\n")
    with open(f.p("tiny.pth"), "rb") as src:
        f.write("marked_run/model_final.pth", src.read())
    f.snapshot = {}  # what the "out" cases must leave as it is
    for name in ("images/a.png", "images/b.png", "tiny.pth", "empty.yaml", "train.yaml", "coco_nan.json",
                 "user_run/config.yaml", "not_a_run/model_0000001.pth", "marked_run/model_final.pth"):
        with open(f.p(name), "rb") as fh:
            f.snapshot[name] = fh.read()
    f.snapshot["images"] = sorted(os.listdir(f.p("images")))


def _file_unchanged(name: str, words: Sequence[str]):
    """An ``error:`` line holding ``words`` (exit 2), and the input ``name`` as it was built."""
    def check(o: Outcome, f: Files, tmp: str):
        assert o.code == 2 and len(o.error_lines) == 1, o.describe() + o.err[-2000:]
        assert all(w.lower() in o.error_lines[0].lower() for w in words), o.error_lines
        path = f.p(name)
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                assert fh.read() == f.snapshot[name], f"{name} was changed"
        else:
            assert sorted(os.listdir(path)) == f.snapshot[name], f"{name} was changed"
    return check


def _warned(*words):
    def check(o: Outcome, f: Files, tmp: str):
        assert o.code == 0, o.describe() + o.err[-2000:]
        assert any(all(w in ln for w in words) for ln in o.err.splitlines() if ln.startswith("warning")), o.err
    return check


def _labels_written(o: Outcome, f: Files, tmp: str):
    assert o.code == 0, o.describe() + o.err[-2000:]
    out = os.path.join(tmp, "labels")
    assert sorted(os.listdir(out)) == ["good.png", "x" * 240 + ".png"]
    assert not [n for n in os.listdir(tmp) if "partial" in n or n.endswith(".tmp")], os.listdir(tmp)


def _interrupted_labels(o: Outcome, f: Files, tmp: str):
    assert o.code == 130, o.describe() + o.err[-2000:]
    assert os.listdir(tmp) == [], os.listdir(tmp)  # no folder that looks complete, no staging left


def _pseudo_skipped(o: Outcome, f: Files, tmp: str):
    import json

    assert o.code == 3, o.describe() + o.err[-2000:]
    assert "1 image(s) could not be processed" in o.err and "bad.png" in o.err.split("could not be processed")[1]
    with open(os.path.join(tmp, "pl", "summary.json")) as fh:
        summary = json.load(fh)
    assert summary["images"] == 1 and len(summary["skipped"]) == 1 and "bad.png" in summary["skipped"][0]


def _dsb_dangling(o: Outcome, f: Files, tmp: str):
    assert o.code == 3, o.describe() + o.err[-2000:]
    assert {r[0] for r in _rows(os.path.join(tmp, "sub.csv"))[1:]} == {"ok", "gone"}
    assert "broken symlink" in o.err.split("could not be read")[1]


def _out(t: str, name: str = "sub.csv") -> str:
    return os.path.join(t, name)


def train_args(f: Files, t: str, *extra: str, config: str = "train.yaml") -> List[str]:
    return [f.p(config), "--set", f"train.output_dir={t}/run", *extra]


ROUND2: List[Case] = [
    # ------------------------------------------------ outputs that would destroy an input
    Case("round2 out: --out is an input image", "predict", lambda f, t: predict_args(f, t, out=f.p("images", "a.png")),
         check=_file_unchanged("images/a.png", ["input", "a.png"]), before_images=True),
    Case("round2 out: --format coco --out is the weights", "predict",
         lambda f, t: predict_args(f, t, "--format", "coco", out=f.p("tiny.pth")),
         check=_file_unchanged("tiny.pth", ["input", "tiny.pth"]), before_images=True),
    Case("round2 out: --format labels --out is the image folder", "predict",
         lambda f, t: predict_args(f, t, "--format", "labels", out=f.p("images")),
         check=_file_unchanged("images", ["input", "images"]), before_images=True),
    Case("round2 out: --format labels --out holds the image folder", "predict",
         lambda f, t: predict_args(f, t, "--format", "labels", out=f.root),
         ["folder", "holds an input"], before_images=True),
    Case("round2 out: --out is the thresholds file", "predict",
         lambda f, t: predict_args(f, t, "--thresholds", f.p("empty.yaml"), out=f.p("empty.yaml")),
         check=_file_unchanged("empty.yaml", ["input", "empty.yaml"]), before_images=True),
    Case("round2 out: --out ''", "predict",
         lambda f, t: ["--weights", f.p("tiny.pth"), "--images", f.p("images"), "--out", "", "--device", "cpu"],
         ["--out", "empty"], before_images=True),
    Case("round2 out: viz --out is --image", "viz", lambda f, t: ["--image", f.p("images", "b.png"), "--out",
                                                                  f.p("images", "b.png")],
         check=_file_unchanged("images/b.png", ["input", "b.png"])),
    Case("round2 out: viz --images --out is the image folder", "viz",
         lambda f, t: ["--images", f.p("images"), "--out", f.p("images")], check=_file_unchanged("images", ["input"])),
    Case("round2 out: evaluate labels --out is the config", "evaluate",
         lambda f, t: ["labels", "--config", f.p("train.yaml"), "--out", f.p("train.yaml")],
         check=_file_unchanged("train.yaml", ["input", "train.yaml"])),
    Case("round2 out: make_cache --out is the COCO json", "make_cache",
         lambda f, t: ["--format", "coco", "--ann-file", f.p("coco_nan.json"), "--root", f.p("coco_images"),
                       "--out", f.p("coco_nan.json")], check=_file_unchanged("coco_nan.json", ["input"])),
    Case("round2 out: train over a user's config.yaml", "train",
         lambda f, t: [f.p("train.yaml"), "--set", f"train.output_dir={f.p('user_run')}"],
         check=_file_unchanged("user_run/config.yaml", ["config.yaml", "no run marker"])),
    Case("round2 out: train --overwrite of a folder without a run marker", "train",
         lambda f, t: [f.p("train.yaml"), "--overwrite", "--set", f"train.output_dir={f.p('not_a_run')}"],
         check=_file_unchanged("not_a_run/model_0000001.pth", ["no run marker", "remove"])),
    Case("round2 out: train --overwrite would remove its own backbone weights", "train",
         lambda f, t: [f.p("train.yaml"), "--overwrite", "--set", f"train.output_dir={f.p('marked_run')}",
                       f"model.backbone.weights={f.p('marked_run', 'model_final.pth')}"],
         check=_file_unchanged("marked_run/model_final.pth", ["model_final.pth", "input"])),
    Case("round2 out: pseudo_label --out is the image folder", "pseudo_label",
         lambda f, t: ["label", "--weights", f.p("tiny.pth"), "--images", f.p("images"), "--out", f.p("images"),
                       "--device", "cpu"], check=_file_unchanged("images", ["input", "images"])),
    # ------------------------------------------------ one image must not end the run
    Case("round2 image: too large for memory among good ones", "predict",
         lambda f, t: predict_args(f, t, images=f.p("imgs_big")), check=_skipped_image_run("big.png"),
         marks={"free_gib": "0.1"}),
    Case("round2 image: too large, --strict", "predict",
         lambda f, t: predict_args(f, t, "--strict", images=f.p("imgs_big")), ["big.png", "GiB", "tiles"],
         marks={"free_gib": "0.1"}),
    Case("round2 image: allocation fails while predicting", "predict",
         lambda f, t: predict_args(f, t, images=f.p("imgs_big")), check=_skipped_image_run("big.png"),
         marks={"oom_on": "3000"}),
    Case("round2 image: pseudo_label skips an unreadable image", "pseudo_label",
         lambda f, t: ["label", "--weights", f.p("tiny.pth"), "--images", f.p("imgs_garbage"), "--out",
                       os.path.join(t, "pl"), "--device", "cpu", "--keep", "0", "--ignore", "0", "--no-progress", "--classes", "a,b,c"],
         check=_pseudo_skipped),
    # ------------------------------------------------ settings that would mean something else
    Case("round2 setting: a YAML key written twice", "train", lambda f, t: train_args(f, t, config="dup_model.yaml"),
         ["'model'", "twice", "dup_model.yaml"]),
    Case("round2 setting: thresholds key written twice", "predict",
         lambda f, t: predict_args(f, t, "--thresholds", f.p("thr_dup.yaml")), ["score_thresh", "twice", "lines 1 and 3"],
         before_images=True),
    Case("round2 setting: a config of comments only", "train", lambda f, t: [f.p("comments.yaml")],
         ["empty", "comments.yaml"]),
    Case("round2 setting: predict --config of comments only", "predict",
         lambda f, t: predict_args(f, t, "--config", f.p("comments.yaml")), ["empty", "comments.yaml"], before_images=True),
    Case("round2 setting: anchor aspect ratio -1", "train",
         lambda f, t: train_args(f, t, "model.anchors.aspect_ratios=[0.5,-1]"), ["aspect_ratios[1]", "-1"]),
    Case("round2 setting: anchor size 0", "train", lambda f, t: train_args(f, t, "model.anchors.sizes=[0,16,32,64,128]"),
         ["model.anchors.sizes[0]", "0"]),
    Case("round2 setting: crop_size [-5, 10]", "train", lambda f, t: train_args(f, t, "data.augment.crop_size=[-5,10]"),
         ["crop_size", "-5"]),
    Case("round2 setting: num_classes 100000", "train",
         lambda f, t: train_args(f, t, "model.roi_heads.num_classes=100000"), ["num_classes", "100000"]),
    Case("round2 setting: synthetic height 8", "train", lambda f, t: train_args(f, t, "data.synthetic.height=8"),
         ["data.synthetic", "8"]),
    Case("round2 setting: --tta scale=1000", "predict", lambda f, t: predict_args(f, t, "--tta", "scale=1000"),
         ["scale", "1000"], before_images=True),
    Case("round2 setting: --tile 64 --tile-overlap 63", "predict",
         lambda f, t: predict_args(f, t, "--tile", "64", "--tile-overlap", "63"), ["tile_overlap", "63"],
         before_images=True),
    Case("round2 setting: an ensemble of 3 and 1 classes", "predict",
         lambda f, t: predict_args(f, t, weights=[f.p("tiny.pth"), f.p("tiny1.pth")]), ["ensemble", "classes"],
         before_images=True),
    Case("round2 setting: a pseudo_label ensemble of 3 and 1 classes", "pseudo_label",
         lambda f, t: ["label", "--weights", f.p("tiny.pth"), f.p("tiny1.pth"), "--images", f.p("images"), "--out",
                       os.path.join(t, "pl"), "--device", "cpu", "--classes", "a,b,c", "--keep", "0", "--ignore", "0"],
         ["ensemble", "classes"]),
    Case("round2 setting: --set one key twice", "predict",
         lambda f, t: predict_args(f, t, "--set", "test.min_area=[5]", "test.min_area=[50]"), ["test.min_area", "twice"],
         before_images=True),
    Case("round2 setting: thresholds keys beside a test: section", "predict",
         lambda f, t: predict_args(f, t, "--thresholds", f.p("thr_beside.yaml")), ["score_thresh", "test:"],
         before_images=True),
    Case("round2 setting: synthetic --cells 10 5", "synthetic",
         lambda f, t: ["--out", os.path.join(t, "syn"), "--cells", "10", "5"], ["--cells", "10"]),
    # ------------------------------------------------ readers: refuse or warn on what they cannot represent
    Case("round2 reader: a broken symlink in the image folder", "predict",
         lambda f, t: predict_args(f, t, images=f.p("imgs_broken_link")), check=_skipped_image_run("gone.png")),
    Case("round2 reader: a symlink loop in the image folder", "predict",
         lambda f, t: predict_args(f, t, images=f.p("imgs_link_loop")), check=_skipped_image_run("loop.png")),
    Case("round2 reader: a dangling link in a DSB-layout folder", "predict",
         lambda f, t: predict_args(f, t, images=f.p("dsb_dangling")), check=_dsb_dangling),
    Case("round2 reader: a 3-page TIFF", "predict", lambda f, t: predict_args(f, t, images=f.p("imgs_pages")),
         check=_skipped_image_run("stack.tif")),
    Case("round2 reader: a signed 8-bit TIFF", "predict", lambda f, t: predict_args(f, t, images=f.p("imgs_signed")),
         check=_skipped_image_run("int8.tif")),
    Case("round2 reader: viz --pred folder of ordinary images", "viz",
         lambda f, t: ["--image", f.p("images", "a.png"), "--pred", f.p("imgs_photo"), "--out", _out(t, "o.png")],
         ["not a label image", "a.png"]),
    Case("round2 reader: labels list one object twice", "evaluate",
         lambda f, t: score_args(f, t, "sub.csv", "labels_twice.csv"), ["labels_twice.csv", "line 3", "same object"]),
    Case("round2 reader: COCO without 'annotations' to train on", "train",
         lambda f, t: train_args(f, t, "data.format=coco", f"data.ann_file={f.p('coco_no_anns.json')}",
                                 f"data.root={f.p('coco_images')}"), ["coco_no_anns.json", "no annotations"]),
    Case("round2 reader: COCO with zero annotations to cache", "make_cache",
         lambda f, t: ["--format", "coco", "--ann-file", f.p("coco_zero_anns.json"), "--root", f.p("coco_images"),
                       "--out", _out(t, "c.npz")], ["coco_zero_anns.json", "no annotations"]),
    Case("round2 reader: DSB image with an empty masks/", "make_cache",
         lambda f, t: ["--format", "dsb2018", "--root", f.p("dsb_bare"), "--out", _out(t, "d.npz"), "--workers", "0"],
         check=_warned("no mask PNG", "d2")),
    Case("round2 reader: --coco-gt image with a string id", "predict",
         lambda f, t: predict_args(f, t, "--format", "coco", "--coco-gt", f.p("coco_gt_str_id.json"),
                                   out=_out(t, "r.json")), ["coco_gt_str_id.json", "'a'", "integers"],
         before_images=True),
    Case("round2 reader: --coco-gt image without an id", "predict",
         lambda f, t: predict_args(f, t, "--format", "coco", "--coco-gt", f.p("coco_gt_no_id.json"),
                                   out=_out(t, "r.json")), ["coco_gt_no_id.json", "no id"], before_images=True),
    Case("round2 reader: evaluate coco, GT image with a string id", "evaluate",
         lambda f, t: ["coco", "--predictions", f.p("empty_results.json"), "--labels", f.p("coco_gt_str_id.json")],
         ["coco_gt_str_id.json", "integers"]),
    Case("round2 reader: a checkpoint whose config is a string", "predict",
         lambda f, t: predict_args(f, t, weights=[f.p("config_string.pth")]), ["config_string.pth", "mapping"],
         before_images=True),
    # ------------------------------------------------ disk full, interrupted writes, long names
    Case("round2 write: disk full writing the submission", "predict", lambda f, t: predict_args(f, t),
         ["disk full writing", "sub.csv"], marks={"enospc": "1"}),
    Case("round2 write: disk full writing a checkpoint (torch.save)", "train",
         lambda f, t: train_args(f, t), ["disk full writing", "run/model_"], marks={"enospc_torch": "1"}),
    Case("round2 write: Ctrl-C during --format labels", "predict",
         lambda f, t: predict_args(f, t, "--format", "labels", out=os.path.join(t, "labels")),
         check=_interrupted_labels, marks={"interrupt_on": "2"}),
    Case("round2 write: a 240-character id as a label image", "predict",
         lambda f, t: predict_args(f, t, "--format", "labels", images=f.p("imgs_long"), out=os.path.join(t, "labels")),
         check=_labels_written),
]
CASES.extend(ROUND2)

def add_rgb_masks(f: Files) -> None:
    """``masks_rgb/``: two DSB-style mask PNGs, one stored as pure blue RGB (0, 0, 1), one as gray."""
    blue = np.zeros((H, W, 3), dtype=np.uint8)
    blue[5:15, 5:15, 2] = 1
    f.image("masks_rgb/blue.png", blue)
    f.image("masks_rgb/gray.png", (_rect(20, 30, 20, 30) * 255).astype(np.uint8))


def skip_reason(case: Case) -> Optional[str]:
    """Why ``case`` cannot run here (root ignores folder permissions), else None."""
    if case.marks.get("non_root") and hasattr(os, "geteuid") and os.geteuid() == 0:
        return "runs as root: folder permissions do not apply"
    return None


def run_case(case: Case, f: Files, tmp: str) -> Outcome:
    """``attempt`` the case under the faults its marks inject (see ``injected``)."""
    with injected(case.marks):
        return attempt(case.tool, case.argv(f, tmp))


@contextlib.contextmanager
def injected(marks: Dict[str, str]):
    """Faults a case asks for, undone afterwards: ``no_cuda`` (a machine without CUDA), ``free_gib``
    (that much memory free), ``oom_on`` (predicting an image of that height fails to allocate),
    ``enospc`` / ``erofs`` (every atomic write finds the disk full / read-only), ``enospc_torch`` (``torch.save`` fails
    as it does on a full disk), ``interrupt_on`` (Ctrl-C while post-processing the N-th image)."""
    import errno

    from maskrcnn import fileio
    from maskrcnn.inference import predict_run
    from maskrcnn.inference.predictor import Predictor

    undo = []

    def patch(obj, name, value):
        had = name in vars(obj)
        undo.append((obj, name, vars(obj).get(name), had))
        setattr(obj, name, value)

    if marks.get("no_cuda"):
        patch(torch.cuda, "is_available", lambda: False)
    if marks.get("free_gib"):
        from maskrcnn.inference import guard

        patch(guard, "available_memory", lambda device: int(float(marks["free_gib"]) * 2**30))
    if marks.get("oom_on"):
        real_raw = Predictor.predict_raw

        def failing_raw(self, image):
            if image.shape[-2] == int(marks["oom_on"]):
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                                   "memory: you tried to allocate 6912000000 bytes. Error code 12")
            return real_raw(self, image)
        patch(Predictor, "predict_raw", failing_raw)
    if marks.get("enospc") or marks.get("erofs"):
        code = errno.ENOSPC if marks.get("enospc") else errno.EROFS

        class FullDisk(io.RawIOBase):
            def __init__(self, path):
                self.path = path

            def writable(self):
                return True

            def write(self, data):
                raise OSError(code, os.strerror(code), self.path)

        def full_open(path, mode="r", *a, **k):
            if "x" in mode:
                return io.TextIOWrapper(io.BufferedWriter(FullDisk(path))) if "b" not in mode else \
                    io.BufferedWriter(FullDisk(path))
            return open(path, mode, *a, **k)
        patch(fileio, "open", full_open)
    if marks.get("enospc_torch"):
        def full_save(obj, f, *a, **k):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 576 vs 470")
        patch(torch, "save", full_save)
    if marks.get("interrupt_on"):
        real_post, calls = predict_run.filter_predictions, [0]

        def interrupting(*a, **k):
            calls[0] += 1
            if calls[0] == int(marks["interrupt_on"]):
                raise KeyboardInterrupt
            return real_post(*a, **k)
        patch(predict_run, "filter_predictions", interrupting)
    try:
        yield
    finally:
        for obj, name, value, had in reversed(undo):
            if had:
                setattr(obj, name, value)
            else:
                delattr(obj, name)


def judge(case: Case, o: Outcome, f: Files, tmp: str) -> None:
    """Assert the case's expectation on its outcome."""
    if case.before_images:
        assert o.images_read == 0, f"{o.images_read} image(s) read before the error: {o.describe()}"
    if case.check is not None:
        case.check(o, f, tmp)
        return
    assert o.code == 2, o.describe() + "\n" + o.err[-3000:]
    lines = o.error_lines
    assert len(lines) == 1 and "Traceback" not in o.err, o.err[-3000:]
    assert o.err.rstrip().splitlines()[-1] == lines[0], "the error is not one line: " + o.err[-3000:]
    for w in case.words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in {lines[0]!r}"


if __name__ == "__main__":  # print the table: case | tool | outcome now
    import sys
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        files = build_files(os.path.join(root, "files"))
        only = sys.argv[1:]
        for k, case in enumerate(CASES):
            if only and not any(s in case.name for s in only):
                continue
            tmp = os.path.join(root, f"case{k}")
            os.makedirs(tmp)
            if skip_reason(case):
                print(f"| {case.name} | {case.tool} | not run: {skip_reason(case)} | SKIP |", flush=True)
                continue
            o = run_case(case, files, tmp)
            try:
                judge(case, o, files, tmp)
                verdict = "PASS"
            except AssertionError:
                verdict = "FAIL"
            print(f"| {case.name} | {case.tool} | {o.describe()} | {verdict} |".replace("\n", " "), flush=True)
