"""Metrics log (JSON lines) and training curves drawn with Pillow.

``metrics.jsonl`` holds one JSON object per line, each with ``"iteration"``:
- training records: ``loss`` (total) and its components (``loss_rpn_cls`` ...), ``lr``,
  ``time`` (s/iter), ``data_time``, ``it_per_s``, ``img_per_s`` (means over the log period);
- validation records: keys starting with ``val/`` (``val/mAP``, ``val/mAP@0.50`` ...; COCO's
  ``val/segm/AP``, ``val/bbox/AP`` with ``train.eval_coco``).

``draw_curves`` renders them to a PNG: the losses over iterations (log scale when they span
more than a decade) above the validation scores, each panel with ticks, axis labels and a legend.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

from maskrcnn.fileio import atomic_open, atomic_write_text

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


# ---------------------------------------------------------------------------- metrics log
class MetricsLog:
    """Appends records to ``<output_dir>/metrics.jsonl`` (rank 0 only creates one)."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, METRICS_FILE)

    def write(self, record: Dict) -> None:
        if "iteration" not in record:
            raise ValueError(f"a metrics record needs an 'iteration', got keys {sorted(record)}")
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")

    def truncate_after(self, iteration: int) -> None:
        """Drop records past ``iteration``: a resumed run rewrites what the killed run logged
        after its last checkpoint, so the file reads as one uninterrupted run."""
        records = read_metrics(self.path) if os.path.isfile(self.path) else []
        kept = [r for r in records if r["iteration"] <= iteration]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def reset(self) -> None:
        atomic_write_text(self.path, "")


def read_metrics(path: str) -> List[Dict]:
    """Records of a metrics file; a torn last line (a killed writer) is skipped, other bad lines are errors."""
    out = []
    with open(path) as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                continue
            raise ValueError(f"{path}:{i + 1}: not valid JSON ({e})") from None
        if not isinstance(rec, dict) or "iteration" not in rec:
            raise ValueError(f"{path}:{i + 1}: a record must be an object with an 'iteration'")
        out.append(rec)
    return out


