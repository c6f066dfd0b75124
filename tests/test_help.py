"""``--help`` of every front end: the real program name, each option's default, no odd choices."""
import re

import pytest

import evaluate
import predict
import train
from maskrcnn import export, viz
from maskrcnn.data import make_cache, synthetic
from maskrcnn.scale import commands as scale
from maskrcnn.zoo import export as zoo_export

FRONT_ENDS = [
    (train.main, [], "train.py"),
    (predict.main, [], "predict.py"),
    (evaluate.main, [], "evaluate.py"),
    (evaluate.main, ["score"], "evaluate.py score"),
    (evaluate.main, ["coco"], "evaluate.py coco"),
    (evaluate.main, ["ablate"], "evaluate.py ablate"),
    (evaluate.main, ["tune"], "evaluate.py tune"),
    (evaluate.main, ["labels"], "evaluate.py labels"),
    (viz.main, [], "python -m maskrcnn.viz"),
    (make_cache.main, [], "python -m maskrcnn.data.make_cache"),
    (synthetic.main, [], "python -m maskrcnn.data.synthetic"),
    (scale.main, ["slide"], "python -m maskrcnn.scale slide"),
    (scale.main, ["collection"], "python -m maskrcnn.scale collection"),
    (export.main, [], "python -m maskrcnn.export"),
    (zoo_export.main, ["export"], "python -m maskrcnn.zoo export"),
]


@pytest.mark.parametrize("main, sub, prog", FRONT_ENDS, ids=[p for _, _, p in FRONT_ENDS])
def test_help_names_the_program_and_shows_defaults(main, sub, prog, capsys):
    assert main(sub + ["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {prog} ")
    assert not re.search(r"\{,|,\}|,,", text), "a choice that is the empty string"
    # every option with a default value says so (flags and options without a default excepted)
    blocks = re.split(r"\n  (?=-)", text.split("options:")[-1])
    for block in blocks:
        m = re.match(r"(--[\w-]+)", block.strip())
        if m and m.group(1) in DEFAULTS.get(prog, {}):
            assert f"(default: {DEFAULTS[prog][m.group(1)]})" in " ".join(block.split()), (prog, m.group(1))


DEFAULTS = {
    "predict.py": {"--format": "csv", "--device": "auto", "--amp": "none", "--batch-size": "1"},
    "evaluate.py score": {"--order": "auto", "--max-errors": "50"},
    "evaluate.py coco": {"--iou-types": "segm bbox"},
    "evaluate.py tune": {"--order": "row", "--mask-grid": "0.3 0.4 0.45 0.5 0.55 0.6 0.7"},
    "python -m maskrcnn.viz": {"--thickness": "1", "--palette": "okabe-ito", "--order": "auto"},
    "python -m maskrcnn.data.synthetic": {"--num-images": "48", "--seed": "0", "--cells": "6 24"},
    "python -m maskrcnn.data.make_cache": {"--image-codec": "webp"},
    "python -m maskrcnn.scale slide": {"--block": "512", "--overlap": "64", "--skip-contrast": "0.1", "--workers": "2"},
    "python -m maskrcnn.scale collection": {"--format": "csv", "--images-per-task": "4", "--workers": "2"},
    "python -m maskrcnn.export": {"--channels": "3"},
}
