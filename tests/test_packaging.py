"""``pip install .``'s promises, checked without installing: each console script of setup.py is a
front end's ``main`` that names itself, and the model zoo's files are package data."""
import ast
import fnmatch
import importlib
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_kwargs():
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: k.value for k in call.keywords}


SCRIPTS = ast.literal_eval(_setup_kwargs()["entry_points"])["console_scripts"]


def test_the_three_commands_are_installed():
    assert sorted(s.split("=")[0] for s in SCRIPTS) == ["maskrcnn-evaluate", "maskrcnn-predict", "maskrcnn-train"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_console_script_is_a_front_end_that_names_itself(script, monkeypatch, capsys):
    name, target = script.split("=")
    module, func = target.split(":")
    main = getattr(importlib.import_module(module), func)
    monkeypatch.setattr("sys.argv", [os.path.join("/venv/bin", name)])
    assert main(["--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: {name} ")


def test_the_model_zoo_files_are_package_data():
    patterns = ast.literal_eval(_setup_kwargs()["package_data"])["maskrcnn.zoo"]
    zoo = os.path.join(REPO, "maskrcnn", "zoo")
    shipped = [f for f in os.listdir(zoo) if not f.endswith(".py") and f != "__pycache__"]
    assert "CARD_TEMPLATE.md" in shipped  # the export tool reads it from the installed package
    for f in shipped + ["nuclei.pth", "nuclei.md", "nuclei.thresholds.yaml"]:
        assert any(fnmatch.fnmatch(f, p) for p in patterns), f
