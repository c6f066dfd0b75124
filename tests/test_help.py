"""``--help`` of every front end: the real program name, each option's default, no odd choices."""
import os
import re

import pytest

import evaluate
import predict
import train
from maskrcnn import __main__ as maskrcnn_main
from maskrcnn.cli import export, make_cache, scale, synthetic, viz, zoo

FRONT_ENDS = [
    (train.main, [], "train.py"),
    (predict.main, [], "predict.py"),
    (evaluate.main, [], "evaluate.py"),
    (evaluate.main, ["score"], "evaluate.py score"),
    (evaluate.main, ["coco"], "evaluate.py coco"),
    (evaluate.main, ["ablate"], "evaluate.py ablate"),
    (evaluate.main, ["tune"], "evaluate.py tune"),
    (evaluate.main, ["labels"], "evaluate.py labels"),
    (viz.main, [], "python -m maskrcnn viz"),
    (make_cache.main, [], "python -m maskrcnn make_cache"),
    (synthetic.main, [], "python -m maskrcnn synthetic"),
    (scale.main, ["slide"], "python -m maskrcnn scale slide"),
    (scale.main, ["collection"], "python -m maskrcnn scale collection"),
    (export.main, [], "python -m maskrcnn export"),
    (zoo.main, ["export"], "python -m maskrcnn zoo export"),
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
    "python -m maskrcnn viz": {"--thickness": "1", "--palette": "okabe-ito", "--order": "auto"},
    "python -m maskrcnn synthetic": {"--num-images": "48", "--seed": "0", "--cells": "6 24"},
    "python -m maskrcnn make_cache": {"--image-codec": "webp"},
    "python -m maskrcnn scale slide": {"--block": "512", "--overlap": "64", "--skip-contrast": "0.1", "--workers": "2"},
    "python -m maskrcnn scale collection": {"--format": "csv", "--images-per-task": "4", "--workers": "2"},
    "python -m maskrcnn export": {"--channels": "3"},
}


def test_python_m_maskrcnn_runs_every_command_without_a_root_script(capsys):
    """One way to start each command: ``python -m maskrcnn COMMAND`` (``maskrcnn/__main__.py``) reaches every
    module of ``maskrcnn/cli`` but the three with a script at the root."""
    cli_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "maskrcnn", "cli")
    modules = {f[:-3] for f in os.listdir(cli_dir) if f.endswith(".py") and f != "__init__.py"}
    assert set(maskrcnn_main.COMMANDS) == modules - {"train", "predict", "evaluate"}
    assert maskrcnn_main.main(["--help"]) == 0
    listed = capsys.readouterr().out
    for name in maskrcnn_main.COMMANDS:
        assert f"\n  {name} " in listed
        assert maskrcnn_main.main([name, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: python -m maskrcnn {name} ")
    assert maskrcnn_main.main([]) == 2 and maskrcnn_main.main(["nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown command 'nope'")
