"""The compiled pipelined bulge chase (csrc/bulge_chase.cu, spectrum_fast._C.band_to_tridiagonal_)
against float64 LAPACK: the tridiagonal it returns has the band matrix's eigenvalues, and nothing
is left past the first subdiagonal; on fresh random bands of several kinds, widths 2 to 32 and sizes
that are not multiples of the width, in batches of mixed content. Then the eigen route with it.
Needs the extension built with CUDA (the device); skipped elsewhere."""

from __future__ import annotations

import random

import numpy as np
import pytest
import scipy.linalg
import torch

from spectrum_fast import _extension
from spectrum_fast.ops import band, eigen
from test_bulge_chasing import band_matrix

CUDA_OPS = _extension.cuda_ops()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA_OPS is None, reason="spectrum_fast._C was not built with its CUDA kernels"),
]
SEED = random.SystemRandom().randrange(2**31)


@pytest.mark.parametrize("n,b", [(3, 2), (17, 4), (40, 8), (67, 16), (130, 32), (257, 17), (33, 32), (1000, 32), (700, 16)])
def test_pipelined_chase_keeps_the_eigenvalues(n, b):
    rng = np.random.default_rng(SEED + 31 * n + b)
    kinds = ["random", "spiked", "clustered", "zero_columns"]
    dense = np.stack([band_matrix(n, b, kind, rng) for kind in kinds])
    bands = band.lower_band(torch.from_numpy(dense).cuda(), 2 * b)
    d, e = CUDA_OPS.band_to_tridiagonal_(bands, b)
    assert d.shape == (len(kinds), n) and e.shape == (len(kinds), n - 1)
    d, e, left = d.cpu().numpy(), e.cpu().numpy(), bands[:, :, 2:].cpu().numpy()
    for k, kind in enumerate(kinds):
        truth = np.linalg.eigvalsh(dense[k])
        got = scipy.linalg.eigvalsh_tridiagonal(d[k], e[k])
        scale = max(np.abs(truth).max(), 1e-300)
        assert np.abs(got - truth).max() / scale < 1e-13, f"{kind} seed={SEED}"
        assert np.abs(left[k]).max() / scale < 1e-13, f"{kind}: not tridiagonal, seed={SEED}"


@pytest.mark.parametrize("n,b", [(40, 8), (1000, 32), (700, 16)])
def test_float32_chase_keeps_the_eigenvalues_to_float32_rounding(n, b):
    """The float32 instantiation against the float32 band's float64 eigenvalues: within 2e-6 of
    the largest (the csrc issue's float32 bound), nothing left past the first subdiagonal."""
    rng = np.random.default_rng(SEED + 17 * n + b)
    dense = np.stack([band_matrix(n, b, kind, rng) for kind in ("random", "spiked", "clustered")]).astype(np.float32)
    bands = band.lower_band(torch.from_numpy(dense).cuda(), 2 * b)
    d, e = CUDA_OPS.band_to_tridiagonal_(bands, b)
    assert d.dtype == torch.float32
    d, e, left = d.double().cpu().numpy(), e.double().cpu().numpy(), bands[:, :, 2:].double().cpu().numpy()
    for k in range(dense.shape[0]):
        truth = np.linalg.eigvalsh(dense[k].astype(np.float64))
        got = scipy.linalg.eigvalsh_tridiagonal(d[k], e[k])
        scale = max(np.abs(truth).max(), 1e-30)
        assert np.abs(got - truth).max() / scale < 2e-6, f"seed={SEED}"
        assert np.abs(left[k]).max() / scale < 1e-6, f"not tridiagonal, seed={SEED}"


@pytest.mark.parametrize("n,b", [(1000, 32), (2100, 32), (700, 16), (300, 5)])
def test_chase_over_a_cluster_of_blocks_gives_the_same_tridiagonal_bit_for_bit(n, b):
    """Splitting a matrix's sweeps over 2..8 blocks of a cluster changes who does each step, not
    the steps: the result equals the one-block result exactly (a race would not)."""
    rng = np.random.default_rng(SEED + n)
    dense = np.stack([band_matrix(n, b, kind, rng) for kind in ("random", "spiked", "clustered")])
    bands = band.lower_band(torch.from_numpy(dense).cuda(), 2 * b)
    d1, e1 = CUDA_OPS.band_to_tridiagonal_(bands.clone(), b, 1)
    for split in (2, 3, 8, 0):
        d, e = CUDA_OPS.band_to_tridiagonal_(bands.clone(), b, split)
        assert torch.equal(d, d1) and torch.equal(e, e1), f"split {split}, seed={SEED}"
    truth = np.linalg.eigvalsh(dense)
    got = np.stack([scipy.linalg.eigvalsh_tridiagonal(dk, ek) for dk, ek in zip(d1.cpu().numpy(), e1.cpu().numpy())])
    assert np.abs(got - truth).max() / np.abs(truth).max() < 1e-13, f"seed={SEED}"


