"""Errors shown to users as one clear message, without a traceback."""


class UserError(Exception):
    """Bad input or configuration: the message says what is wrong and what to do."""
