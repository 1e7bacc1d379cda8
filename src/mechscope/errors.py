"""The one error type mechscope raises for bad input."""


class MechscopeError(Exception):
    """Something the user asked for cannot be done; the message says what and how to fix it."""
