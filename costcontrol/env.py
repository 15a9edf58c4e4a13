"""Reading configuration from the environment, loudly.

Settings modules use these helpers so that a missing required value stops the
process at start-up with the variable's name, instead of failing later.
"""

from __future__ import annotations

import os

_REQUIRED = object()


class MissingSetting(RuntimeError):
    """A required environment variable is not set."""


def env_str(name: str, default: str | object = _REQUIRED) -> str:
    value = os.environ.get(name)
    if value is not None and value != "":
        return value
    if default is _REQUIRED:
        raise MissingSetting(f"environment variable {name} is required")
    return str(default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise MissingSetting(f"environment variable {name} must be a boolean, got {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer, refused (with the variable's name and the bounds) outside ``minimum``..``maximum``."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise MissingSetting(f"environment variable {name} must be an integer, got {value!r}") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        low = "" if minimum is None else f" from {minimum}"
        high = "" if maximum is None else f" to {maximum}"
        raise MissingSetting(f"environment variable {name} must be an integer{low}{high}, got {value!r}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]
