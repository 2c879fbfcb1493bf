"""The Triton bulge-chasing kernel (spectrum_fast.kernels.bulge) against float64 LAPACK: the
matrix it leaves is tridiagonal, similar to the band it was given (same eigenvalues), on fresh
random bands every run: random, spiked, clustered, with zero columns; widths 2 to 32 and sizes
that are not multiples of the width; batches of mixed content. On the CPU it runs under Triton's
interpreter (slow: small sizes), on CUDA compiled (marked gpu).

triton is imported when a test runs, not when this module is collected: tests/test_kernels_gram.py
needs to import it first, with TRITON_INTERPRET set (see its docstring)."""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import scipy.linalg
import torch

from bulge_chasing_reference import band_to_tridiagonal
from test_bulge_chasing import band_matrix

if importlib.util.find_spec("triton") is None:
    pytest.skip("the Triton kernels need triton (pip install triton)", allow_module_level=True)


def band_to_tridiagonal_(a, b, width=None):
    """The kernel on dense [B, n, n] band matrices: put into lower band storage with room for the
    bulges (``width`` diagonals, default 2b + 1), reduced; -> (d, e, the storage after)."""
    from spectrum_fast.kernels import bulge  # imported at run time: see the module docstring
    from spectrum_fast.ops.band import lower_band

    bands = lower_band(a, (2 * b if width is None else width - 1))
    d, e = bulge.band_to_tridiagonal(bands, b)
    return d, e, bands

SEED = random.SystemRandom().randrange(2**31)
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
KINDS = ["random", "spiked", "clustered", "zero_columns"]


def check(dense: np.ndarray, b: int, device: str, context: str) -> None:
    d, e, after = band_to_tridiagonal_(torch.from_numpy(dense.copy()).to(device), b)
    after = after.cpu().numpy()
    n = dense.shape[-1]
    for k in range(dense.shape[0]):
        scale = np.abs(dense[k]).max()
        off = np.abs(after[k][:, 2:]).max(initial=0.0)  # every diagonal past the first subdiagonal
        assert off <= 1e-13 * scale, f"[seed={SEED}] {context} matrix {k}: not tridiagonal ({off:.1e})"
        want = np.linalg.eigvalsh(dense[k])
        got = np.sort(scipy.linalg.eigvalsh_tridiagonal(d[k].cpu().numpy(), e[k].cpu().numpy())) if n > 1 \
            else d[k].cpu().numpy()
        err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-300)
        assert err <= 1e-13, f"[seed={SEED}] {context} matrix {k}: eigenvalues off by {err:.1e}"


@pytest.mark.parametrize("n,b", [(3, 2), (17, 4), (24, 8), (37, 16), (20, 32)])
def test_batch_of_mixed_bands_reduces_exactly(device, n, b):
    rng = np.random.default_rng([SEED, n, b])
    dense = np.stack([band_matrix(n, b, kind, rng) for kind in KINDS])
    check(dense, b, device, f"n={n} b={b}")


def test_matches_the_numpy_reference(device):
    rng = np.random.default_rng([SEED, 1])
    n, b = 29, 6
    a = band_matrix(n, b, "random", rng)
    # the least storage the kernel accepts: 2b diagonals
    d, e, _ = band_to_tridiagonal_(torch.from_numpy(a.copy()).unsqueeze(0).to(device), b, width=2 * b)
    d_ref, e_ref = band_to_tridiagonal(a, b)
    # Entry by entry, two roundings of the same transformation: their differences grow down the
    # chase (up to 1.4e-12 of the scale at seed 1218995907, at most 5e-13 over 30 other seeds on the
    # CPU); a different transformation would differ at the scale itself. Similarity is checked to
    # 1e-13 by check() above.
    scale = np.abs(a).max()
    assert np.abs(d[0].cpu().numpy() - d_ref).max() <= 1e-11 * scale, f"[seed={SEED}]"
    assert np.abs(e[0].cpu().numpy() - e_ref).max() <= 1e-11 * scale, f"[seed={SEED}]"


def test_trivial_sizes_and_bad_input(device):
    from spectrum_fast.kernels import bulge

    for n in (1, 2):
        a = torch.rand(2, n, n, dtype=torch.float64, device=device)
        a = a + a.mT
        d, e, _ = band_to_tridiagonal_(a.clone(), 1)
        assert torch.equal(d, a.diagonal(dim1=-2, dim2=-1)) and e.shape == (2, n - 1)
        assert torch.equal(e, a.diagonal(offset=-1, dim1=-2, dim2=-1))
    with pytest.raises(ValueError, match="float64"):
        bulge.band_to_tridiagonal(torch.zeros(1, 8, 9, device=device), 4)
    with pytest.raises(ValueError, match="bandwidth"):
        bulge.band_to_tridiagonal(torch.zeros(1, 8, 9, dtype=torch.float64, device=device), 0)
    with pytest.raises(ValueError, match="room for the bulges"):
        bulge.band_to_tridiagonal(torch.zeros(1, 8, 5, dtype=torch.float64, device=device), 4)


@pytest.mark.gpu
@NEEDS_CUDA
@pytest.mark.parametrize("n,b", [(1024, 32), (1536, 32), (4096, 16)])
def test_large_bands_on_the_gpu(n, b, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    rng = np.random.default_rng([SEED, n])
    bands = np.stack([band_matrix(n, b, kind, rng) for kind in ("random", "spiked")])
    check(bands, b, "cuda", f"n={n} b={b}")
