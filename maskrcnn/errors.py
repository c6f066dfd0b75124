"""The one base class of the user's mistakes.

A ``UserError`` says that something the user gave is wrong: a file (missing, unreadable, malformed),
a value (out of range, of the wrong type), a setting (an unknown key, a device that is not there)
or a request that cannot be honoured (a run directory in use). Its message names the thing and,
in parentheses, where it is: ``what is wrong (file, row, key or value)``.

Every front end (``maskrcnn.cli.run``) prints a ``UserError`` as one line ``error: <message>`` and
exits with 2; any other exception is a bug of ours and keeps its traceback. The specific errors of
each layer (``ConfigError``, ``RLEError``, ``ImageReadError``, ``WeightsError``, ``RunError`` ...)
derive from it, so a front end needs to know none of them. ``user_error_message`` also counts the
OS errors that describe the user's files or machine as theirs.
"""
from __future__ import annotations

import errno
from typing import Optional


class UserError(Exception):
    """A mistake in the user's input; the message names it and where it is."""


class InputError(UserError, ValueError):
    """A malformed input file or value that no more specific error of its layer describes
    (a dataset cache, a split file); the message names it."""


# OS errors that describe the user's files or machine, not a bug: a path that is missing, not
# readable or writable, a folder given for a file (or the reverse), a full or read-only disk.
_USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_USER_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}


def user_error_message(exc: BaseException) -> Optional[str]:
    """The one-line message for ``exc`` when it is the user's mistake, else None (a bug)."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OSError) and (isinstance(exc, _USER_OS_ERRORS) or exc.errno in _USER_ERRNOS):
        if exc.filename is not None and exc.strerror:
            where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
            return f"{exc.strerror.lower()} ({where})"
        return str(exc)
    return None
