"""memberbench's user-facing error (standard library only, so light modules can raise it)."""

from __future__ import annotations


class MemberbenchError(ValueError):
    """A user-facing error: its message says what was wrong and what to do. Never a traceback."""