# ------------------------------------------------------------------------------ drawing
_COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, target: int = 6) -> List[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) if lo else 1.0)
    raw = (hi - lo) / max(target - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _log_ticks(lo: float, hi: float) -> List[float]:
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**e
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 10000 or abs(v) < 0.001:
        return f"{v:.0e}"
    return f"{v:g}"


class _Panel:
    """One plot: a data rectangle inside ``box`` with axes, ticks, labels, title and legend."""

    def __init__(self, image: Image.Image, box: Tuple[int, int, int, int], title: str, xlabel: str, ylabel: str):
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.box = box
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        x0, y0, x1, y1 = box
        self.plot = (x0 + 80, y0 + 36, x1 - 190, y1 - 52)  # the legend sits right of the plot
        self.font = _font(14)
        self.small = _font(12)

    def render(self, series: Dict[str, Tuple[Sequence[float], Sequence[float]]], xmax: float, log_y: bool, markers: bool):
        d, (px0, py0, px1, py1) = self.draw, self.plot
        xs_all = [x for xs, _ in series.values() for x in xs]
        ys_all = [y for _, ys in series.values() for y in ys if math.isfinite(y) and (y > 0 or not log_y)]
        d.text(((self.box[0] + self.box[2]) // 2, self.box[1] + 8), self.title, fill="black", font=self.font, anchor="mt")
        if not ys_all:
            d.rectangle((px0, py0, px1, py1), outline="black")
            d.text(((px0 + px1) // 2, (py0 + py1) // 2), "no data yet", fill=(120, 120, 120), font=self.font, anchor="mm")
            return
        x_lo, x_hi = 0.0, max(float(xmax), max(xs_all), 1.0)
        if log_y:
            y_lo, y_hi = min(ys_all) / 1.15, max(ys_all) * 1.15
            fy = lambda v: py1 - (math.log10(v) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo)) * (py1 - py0)
            yticks = _log_ticks(y_lo, y_hi)
        else:
            y_lo, y_hi = min(0.0, min(ys_all)), max(ys_all)
            y_hi = y_hi * 1.08 if y_hi > 0 else 1.0
            yt = nice_ticks(y_lo, y_hi)
            y_hi = max(y_hi, yt[-1]) if yt else y_hi
            fy = lambda v: py1 - (v - y_lo) / (y_hi - y_lo) * (py1 - py0)
            yticks = [t for t in yt if y_lo <= t <= y_hi]
        fx = lambda v: px0 + (v - x_lo) / (x_hi - x_lo) * (px1 - px0)
        grid = (225, 225, 225)
        for t in nice_ticks(x_lo, x_hi):
            if x_lo <= t <= x_hi:
                x = fx(t)
                d.line((x, py0 + 1, x, py1 - 1), fill=grid)
                d.line((x, py1, x, py1 + 5), fill="black")
                d.text((x, py1 + 7), _fmt(t), fill="black", font=self.small, anchor="mt")
        for t in yticks:
            y = fy(t)
            d.line((px0 + 1, y, px1 - 1, y), fill=grid)
            d.line((px0 - 5, y, px0, y), fill="black")
            d.text((px0 - 8, y), _fmt(t), fill="black", font=self.small, anchor="rm")
        d.rectangle((px0, py0, px1, py1), outline="black")
        d.text(((px0 + px1) // 2, py1 + 26), self.xlabel, fill="black", font=self.font, anchor="mt")
        # A rotated y label: draw on a small image, rotate, paste.
        lw = int(d.textlength(self.ylabel, font=self.font)) + 4
        lab = Image.new("RGB", (lw, 18), "white")
        ImageDraw.Draw(lab).text((2, 1), self.ylabel, fill="black", font=self.font)
        lab = lab.rotate(90, expand=True)
        self.image.paste(lab, (self.box[0] + 4, int((py0 + py1) / 2 - lw / 2)))
        legend = []
        for i, (name, (xs, ys)) in enumerate(series.items()):
            color = _COLORS[i % len(_COLORS)]
            pts = [(fx(x), fy(y)) for x, y in zip(xs, ys) if math.isfinite(y) and (y > 0 or not log_y)]
            if len(pts) > 1:
                d.line(pts, fill=color, width=2, joint="curve")
            if markers or len(pts) == 1:
                for x, y in pts:
                    d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
            if pts:
                legend.append((name, color))
        if legend:
            self._legend(legend)

    def _legend(self, legend: List[Tuple[str, Tuple[int, int, int]]]) -> None:
        """Series names and colours in a box right of the plot."""
        d, (_, py0, px1, _) = self.draw, self.plot
        w = max(int(d.textlength(n, font=self.small)) for n, _ in legend) + 34
        lx, ly = px1 + 12, py0
        d.rectangle((lx, ly, lx + w, ly + 18 * len(legend) + 8), fill="white", outline=(160, 160, 160))
        for i, (name, color) in enumerate(legend):
            yy = ly + 13 + 18 * i
            d.line((lx + 6, yy, lx + 24, yy), fill=color, width=3)
            d.text((lx + 30, yy), name, fill="black", font=self.small, anchor="lm")


def draw_curves(records: Iterable[Dict], path: str, max_iter: Optional[int] = None, title: str = "") -> None:
    """Draw the loss and validation curves of ``records`` (metrics.jsonl rows) to PNG ``path``."""
    records = list(records)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if any(k.startswith("val/") for k in r)]
    loss_keys = ["loss"] + sorted({k for r in train for k in r if k.startswith("loss_")})
    # The headline score, two thresholds and the per-class scores; all ten thresholds would crowd it.
    present = {k for r in val for k in r if isinstance(r[k], (int, float))}
    val_keys = [k for k in ("val/mAP", "val/mAP@0.50", "val/mAP@0.75") if k in present]
    val_keys += sorted(k for k in present if k.startswith("val/mAP/") and "@" not in k)[:7]
    val_keys += [k for k in ("val/segm/AP", "val/bbox/AP") if k in present]  # train.eval_coco
    xmax = max([max_iter or 0] + [r["iteration"] for r in records])

    def series(rows, keys):
        return {k: ([r["iteration"] for r in rows if k in r], [float(r[k]) for r in rows if k in r]) for k in keys}

    loss_series = series(train, loss_keys)
    pos = [y for _, ys in loss_series.values() for y in ys if y > 0 and math.isfinite(y)]
    log_y = bool(pos) and max(pos) / min(pos) > 10

    width, height = 1000, 760
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    if title:
        d.text((width // 2, 6), title, fill="black", font=_font(16), anchor="mt")
    top = 24 if title else 0
    mid = top + (height - top) * 3 // 5
    _Panel(img, (0, top, width, mid), "Training losses", "iteration", "loss" + (" (log scale)" if log_y else "")).render(
        loss_series, xmax, log_y, markers=False
    )
    _Panel(img, (0, mid, width, height), "Validation", "iteration", "score").render(series(val, val_keys), xmax, False, markers=True)
    with atomic_open(path, "wb") as f:
        img.save(f, format="PNG")
