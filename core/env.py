"""Numbers from environment variables, checked the same way everywhere."""
from __future__ import annotations

import math
from collections.abc import Mapping

from core.errors import ConfigError


def env_number(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0, maximum: float = math.inf,
               *, integer: bool = False, error: type[Exception] = ConfigError) -> float:
    """`env[name]` as a number (an int with `integer`) in [minimum, maximum]; `default` when it is unset or empty;
    `error` (one line naming the variable) when it is not such a number."""
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise error(f"{name}={raw!r} is not {'an integer' if integer else 'a number'}") from None
    if not minimum <= value <= maximum:
        bound = f"must be >= {minimum}" if maximum == math.inf else f"must be between {minimum} and {maximum}"
        raise error(f"{name}={raw!r} {bound}")
    return value
