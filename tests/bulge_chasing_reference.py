"""Reference (numpy, float64, slow): a symmetric band matrix reduced to tridiagonal form by
Householder bulge chasing, the algorithm a GPU band-to-tridiagonal kernel will run in place of the
host's LAPACK dsbev (its Givens version). Written for clarity, to pin down the algorithm and check
kernels against it; tests/test_bulge_chasing.py checks it against LAPACK.

Sweep i annihilates column i below its subdiagonal with one reflector H of length <= b, applied
to both sides of the diagonal block it spans. Applying H from the right to the block below fills
that block; a second reflector annihilates only the first column of that fill, and the next
diagonal block and the block below it are updated in turn, down the matrix (the chase). The rest
of each bulge lies inside column i + 1's window and is annihilated by sweep i + 1, so between
sweeps the matrix has up to 2b - 1 subdiagonals (LAPACK's dsytrd_sb2st keeps 2b + 1 rows of
storage for the same reason). Only eigenvalues are wanted: no reflector is kept.
"""

from __future__ import annotations

import numpy as np


def householder(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """v (v[0] = 1), tau, beta with (I - tau v v^T) x = (beta, 0, ..., 0)."""
    alpha = x[0]
    sigma = float(x[1:] @ x[1:])
    v = x.astype(np.float64).copy()
    v[0] = 1.0
    if sigma == 0.0:
        return v, 0.0, float(alpha)
    beta = -np.copysign(np.sqrt(alpha * alpha + sigma), alpha)
    v[1:] = x[1:] / (alpha - beta)
    tau = (beta - alpha) / beta
    return v, float(tau), float(beta)


def _two_sided(d: np.ndarray, v: np.ndarray, tau: float) -> None:
    """d <- H d H in place, H = I - tau v v^T, d symmetric."""
    w = tau * (d @ v)
    w -= (0.5 * tau * (v @ w)) * v
    d -= np.outer(v, w) + np.outer(w, v)


def band_to_tridiagonal(a: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal and subdiagonal of a tridiagonal matrix similar to symmetric ``a`` ([n, n],
    bandwidth ``b``: a[r, c] = 0 for |r - c| > b)."""
    t = reduce_dense(a, b)
    return np.diag(t).copy(), np.diag(t, -1).copy()


def reduce_dense(a: np.ndarray, b: int) -> np.ndarray:
    """The whole reduced matrix (tridiagonal up to rounding), sweep after sweep. Works on a dense
    copy: clarity over speed."""
    a = np.array(a, dtype=np.float64)
    for i in range(a.shape[0] - 2):
        for _ in _sweep(a, i, b):
            pass
    return a


def _sweep(a: np.ndarray, i: int, b: int):
    """Sweep i of reduce_dense as a generator: each ``yield`` ends one step. Step 0 annihilates
    column i and updates the diagonal block at i + 1; step k >= 1 chases the bulge one block down.
    Step k reads and writes only rows and columns in [i + 1 + (k - 1) b, i + 1 + (k + 1) b) (step
    0: column i and [i + 1, i + 1 + b))."""
    n = a.shape[0]
    j1 = i + 1
    len1 = min(b, n - j1)
    if len1 < 2:
        return
    v, tau, beta = householder(a[j1 : j1 + len1, i])
    a[j1, i] = a[i, j1] = beta
    a[j1 + 1 : j1 + len1, i] = a[i, j1 + 1 : j1 + len1] = 0.0
    _two_sided(a[j1 : j1 + len1, j1 : j1 + len1], v, tau)
    yield
    while True:
        j2 = j1 + len1
        if j2 >= n:
            return
        len2 = min(b, n - j2)
        blk = a[j2 : j2 + len2, j1 : j1 + len1]
        blk -= np.outer(blk @ v, tau * v)  # block below, from the right: blk <- blk H
        if len2 < 2:  # a 1-row block needs no second reflector
            a[j1 : j1 + len1, j2 : j2 + len2] = blk.T
            return
        v2, tau2, beta2 = householder(blk[:, 0])
        blk -= np.outer(tau2 * v2, v2 @ blk)  # from the left: blk <- H2 blk
        blk[0, 0], blk[1:, 0] = beta2, 0.0
        a[j1 : j1 + len1, j2 : j2 + len2] = blk.T  # keep the dense copy symmetric
        _two_sided(a[j2 : j2 + len2, j2 : j2 + len2], v2, tau2)
        j1, len1, v, tau = j2, len2, v2, tau2
        yield


def reduce_dense_pipelined(a: np.ndarray, b: int, lag: int = 3, newest_first: bool = False) -> np.ndarray:
    """reduce_dense with the sweeps overlapped as a GPU kernel runs them: at time t, sweep i does
    its step t - lag * i, all active sweeps side by side. Sweep i + 1's step k touches rows and
    columns below i + 2 + (k + 1) b, and sweep i's steps from k + lag on touch none of them when
    lag >= 3, while the steps of sweep i that do (up to k + 2) are done: the result is the
    sequential one, bit for bit, in whatever order one time step's steps run (``newest_first``
    reverses it, as a race on the GPU could). At lag 2 the two steps of a time step share the
    index j = i + 1 + (k + 1) b but no entry (sweep i + 1's step k reaches row j only up to column
    j, sweep i's step k + 2 column j only from row j + b), and sweep i's step k + 1, which wrote
    what sweep i + 1's step k reads, ran a time step before: the result is the sequential one
    too. At lag 1, one time step's steps overlap."""
    a = np.array(a, dtype=np.float64)
    n = a.shape[0]
    sweeps = {}
    t = 0
    while True:
        started = t // lag if t % lag == 0 and t // lag < n - 2 else None
        if started is not None:
            sweeps[started] = _sweep(a, started, b)
        if not sweeps:
            if t // lag >= n - 2:
                return a
            t += 1
            continue
        for i in sorted(sweeps, reverse=newest_first):
            if next(sweeps[i], "done") == "done":
                del sweeps[i]
        t += 1
