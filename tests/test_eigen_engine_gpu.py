"""The exact eigen route on the GPU (ops.eigen, route "two_stage_gpu") as the csrc issue asks it
to be checked: eigenvalues within 1e-12 of the largest against float64 LAPACK (numpy, on the host;
cuSOLVER's syevd above n = 2048, where LAPACK would take minutes), on random, clustered, repeated,
rank-deficient and spiked Grams, sizes from 1 to 8192 including ones that are not multiples of the
band width, alone and in batches of mixed content; once with the Triton stage 2 and Python loop,
once with every compiled piece on (panel QR, pipelined chase, stage 1's loop in C++) where the
extension has them, and once more with the panels on clusters of blocks (ops.band.PANEL_CLUSTER).
Fresh matrices every run."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from spectrum_fast import _extension
from spectrum_fast.ops import band, eigen

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
SEED = random.SystemRandom().randrange(2**31)
KINDS = ("random", "clustered", "repeated", "rank_deficient", "spiked")


def gram(n: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    """One symmetric positive semi-definite n x n float64 matrix of the given kind, on the GPU."""
    if kind in ("clustered", "repeated"):
        q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
        if kind == "clustered":  # groups of eigenvalues 1e-10 apart
            values = torch.tensor([1.0, 1.0 + 1e-10, 5.0, 5.0 + 1e-10], dtype=torch.float64).repeat(n // 4 + 1)[:n]
        else:  # a few values, each many times over
            values = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64).repeat(n // 3 + 1)[:n]
        g = ((q * values) @ q.T).cuda()
        return (g + g.mT) / 2
    w = torch.randn(n, n + n // 3 + 1, generator=gen, dtype=torch.float64)
    if kind == "rank_deficient":
        w[n // 2 :] = w[: n - n // 2].clone()  # overlapping rows when n is odd
    elif kind == "spiked":
        w[: max(1, n // 16)] *= 300.0
    g = (w @ w.T).cuda()
    return (g + g.mT) / 2


def truth_of(g: torch.Tensor) -> torch.Tensor:
    if g.shape[-1] <= 2048:
        return torch.from_numpy(np.linalg.eigvalsh(g.cpu().numpy()))
    return torch.linalg.eigvalsh(g).cpu()


@pytest.fixture(params=["triton", "compiled", "compiled, clustered panels"])
def engine_pieces(request, monkeypatch):
    if request.param == "triton":
        monkeypatch.setattr(band, "PANEL_KERNEL", False)
        monkeypatch.setattr(band, "CHASE_KERNEL", False)
    else:
        if _extension.cuda_ops() is None:
            pytest.skip("spectrum_fast._C was not built with its CUDA kernels")
        monkeypatch.setattr(band, "PANEL_KERNEL", True)
        monkeypatch.setattr(band, "PANEL_KERNEL_MIN_BATCH", 1)
        monkeypatch.setattr(band, "PANEL_KERNEL_ROWS_PER_PANEL", 1 << 30)
        monkeypatch.setattr(band, "CHASE_KERNEL", True)
        monkeypatch.setattr(band, "STAGE1_IN_CPP", True)
        monkeypatch.setattr(band, "PANEL_CLUSTER", request.param.endswith("clustered panels"))
    return request.param


def check(g: torch.Tensor, label: str) -> None:
    truth = truth_of(g)
    got = eigen.eigvalsh(g.clone(), "two_stage_gpu")
    assert got.shape == truth.shape and torch.isfinite(got).all(), label
    scale = truth.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
    err = ((got - truth).abs() / scale).max().item()
    assert err < 1e-12, f"{label}: {err:.1e} (seed={SEED})"


@pytest.mark.parametrize("n", [1, 2, 3, 31, 33, 257, 520, 1000, 1536, 2048])
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_and_size(n, kind, engine_pieces):
    gen = torch.Generator().manual_seed(SEED + 101 * n + KINDS.index(kind))
    check(gram(n, kind, gen).unsqueeze(0), f"{engine_pieces} {kind} n={n}")


@pytest.mark.parametrize("n", [700, 1024])
def test_a_batch_of_mixed_content(n, engine_pieces):
    gen = torch.Generator().manual_seed(SEED + n)
    check(torch.stack([gram(n, kind, gen) for kind in KINDS]), f"{engine_pieces} mixed n={n}")


@pytest.mark.parametrize("n", [4100, 8192])
def test_large(n, engine_pieces):
    if n == 8192 and engine_pieces == "triton":
        pytest.skip("the Triton chase takes seconds per 8192 matrix; the compiled one is the one to check")
    gen = torch.Generator().manual_seed(SEED + n)
    check(gram(n, "spiked", gen).unsqueeze(0), f"{engine_pieces} spiked n={n}")


@pytest.mark.parametrize("n", [33, 257, 1000, 2048, 4100])
@pytest.mark.parametrize("kind", KINDS)
def test_float32_grams_solved_to_float64_accuracy(n, kind, monkeypatch):
    """float32 input through the compiled route, which solves it in float64 (the float32 route
    missed the issue's 2e-6 bound, ops.eigen._two_stage_gpu says by how much): within 1e-12 of the
    largest eigenvalue of the float32 matrix's float64 eigenvalues, far inside that bound.
    cuSOLVER's float32 syevd error is reported beside."""
    if _extension.cuda_ops() is None:
        pytest.skip("spectrum_fast._C was not built with its CUDA kernels")
    monkeypatch.setattr(band, "PANEL_KERNEL", True)
    monkeypatch.setattr(band, "CHASE_KERNEL", True)
    gen = torch.Generator().manual_seed(SEED + 7 * n + KINDS.index(kind))
    g32 = gram(n, kind, gen).float().unsqueeze(0)
    truth = truth_of(g32.double())
    scale = truth.abs().amax().clamp_min(1e-300)
    syevd_err = ((torch.linalg.eigvalsh(g32).double().cpu() - truth).abs().max() / scale).item()
    got = eigen.eigvalsh(g32.clone(), "two_stage_gpu")
    assert got.dtype == torch.float64 and torch.isfinite(got).all()
    err = ((got - truth).abs().max() / scale).item()
    assert err < 1e-12, f"{kind} n={n}: {err:.1e} (syevd float32: {syevd_err:.1e}; seed={SEED})"


@pytest.mark.parametrize("kind", ["clustered", "spiked"])
def test_auto_gives_float32_to_the_route_measured_faster(kind):
    """"auto" with float32 Grams: the GPU route, solved in float64, on the GPUs where it was measured
    faster than float32 syevd (ops.eigen.FLOAT32_GPU_ROUTE_CAPABILITIES), else float32 syevd; the
    GPU route to float64's accuracy, syevd within the issue's float32 bound."""
    device = torch.device("cuda")
    n = 1100
    expected = "two_stage_gpu" if eigen.float32_to_gpu_route(device) and eigen.gpu_stage2_available(device) else "syevd"
    assert eigen.choose_route(n, device, torch.float32) == expected
    gen = torch.Generator().manual_seed(SEED + 3 * n + KINDS.index(kind))
    g32 = torch.stack([gram(n, kind, gen) for _ in range(3)]).float()
    truth = truth_of(g32.double())
    got = eigen.eigvalsh(g32.clone()).double().cpu()
    err = ((got - truth).abs().max() / truth.abs().max()).item()
    assert err < (1e-12 if expected == "two_stage_gpu" else 2e-6), f"{expected} {kind}: {err:.1e} (seed={SEED})"


def test_scan_selection_through_the_compiled_route_is_float64_truths():
    """The issue's "SNR and selection identical to float64 truth": a synthetic model whose matrices
    all take the two-stage GPU route (k >= 512: panel kernel, chase), bf16 spiked weights of
    different strengths; every SNR as float64's, every per-type selection the same."""
    import spectrum_fast
    from conftest import assert_matches_reference, assert_selection_matches, reference_rows
    from test_exact import spiked

    state = {}
    for i in range(6):  # per layer: two types, spike strength varying so the ranking is not trivial
        state[f"model.layers.{i}.mlp.up_proj.weight"] = spiked(768, 1600, 900 + i, spikes_scale=2.0 + 3 * i)
        state[f"model.layers.{i}.self_attn.o_proj.weight"] = spiked(1024, 1024, 950 + i, spikes_scale=20.0 - 2 * i)
    ref = reference_rows(state)
    result = spectrum_fast.scan(state, device="cuda", progress=False)
    assert_matches_reference(result, ref, SEED, "compiled route")
    assert_selection_matches(result, ref, SEED)
