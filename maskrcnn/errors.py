"""The one base class of the user's mistakes.

A ``UserError`` says that something the user gave is wrong: a file (missing, unreadable, malformed),
a value (out of range, of the wrong type), a setting (an unknown key, a device that is not there)
or a request that cannot be honoured (a run directory in use). Its message names the thing and,
in parentheses, where it is: ``what is wrong (file, row, key or value)``.

Every front end (``maskrcnn.cli.run``) prints a ``UserError`` as one line ``error: <message>`` and
exits with 2; any other exception is a bug of ours and keeps its traceback. The specific errors of
each layer (``ConfigError``, ``RLEError``, ``ImageReadError``, ``WeightsError``, ``RunError`` ...)
derive from it, so a front end needs to know none of them.
"""


class UserError(Exception):
    """A mistake in the user's input; the message names it and where it is."""
