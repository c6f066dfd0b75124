"""Progress of long loops: a tqdm bar, or (for logs, notebooks and Kaggle kernels, where a bar
fills the output with carriage returns) one line now and then with an ETA.

    for x in track(items, desc="predict", mode="bar"):    # or mode="lines" / "off"
        ...

``lines`` prints ``<desc>: 120/3000 img (4%), 2.10 img/s, elapsed 0:57, ETA 22:51`` to stderr
after the first item, then every ``every`` seconds, and once at the end.

A bar is drawn only on a terminal: ``mode="bar"`` prints lines instead when the stream is not one
(a log file, CI, a Kaggle log, a pipe), where tqdm's carriage-return updates pile up in one line.
``progress_mode(no_progress)`` is what the front ends pass (``--no-progress``: lines everywhere).
"""
from __future__ import annotations

import sys
import time
from typing import IO, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
MODES = ("bar", "lines", "off")


def is_terminal(file: Optional[IO] = None) -> bool:
    """True when ``file`` (default: stderr) is an interactive terminal."""
    f = file if file is not None else sys.stderr
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_mode(no_progress: bool = False, file: Optional[IO] = None) -> str:
    """``bar`` on a terminal, else (or with ``--no-progress``) ``lines``."""
    return "lines" if no_progress or not is_terminal(file) else "bar"


def format_seconds(s: float) -> str:
    """``h:mm:ss`` or ``m:ss``."""
    s = int(round(max(s, 0.0)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def progress_line(desc: str, done: int, total: Optional[int], elapsed: float, unit: str = "img") -> str:
    """One progress line: count (and share of ``total``), rate, elapsed time and ETA."""
    rate = done / elapsed if elapsed > 0 else 0.0
    count = f"{done}/{total} {unit} ({100.0 * done / total:.0f}%)" if total else f"{done} {unit}"
    line = f"{desc}: {count}, {rate:.2f} {unit}/s, elapsed {format_seconds(elapsed)}"
    if total and done < total:
        line += f", ETA {format_seconds((total - done) / rate) if rate > 0 else '?'}"
    return line


def track(iterable: Iterable[T], desc: str = "", total: Optional[int] = None, mode: str = "bar", unit: str = "img",
          every: float = 30.0, file: Optional[IO] = None, leave: bool = True) -> Iterator[T]:
    """``iterable`` with progress shown as ``mode`` says (``bar``, ``lines`` or ``off``; see the module doc)."""
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if mode == "bar" and not is_terminal(file):
        mode = "lines"
    if mode == "bar":
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=leave)
        return
    if mode == "off":
        yield from iterable
        return
    out = file if file is not None else sys.stderr
    t0 = last = time.perf_counter()
    done = printed = 0
    for item in iterable:
        yield item
        done += 1
        now = time.perf_counter()
        if done == 1 or now - last >= every or (total is not None and done == total):
            print(progress_line(desc, done, total, now - t0, unit), file=out, flush=True)
            last, printed = now, done
    if done != printed:  # an iterable without a length, or shorter than ``total``
        print(progress_line(desc, done, total, time.perf_counter() - t0, unit), file=out, flush=True)
