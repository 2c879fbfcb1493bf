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


def cuda_ops() -> ModuleType | None:
    """The extension when it was built with its CUDA kernels (setup.py, where nvcc and a CUDA
    torch exist), else None."""
    ext = load()
    return ext if ext is not None and getattr(ext, "with_cuda", False) else None


def kernels_available() -> dict[str, bool]:
    """What is built: {"_C": the extension, "_C.snr_statistics": its CPU statistics, "_C.cuda": its
    CUDA part, "_C.householder_panels": the batched panel QR of the eigen route's stage 1,
    "_C.bulge_chase": its pipelined band-to-tridiagonal chase, "_C.ldlt_unpivoted": the small LDL^T
    of the inertia count and Cholesky QR, "_C.small_eigh_jacobi": the batched small eigen solver of
    the randomized SVD (built where cuSOLVER was found)}.
    ``spectrum-fast doctor`` says what each operation will use."""
    ext, cuda = load(), cuda_ops()
    return {
        "_C": ext is not None,
        "_C.snr_statistics": ext is not None and hasattr(ext, "snr_statistics"),
        "_C.cuda": cuda is not None,
        "_C.householder_panels": cuda is not None and hasattr(cuda, "householder_panels_"),
        "_C.bulge_chase": cuda is not None and hasattr(cuda, "band_to_tridiagonal_"),
        "_C.ldlt_unpivoted": cuda is not None and hasattr(cuda, "ldlt_unpivoted"),
        "_C.small_eigh_jacobi": cuda is not None and getattr(cuda, "small_eigh_jacobi_max_size", lambda: 0)() > 0,
    }
