"""User-facing errors: one line naming what, where and how to fix it, and a non-zero exit.

`UserError` is a click exception, so a tool built on click prints `Error: <message>` and exits
with status 2 without a traceback. Library code raises it for mistakes a user can make (bad
paths, malformed files, bad option values); programming errors stay ordinary exceptions.
"""
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
