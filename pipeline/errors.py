"""The one exception type that reaches the user as a single line.

Library code raises :class:`LineageError` for bad input it can name (a params key, a file, a URL);
stage entry points print it as one line and exit non-zero instead of showing a traceback.
"""


class LineageError(Exception):
    """Bad input or an unrecoverable condition, described in one line."""
