"""The front ends' error convention (maskrcnn.cli): one `error:` line and exit 2 for the user's
mistakes, a traceback for our bugs, --debug / MASKRCNN_DEBUG for the user's too."""
import os
import subprocess
import sys

import pytest

from maskrcnn import cli
from maskrcnn.config import ConfigError
from maskrcnn.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raiser(exc):
    def main(argv):
        raise exc
    return main


@pytest.mark.parametrize("exc, text", [
    (ConfigError("unknown config key 'solver.lrr' (configs/x.yaml)"), "unknown config key 'solver.lrr' (configs/x.yaml)"),
    (FileNotFoundError(2, "No such file or directory", "/nope/w.pth"), "no such file or directory (/nope/w.pth)"),
    (IsADirectoryError(21, "Is a directory", "out/"), "is a directory (out/)"),
    (PermissionError(13, "Permission denied", "/root/x"), "permission denied (/root/x)"),
    (SystemExit("--set only takes test.* keys"), "--set only takes test.* keys"),
])
def test_user_errors_are_one_line_and_exit_2(exc, text, capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.run(_raiser(exc), []) == 2
    err = capsys.readouterr().err
    assert err == f"error: {text}\n"


def test_our_bugs_keep_their_traceback(monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(ZeroDivisionError):
        cli.run(_raiser(ZeroDivisionError("division by zero")), [])
    with pytest.raises(ValueError):  # a plain ValueError is not known to be the user's
        cli.run(_raiser(ValueError("x")), [])


def test_debug_flag_anywhere_or_env_shows_the_traceback(monkeypatch):
    seen = []

    def main(argv):
        seen.append(list(argv))
        raise UserError("bad value (here)")

    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(UserError):
        cli.run(main, ["a", "--debug", "b"])
    assert seen[-1] == ["a", "b"]  # main never sees the flag
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(UserError):
        cli.run(main, ["a"])
    monkeypatch.setenv(cli.DEBUG_ENV, "0")
    assert cli.run(main, ["a"]) == 2


def test_exit_codes_pass_through_and_interrupts_are_quiet(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.run(lambda argv: None, []) == 0
    assert cli.run(lambda argv: 3, []) == 3
    assert cli.run(_raiser(SystemExit(0)), []) == 0
    assert cli.run(_raiser(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_parser_errors_are_one_line_and_help_shows_defaults(capsys):
    p = cli.ArgumentParser(prog="tool")
    p.add_argument("--n", type=int, default=3, help="how many")
    p.add_argument("--name", default="", help="a name")
    p.add_argument("--flag", action="store_true", help="a flag")
    assert cli.run(lambda argv: p.parse_args(argv), ["--n", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: argument --n: invalid int value") and "tool --help" in err
    text = p.format_help()
    assert "how many (default: 3)" in text
    assert "a name (default" not in text and "a flag (default" not in text and "--debug" in text


@pytest.mark.parametrize("command", [
    ["train.py", "configs/does_not_exist.yaml"],
    ["train.py", "configs/small.yaml", "--set", "solver.lrr=1"],
    ["evaluate.py", "score", "--submission", "nope.csv", "--labels", "nope.csv"],
    ["evaluate.py", "scor"],
    ["predict.py", "--weights", "nope.pth", "--images", "."],
    ["-m", "maskrcnn", "viz", "--image", "nope.png"],
    ["-m", "maskrcnn", "make_cache", "--format", "dsb2018", "--root", "nope", "--out", "x.npz"],
])
def test_every_front_end_reports_a_user_error_in_one_line(command):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(cli.DEBUG_ENV, None)
    res = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("Warning") and "RuntimeWarning" not in ln]
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and lines and lines[-1].startswith("error: "), res.stderr[-2000:]