@pytest.mark.parametrize("n,b", [(1000, 32), (4100, 32), (700, 16), (300, 5), (40, 8)])
def test_sweeps_two_time_steps_apart_give_the_same_tridiagonal_bit_for_bit(n, b):
    """lag 2 (csrc/bulge_chase.cu: 2 n time steps instead of 3 n) runs the same steps in another
    schedule: over one block or a cluster, and with the lag the kernel picks (0), the result
    equals lag 3's exactly (a race would not)."""
    rng = np.random.default_rng(SEED + 3 * n + b)
    dense = np.stack([band_matrix(n, b, kind, rng) for kind in ("random", "spiked", "clustered", "zero_columns")])
    bands = band.lower_band(torch.from_numpy(dense).cuda(), 2 * b)
    d3, e3 = CUDA_OPS.band_to_tridiagonal_(bands.clone(), b, 1, 3)
    for split, lag in ((1, 2), (2, 2), (6, 2), (0, 2), (0, 0), (0, 3)):
        d, e = CUDA_OPS.band_to_tridiagonal_(bands.clone(), b, split, lag)
        assert torch.equal(d, d3) and torch.equal(e, e3), f"split {split}, lag {lag}, seed={SEED}"
    d32, e32 = CUDA_OPS.band_to_tridiagonal_(bands.float(), b, 0, 3)
    d2, e2 = CUDA_OPS.band_to_tridiagonal_(bands.float(), b, 0, 2)
    assert torch.equal(d2, d32) and torch.equal(e2, e32), f"float32, seed={SEED}"


def test_pipelined_chase_matches_the_triton_kernel_and_the_route_uses_it(monkeypatch):
    """The two chases reduce a Gram's band to tridiagonals with the same eigenvalues; with
    ops.band.CHASE_KERNEL on, the two_stage_gpu route runs the compiled one."""
    from spectrum_fast.kernels import bulge

    rng = np.random.default_rng(SEED)
    w = torch.from_numpy(rng.standard_normal((3, 600, 900))).cuda()
    w[:, :40] *= 300.0
    g = w @ w.mT
    truth = torch.linalg.eigvalsh(g).cpu()
    bands = band.lower_band(band.reduce_to_band_(g.clone(), 32), 64)
    d1, e1 = CUDA_OPS.band_to_tridiagonal_(bands.clone(), 32)
    d2, e2 = bulge.band_to_tridiagonal(bands.clone(), 32)
    for d, e in ((d1, e1), (d2, e2)):
        got = np.stack([scipy.linalg.eigvalsh_tridiagonal(dk, ek) for dk, ek in zip(d.cpu().numpy(), e.cpu().numpy())])
        assert (np.abs(got - truth.numpy()).max() / truth.abs().max().item()) < 1e-13, f"seed={SEED}"
    calls = []
    monkeypatch.setattr(band, "CHASE_KERNEL", True)
    monkeypatch.setattr(CUDA_OPS, "band_to_tridiagonal_", lambda x, b, *rest, f=CUDA_OPS.band_to_tridiagonal_: calls.append(b) or f(x, b, *rest))
    got = eigen.eigvalsh_deferred(g.clone(), "two_stage_gpu").result()
    assert calls and ((got - truth).abs().max() / truth.abs().max()).item() < 1e-13, f"seed={SEED}"


def test_pipelined_chase_refuses_what_it_cannot_do():
    with pytest.raises(RuntimeError, match="needs float64 or float32, got Half"):
        CUDA_OPS.band_to_tridiagonal_(torch.zeros(1, 10, 8, device="cuda", dtype=torch.float16), 4)
    with pytest.raises(RuntimeError, match="bandwidth must be 1..32, got 40"):
        CUDA_OPS.band_to_tridiagonal_(torch.zeros(1, 100, 80, device="cuda", dtype=torch.float64), 40)
    with pytest.raises(RuntimeError, match="width 9 has no room for the bulges of bandwidth 8: give at least 16"):
        CUDA_OPS.band_to_tridiagonal_(torch.zeros(1, 100, 9, device="cuda", dtype=torch.float64), 8)
    with pytest.raises(RuntimeError, match="CUDA"):
        CUDA_OPS.band_to_tridiagonal_(torch.zeros(1, 10, 8, dtype=torch.float64), 4)
    with pytest.raises(RuntimeError, match="blocks_per_matrix must be 0 \\(choose\\) to 8, got 9"):
        CUDA_OPS.band_to_tridiagonal_(torch.zeros(1, 100, 16, device="cuda", dtype=torch.float64), 8, 9)
    with pytest.raises(RuntimeError, match="lag must be 2, 3 or 0 \\(choose\\), got 1"):
        CUDA_OPS.band_to_tridiagonal_(torch.zeros(1, 100, 16, device="cuda", dtype=torch.float64), 8, 0, 1)
