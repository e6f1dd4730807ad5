"""Errors meant for the user: the tools print their message (no traceback) and exit non-zero."""


class UserError(Exception):
    """Bad input from a user: a config, a data file, a request. The message says what, where and how to fix it."""


class DataError(UserError):
    """A data file or directory is missing or malformed."""
