"""Stage 2 of the two-stage eigen solve: all eigenvalues of symmetric band matrices, on the host.

LAPACK's dsbev (band -> tridiagonal by Givens bulge chasing, then root-free QR) is called through
the function pointers scipy exports for compiled code (scipy.linalg.cython_lapack), via ctypes:
ctypes drops the GIL for the call, so a thread pool runs one band per core in parallel
(scipy.linalg.eigvals_banded holds the GIL: two threads ran no faster than one).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..env_settings import env_count
from ..host_threads import process_cores

_c_int_p = ctypes.POINTER(ctypes.c_int)
_c_double_p = ctypes.POINTER(ctypes.c_double)


@functools.lru_cache(maxsize=None)
def _dsbev():
    """The dsbev function pointer from scipy, or None when scipy is missing."""
    try:
        from scipy.linalg import cython_lapack
    except ImportError:
        return None
    capsule = cython_lapack.__pyx_capi__["dsbev"]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    address = get_pointer(capsule, get_name(capsule))
    # dsbev(jobz, uplo, n, kd, ab, ldab, w, z, ldz, work, info)
    signature = ctypes.CFUNCTYPE(
        None, ctypes.c_char_p, ctypes.c_char_p, _c_int_p, _c_int_p, _c_double_p, _c_int_p,
        _c_double_p, _c_double_p, _c_int_p, _c_double_p, _c_int_p,
    )
    return signature(address)


def available() -> bool:
    return _dsbev() is not None


def band_eigvalsh(lower_band: np.ndarray) -> np.ndarray:
    """Ascending eigenvalues of one symmetric band matrix given as [n, kd+1] float64 rows
    (row j = A[j, j], A[j+1, j], ..., A[j+kd, j]; ops.band.lower_band's layout). Overwrites it."""
    fn = _dsbev()
    if fn is None:
        raise RuntimeError("the two-stage eigen route needs scipy (pip install scipy)")
    ab = lower_band
    if ab.dtype != np.float64 or not ab.flags.c_contiguous or ab.ndim != 2:
        raise ValueError("band_eigvalsh expects a C-contiguous [n, kd+1] float64 array")
    n, ldab = ab.shape
    w = np.full(n, np.nan)  # poisoned: a value LAPACK did not write shows up as NaN
    work = np.empty(max(1, 3 * n - 2))
    z = np.empty(1)
    info = ctypes.c_int(0)

    def ptr(x: np.ndarray):
        return x.ctypes.data_as(_c_double_p)

    def ref(v: int):
        return ctypes.byref(ctypes.c_int(v))

    fn(b"N", b"L", ref(n), ref(ldab - 1), ptr(ab), ref(ldab), ptr(w), ptr(z), ref(1), ptr(work), ctypes.byref(info))
    if info.value != 0:
        raise RuntimeError(f"LAPACK dsbev failed to converge (info={info.value})")
    return w


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_queued = 0  # submitted band solves that no worker has started yet


def host_workers() -> int:
    """Threads for band solves: all cores this process may use but one (it feeds the GPU); under
    torchrun, this rank's share of the node's cores (host_threads.process_cores)."""
    return env_count("SPECTRUM_FAST_HOST_WORKERS", max(1, process_cores() - 1))


def backlog() -> int:
    """Band solves waiting for a free host thread (0 when the host has spare workers)."""
    return _queued


def submit_call(fn, *args) -> Future:
    """Run ``fn(*args)`` (a band solve, GIL released inside) in the shared host pool."""
    global _pool, _queued

    def started(*a):
        global _queued
        with _pool_lock:
            _queued -= 1
        return fn(*a)

    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=host_workers(), thread_name_prefix="spectrum-fast-band")
        _queued += 1
    return _pool.submit(started, *args)
