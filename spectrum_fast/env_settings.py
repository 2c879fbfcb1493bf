"""Counts and switches read from the environment (threads, read-ahead, staging): a value that is
not a whole number (a count) or not 0 or 1 (a switch) warns and keeps the default, so a typo in a
job script never ends a scan in a traceback."""

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


def env_switch(name: str, default: bool) -> bool:
    """$name as a switch: "1" on, "0" off; ``default`` when unset or empty, or (with a warning) anything else."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if text in ("0", "1"):
        return text == "1"
    warnings.warn(f"{name}={text!r} is not 0 or 1: using {int(default)}", stacklevel=2)
    return default
