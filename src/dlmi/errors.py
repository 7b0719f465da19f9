"""The one error type the CLI turns into a single line on stderr and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user; the message says what to change."""
