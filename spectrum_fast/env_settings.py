"""Counts read from the environment (threads, read-ahead): a value that is not a whole number warns
and keeps the default, so a typo in a job script never ends a scan in a traceback."""

from __future__ import annotations

import os
import warnings


def env_count(name: str, default: int, minimum: int = 1) -> int:
    """int($name), at least ``minimum``; ``default`` when unset or empty, or (with a warning) not a number."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return max(minimum, int(text))
    except ValueError:
        warnings.warn(f"{name}={text!r} is not a whole number: using {default}", stacklevel=2)
        return default
