"""The command lines, one module per command, and what they share: one error convention and one
argument parser.

    train.py, maskrcnn-train            maskrcnn.cli.train
    predict.py, maskrcnn-predict        maskrcnn.cli.predict
    evaluate.py, maskrcnn-evaluate      maskrcnn.cli.evaluate
    python -m maskrcnn COMMAND          maskrcnn.cli.COMMAND: export, make_cache, pseudo_label, scale,
                                        synthetic, viz, zoo (``maskrcnn/__main__.py``)

A command module parses its arguments and calls the layer that does the work (data, inference,
evaluation, engine); the front ends are the top layer. Each command's ``main(argv)`` runs under :func:`run`:

- a user's mistake (``maskrcnn.errors.UserError`` and the errors derived from it, a file that is
  missing, unreadable or a folder where a file was expected, an unknown or malformed argument) is
  printed as one line ``error: <what is wrong> (<where>)`` on stderr and the exit code is 2
  (``maskrcnn.errors.user_error_message``);
- anything else is a bug of ours and keeps its traceback (exit 1);
- ``--debug`` anywhere on the command line, or ``MASKRCNN_DEBUG=1``, shows the traceback of user
  errors too;
- Ctrl-C ends with ``interrupted`` and exit 130, without a traceback;
- ``SystemExit`` becomes the return value (``SystemExit("message")``: an ``error:`` line and 2), so
  ``main(argv)`` returns its exit code to a caller in the same process (tests, notebooks).

:class:`ArgumentParser` reports its own errors the same way (one line, exit 2, instead of
argparse's usage block) and shows each option's default in ``--help``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

from maskrcnn.errors import user_error_message

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_FLAG = "--debug"
DEBUG_ENV = "MASKRCNN_DEBUG"

def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def run(main: Callable[[Sequence[str]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Call ``main(argv)`` (``sys.argv[1:]`` by default) under the error convention; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse (--help: 0; errors: 2, already printed), or sys.exit(...) in main
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(f"error: {e.code}", file=sys.stderr)  # SystemExit("message"): a message for the user
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - sorted into the user's mistakes and our bugs below
        message = user_error_message(e)
        if message is None or debug:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0 if code is None else int(code)


def program(default: str) -> str:
    """The program name ``--help`` shows: the installed command when run as one (``maskrcnn-predict``,
    setup.py's console scripts), else ``default`` (``predict.py``)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith("maskrcnn-") else default


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low`` (``--batch-size``, ``--limit``, ``--max-errors``...)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def add_set_option(parser: argparse.ArgumentParser, help: str, flag: str = "--set") -> argparse.Action:
    """The front ends' ``--set KEY=VALUE ...`` option: values accumulate over repeats
    (``--set a=1 --set b=2`` keeps both; argparse's default ``store`` would keep only the last group)."""
    return parser.add_argument(flag, nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                               help=f"{help}; repeatable, all groups apply")


def _default_note(action: argparse.Action) -> Optional[str]:
    """``(default: X)`` for an option with a real default, else None."""
    default = action.default
    if (default is None or default is False or default in ("", [], ()) or default is argparse.SUPPRESS
            or action.option_strings == [] and action.nargs in (None, 1)):
        return None
    shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
    return f"(default: {shown})"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends ``(default: X)`` to options that have a real default."""

    def _get_help_string(self, action):
        text = action.help or ""
        note = _default_note(action)
        if "default" in text or note is None:
            return text
        return f"{text} {note}" if text else note


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the front ends' conventions: one-line errors (exit 2), defaults in ``--help``,
    and ``--debug`` listed (``run`` acts on it wherever it stands)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        if self.add_help:
            self.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of errors (also MASKRCNN_DEBUG=1)")

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if action.help is None and _default_note(action):  # argparse prints nothing for an option without help
            action.help = _default_note(action)
        return action

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
