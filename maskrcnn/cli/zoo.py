"""``python -m maskrcnn zoo export|list``: make a model zoo entry from a checkpoint, list the entries
(``maskrcnn.zoo.export`` says what an entry holds)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from maskrcnn import cli
from maskrcnn.config import ConfigError
from maskrcnn.inference.zoo import CARD_SUFFIX, THRESHOLDS_SUFFIX, WEIGHTS_SUFFIX, zoo_dir, zoo_names
from maskrcnn.zoo import export as zoo_export


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m maskrcnn zoo", description=zoo_export.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="make a zoo entry (fp16 weights + config, card, thresholds) from a checkpoint")
    e.add_argument("checkpoint", help="a training checkpoint, e.g. output/nuclei_cpu/model_final.pth")
    e.add_argument("--name", required=True, help="the entry's name (--weights NAME), e.g. nuclei")
    e.add_argument("--thresholds", default=None, help="tuned thresholds YAML (evaluate.py tune) to ship beside it")
    e.add_argument("--out-dir", default=None, help=f"the zoo folder (default: $MASKRCNN_ZOO or {zoo_dir()})")
    e.add_argument("--config", default=None, help="YAML config for a bare state dict")
    e.add_argument("--overwrite", action="store_true", help="replace an entry of that name (its card is kept)")
    sub.add_parser("list", help="the zoo's entries")
    return p


def _run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for n in zoo_names():
            path = os.path.join(zoo_dir(), n + WEIGHTS_SUFFIX)
            extra = " + thresholds" if os.path.isfile(os.path.join(zoo_dir(), n + THRESHOLDS_SUFFIX)) else ""
            print(f"{n:<20}{os.path.getsize(path) / 2**20:8.1f} MiB  {path}{extra}")
        if not zoo_names():
            print(f"no models in {zoo_dir()}", file=sys.stderr)
        return 0
    if args.thresholds and not os.path.isfile(args.thresholds):
        raise ConfigError(f"--thresholds: file not found ({args.thresholds})")
    r = zoo_export.export(args.checkpoint, args.name, args.out_dir, args.thresholds, args.overwrite, args.config)
    print(f"wrote {r['weights']}: {r['bytes'] / 2**20:.2f} MiB; the tensors {r['fp16_bytes'] / 2**20:.2f} MiB in "
          f"float16, {r['fp32_bytes'] / 2**20:.2f} MiB in float32 ({r['fp16_bytes'] / r['fp32_bytes']:.3f}x); the "
          f"checkpoint {r['source_bytes'] / 2**20:.2f} MiB ({r['bytes'] / r['source_bytes']:.3f}x: no optimizer state)")
    print(f"fp16 rounding: largest relative error {r['max_rel_error']:.2e} ({r['worst']}), "
          f"{r['flushed']} nonzero value(s) rounded to 0")
    if r["thresholds"]:
        print(f"wrote {r['thresholds']}")
    print(f"wrote {r['card']} (fill in the TBDs)" if r["card"] else
          f"kept the existing card {os.path.join(os.path.dirname(r['weights']), args.name + CARD_SUFFIX)}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The exit code of ``python -m maskrcnn zoo argv`` (user errors: one ``error:`` line and 2)."""
    return cli.run(_run, argv)
