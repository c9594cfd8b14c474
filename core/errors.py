"""The errors every layer shares: a user-facing `TidalError`, a `ConfigError`, and one-line exception summaries."""
from __future__ import annotations


class TidalError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits non-zero, without a traceback."""


class ConfigError(TidalError, ValueError):
    pass


def describe_exception(exc: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message` (just `Type` when there is none: torch raises a bare EOFError for an empty
    file), for one-line errors built from library exceptions."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit]}" if lines and lines[0] else type(exc).__name__
