"""The bulge-chasing reference (tests/bulge_chasing_reference.py) against LAPACK: the reduced
matrix is tridiagonal, and its eigenvalues are the band matrix's. Fresh random bands every run,
of several kinds (random, spiked, clustered, with zero columns), widths and sizes, including
sizes that are not multiples of the width."""

from __future__ import annotations

import random

import numpy as np
import pytest
import scipy.linalg

from bulge_chasing_reference import band_to_tridiagonal, reduce_dense, reduce_dense_pipelined

SEED = random.SystemRandom().randrange(2**31)


def band_matrix(n: int, b: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((n, n))
    if kind == "spiked":  # a few large eigenvalues over a small bulk, as a weight's Gram has
        r = min(3, n)
        u = np.linalg.qr(rng.standard_normal((n, r)))[0]
        a = 0.01 * a + u @ np.diag([1e3, 50.0, 7.0][:r]) @ u.T
    a = (a + a.T) / 2
    if kind == "clustered":  # eigenvalues in tight groups
        q = np.linalg.qr(rng.standard_normal((n, n)))[0]
        a = q @ np.diag(np.repeat([1.0, 1.0 + 1e-10, 5.0], -(-n // 3))[:n]) @ q.T
    if kind == "zero_columns":
        a[:, n // 3] = a[n // 3, :] = 0.0
    rows, cols = np.indices((n, n))
    a[np.abs(rows - cols) > b] = 0.0
    return a


@pytest.mark.parametrize("kind", ["random", "spiked", "clustered", "zero_columns"])
@pytest.mark.parametrize("n,b", [(2, 1), (3, 2), (17, 4), (40, 8), (67, 16), (130, 32), (33, 40)])
def test_reduction_is_tridiagonal_with_the_band_eigenvalues(n, b, kind):
    rng = np.random.default_rng([SEED, n, b])
    a = band_matrix(n, b, kind, rng)
    t = reduce_dense(a, b)
    scale = np.abs(a).max()
    rows, cols = np.indices((n, n))
    assert np.abs(t[np.abs(rows - cols) > 1]).max(initial=0.0) <= 1e-13 * scale, f"[seed={SEED}] not tridiagonal"
    assert np.allclose(t, t.T, rtol=0, atol=1e-13 * scale), f"[seed={SEED}] lost symmetry"
    d, e = band_to_tridiagonal(a, b)
    got = scipy.linalg.eigvalsh_tridiagonal(d, e) if n > 1 else d
    want = np.linalg.eigvalsh(a)
    lam_max = np.abs(want).max()
    assert np.abs(np.sort(got) - want).max() <= 1e-13 * lam_max, f"[seed={SEED}] {kind} n={n} b={b}"


def test_agrees_with_lapack_dsbev_on_a_gram_band():
    """A band from the GPU's stage 1 is what the kernel will take: here, a Gram reduced to band
    form by a dense orthogonal similarity stands in, against LAPACK's band solver."""
    rng = np.random.default_rng(SEED)
    n, b = 200, 16
    w = rng.standard_normal((n, 3 * n)) / np.sqrt(3 * n)
    g = w @ w.T
    # dense -> band by blocked Householder (what ops.band does on the GPU), in numpy
    a = g.copy()
    for k in range(0, n - b - 1, b):
        q, r = np.linalg.qr(a[k + b :, k : k + b], mode="complete")
        a[k + b :, :] = q.T @ a[k + b :, :]
        a[:, k + b :] = a[:, k + b :] @ q
    rows, cols = np.indices((n, n))
    assert np.abs(a[np.abs(rows - cols) > b]).max() <= 1e-13 * np.abs(g).max()
    a[np.abs(rows - cols) > b] = 0.0
    ab = np.zeros((b + 1, n))  # LAPACK lower band storage
    for i in range(b + 1):
        ab[i, : n - i] = np.diag(a, -i)
    want = scipy.linalg.eig_banded(ab, lower=True, eigvals_only=True)
    d, e = band_to_tridiagonal(a, b)
    got = np.sort(scipy.linalg.eigvalsh_tridiagonal(d, e))
    assert np.abs(got - want).max() <= 1e-13 * want.max(), f"[seed={SEED}]"


@pytest.mark.parametrize("lag", [3, 2])
@pytest.mark.parametrize("kind", ["random", "spiked", "zero_columns"])
@pytest.mark.parametrize("n,b", [(3, 2), (17, 4), (40, 8), (67, 16), (130, 32), (33, 40), (101, 3)])
def test_sweeps_two_or_three_steps_apart_give_the_sequential_result(n, b, kind, lag):
    """The schedules a pipelined chase kernel runs (sweep i at step t - lag i at time t, one time
    step's steps side by side; lag 3 or 2) give the sequential reduction bit for bit, whichever of
    a time step's steps runs first: they touch disjoint entries."""
    a = band_matrix(n, b, kind, np.random.default_rng(SEED + 7 * n + b))
    sequential = reduce_dense(a, b)
    for newest_first in (False, True):
        assert np.array_equal(reduce_dense_pipelined(a, b, lag, newest_first), sequential), f"seed={SEED}"


def test_sweeps_one_step_apart_collide():
    """The check above can fail: one step apart, a time step's steps overlap and their order
    changes the result."""
    a = band_matrix(64, 8, "random", np.random.default_rng(SEED))
    assert not np.array_equal(reduce_dense_pipelined(a, 8, 1, newest_first=True), reduce_dense(a, 8)), f"seed={SEED}"
