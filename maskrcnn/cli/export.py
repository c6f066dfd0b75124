"""Export a trained model for deployment: one ``.pt2`` file (``torch.export``), image in, detections out.

    python -m maskrcnn export --weights output/dsb2018_cpu/model_final.pth --size 520 704 --out model.pt2

The file runs with ``torch.export.load(path).module()(image)`` once the compiled ops are
registered (``import maskrcnn._C`` or ``torch.ops.load_library``); see docs/deploy.md and
``maskrcnn.inference.deploy`` for the inputs and outputs.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from maskrcnn import cli
from maskrcnn.errors import UserError
from maskrcnn.fileio import check_output_path
from maskrcnn.inference.checkpoint import load_model
from maskrcnn.inference.deploy import export_model, save_exported
from maskrcnn.ops import get_ext


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The exit code of ``python -m maskrcnn export argv`` (user errors: one ``error:`` line and 2)."""
    return cli.run(_export, argv)


def _export(argv: Sequence[str]) -> None:
    p = cli.ArgumentParser(prog="python -m maskrcnn export", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="checkpoint (.pth) of a trained model")
    p.add_argument("--out", required=True, help="the .pt2 file to write")
    p.add_argument("--size", type=cli.int_at_least(1), nargs=2, required=True, metavar=("H", "W"),
                   help="the input image size the program is exported for")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="channels of the input image")
    p.add_argument("--config", default=None, help="YAML config for a bare state dict (or to override the checkpoint's)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. "
                   "model.roi_heads.score_thresh=0.3")
    args = p.parse_args(argv)
    check_output_path(args.out, "--out")
    if get_ext() is None:
        raise UserError("export needs the compiled ops: build them with python setup.py build_ext --inplace "
                        "(maskrcnn._C)")
    # Export traces the eager modules: a config asking for regional compilation is exported uncompiled.
    model, _ = load_model(args.weights, "cpu", args.config, list(args.set) + ["model.compile=none"])
    example = torch.rand(args.channels, args.size[0], args.size[1])
    t = time.time()
    program = export_model(model, example)
    save_exported(program, args.out)
    print(f"exported {args.weights} for {args.channels}x{args.size[0]}x{args.size[1]} images to {args.out} "
          f"in {time.time() - t:.0f} s")
