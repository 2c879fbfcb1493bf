"""Optional compiled extension ``spectrum_fast._C`` (csrc/): found if built, never required."""

from __future__ import annotations

import functools
from types import ModuleType


@functools.lru_cache(maxsize=None)
def load() -> ModuleType | None:
    try:
        from . import _C  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _C


def kernels_available() -> dict[str, bool]:
    """What is built: {"_C": bool, "_C.snr_statistics": bool}."""
    ext = load()
    return {"_C": ext is not None, "_C.snr_statistics": ext is not None and hasattr(ext, "snr_statistics")}
