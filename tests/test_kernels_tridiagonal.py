"""The Triton bisection kernel (spectrum_fast.kernels.tridiagonal) against LAPACK's tridiagonal
solver (scipy.linalg.eigvalsh_tridiagonal): eigenvalues within a few n * eps * ||T|| on fresh
random tridiagonals every run, of several kinds (random, graded, clustered/repeated, split by zero
off-diagonals, Wilkinson's W+, all equal), sizes 1 to 40 on the CPU (several programs per matrix), to 4096 on the GPU, batches of
mixed content. On the CPU it runs under Triton's interpreter (small sizes), on CUDA compiled
(marked gpu). triton is imported at run time, as in tests/test_kernels_bulge.py."""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import scipy.linalg
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("the Triton kernels need triton (pip install triton)", allow_module_level=True)

SEED = random.SystemRandom().randrange(2**31)
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
KINDS = ["random", "graded", "clustered", "split", "wilkinson", "equal"]


def tridiagonal_eigvalsh(d, e):
    from spectrum_fast.kernels import tridiagonal  # imported at run time: see the module docstring

    return tridiagonal.tridiagonal_eigvalsh(d, e)


def tridiagonal(n: int, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    d = rng.standard_normal(n)
    e = rng.standard_normal(max(n - 1, 0))
    if kind == "graded":  # entries over 12 orders of magnitude
        d *= 10.0 ** np.linspace(-6, 6, n)
        e *= 10.0 ** np.linspace(-6, 6, n)[:-1] if n > 1 else 1.0
    elif kind == "clustered":  # a diagonal with repeated values and tiny couplings
        d = np.repeat([1.0, 2.0, 2.0 + 1e-12], -(-n // 3))[:n]
        e = 1e-14 * rng.standard_normal(max(n - 1, 0))
    elif kind == "split":  # zero off-diagonals: independent blocks
        e[rng.random(e.shape) < 0.3] = 0.0
    elif kind == "wilkinson":  # W+: pairs of nearly equal eigenvalues
        m = (n - 1) / 2
        d = np.abs(np.arange(n) - m)
        e = np.ones(max(n - 1, 0))
    elif kind == "equal":
        d = np.full(n, 3.5)
        e = np.zeros(max(n - 1, 0))
    return d, e


def check(n: int, kinds: list[str], device: str) -> None:
    rng = np.random.default_rng([SEED, n])
    pairs = [tridiagonal(n, kind, rng) for kind in kinds]
    d = torch.tensor(np.stack([p[0] for p in pairs]), dtype=torch.float64, device=device)
    e = torch.tensor(np.stack([p[1] for p in pairs]).reshape(len(kinds), max(n - 1, 0)), dtype=torch.float64,
                     device=device)
    got = tridiagonal_eigvalsh(d, e).cpu().numpy()
    for (dk, ek), row, kind in zip(pairs, got, kinds):
        want = scipy.linalg.eigvalsh_tridiagonal(dk, ek) if n > 1 else dk
        norm = np.abs(dk).max() + 2 * (np.abs(ek).max() if n > 1 else 0.0)
        # a zero matrix: its eigenvalue 0 comes back within the tiny slack around the interval
        err = np.abs(row - want).max() / norm if norm > 0 else np.abs(row).max() / 1e-290
        assert np.all(np.diff(row) >= 0), f"[seed={SEED}] {kind} n={n}: not ascending"
        assert err <= 4 * n * np.finfo(np.float64).eps, f"[seed={SEED}] {kind} n={n}: off by {err:.1e} of ||T||"


@pytest.mark.parametrize("n", [1, 2, 3, 17, 40])
def test_batches_of_mixed_tridiagonals(device, n):
    check(n, KINDS, device)


def test_several_programs_per_matrix(device, monkeypatch):
    from spectrum_fast.kernels import tridiagonal

    monkeypatch.setattr(tridiagonal, "MAX_BLOCK", 16)  # n = 37: three programs, the last one partial
    check(37, ["random", "wilkinson"], device)


def test_bad_input_is_refused(device):
    d = torch.zeros(2, 5, dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match="n - 1"):
        tridiagonal_eigvalsh(d, torch.zeros(2, 5, dtype=torch.float64, device=device))
    with pytest.raises(ValueError, match="float64"):
        tridiagonal_eigvalsh(d.float(), torch.zeros(2, 4, device=device))


@pytest.mark.gpu
@NEEDS_CUDA
@pytest.mark.parametrize("n", [1024, 1536, 4096])
def test_large_tridiagonals_on_the_gpu(n, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    check(n, ["random", "graded", "wilkinson"], "cuda")
