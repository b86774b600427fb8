"""Errors the user can fix; the CLI prints them as one line."""


class UserError(Exception):
    """An expected error: the CLI prints its message as one line and exits with .exit_code (default 1)."""

    exit_code = 1
