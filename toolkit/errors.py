"""User-facing errors: one line naming what, where and how to fix it, and a non-zero exit.

`UserError` is a click exception, so a tool built on click prints `Error: <message>` and exits
with status 2 without a traceback. Library code raises it for mistakes a user can make (bad
paths, malformed files, bad option values); programming errors stay ordinary exceptions.
"""
import contextlib
import os

import click


class UserError(click.ClickException):
    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)


class Stalled(click.ClickException):
    """A process or a collective that stopped answering (a hung or dead loader worker, a rank that
    never reaches a collective): the run ends in bounded time with this one line, exit status 1."""
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)


class Failed(click.ClickException):
    """Something a run depends on failed in a way it cannot go on from (a loader's library error):
    one line, exit status 1."""
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)


# --- leaving at once (os._exit) without losing what must be said ---------------------------------------
_LAST_WORDS = []


def at_hard_exit(fn):
    """Call fn(code) before hard_exit leaves (the run's status file); returns fn for forget_hard_exit."""
    _LAST_WORDS.append(fn)
    return fn


def forget_hard_exit(fn):
    with contextlib.suppress(ValueError):
        _LAST_WORDS.remove(fn)


def hard_exit(code: int):
    """os._exit(code) after the registered last words (each bounded, none may stop the exit): for a
    process whose clean exit could wait without end (a collective, a dead worker's lock)."""
    for fn in reversed(_LAST_WORDS):
        with contextlib.suppress(Exception):
            fn(code)
    os._exit(code)
