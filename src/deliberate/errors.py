"""One exception type for user-facing errors.

The CLI catches :class:`DeliberateError`, prints its message on one line and exits non-zero, so
every bad input (unknown name, malformed data line, invalid sampling value) should raise it with a
message that names the field, file and line.
"""


class DeliberateError(ValueError):
    """A problem with user input or configuration; the message says what and where."""
