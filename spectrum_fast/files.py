"""Atomic writes: an output file is either complete or absent, never half-written; and the JSON
reader of the files we write back, with one-line errors."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import SelectionError


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask() sets it, briefly
    affecting files other threads create)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def names_directory(path: str | os.PathLike) -> bool:
    """``path`` is an existing directory, or is written as one (ends in a separator): an output
    method then puts its default file name inside (created if missing) rather than writing a
    file named like the folder."""
    text = os.fspath(path)
    return Path(text).is_dir() or text.endswith(("/", os.sep))


def read_json_file(path: str | os.PathLike, missing: str, invalid: str):
    """The JSON data in ``path``; SelectionError "<path>: <missing>" when it is not a file, and
    "<path>: not valid JSON (...): <invalid>" when it does not parse."""
    path = Path(path)
    if not path.is_file():
        raise SelectionError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SelectionError(f"{path}: not valid JSON ({e.__class__.__name__}: {e}): {invalid}") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp creates 0600; results are meant to be shared: give them open()'s usual mode.
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Interrupted (Ctrl-C, disk full): leave nothing behind but what was there before.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
