"""The truncated SVD's building blocks: Cholesky QR twice in float64 (with its Householder fallback)
and the split 16-bit products, against float64 references on fresh random inputs."""

from __future__ import annotations

import importlib

import pytest
import torch

from spectrum_fast.linalg import orthonormalize as orthonormalize_module
from spectrum_fast.linalg.orthonormalize import cholesky_qr, orthonormalize
from spectrum_fast.linalg.split_products import split_bmm, split_bmm_left, split_parts


def graded(b: int, p: int, c: int, cond: float, gen: torch.Generator) -> torch.Tensor:
    """[b, p, c] fp32 with singular values spread log-evenly from 1 to 1/cond."""
    u = torch.linalg.qr(torch.randn(b, p, c, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(b, c, c, generator=gen, dtype=torch.float64))[0]
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), c, dtype=torch.float64)
    return ((u * s) @ v.mT).to(torch.float32)


@pytest.mark.parametrize("p, c, cond", [(500, 42, 1e1), (300, 20, 1e4), (2000, 70, 1e6), (33, 33, 1e3)])
def test_orthonormal_basis_of_the_same_columns(p, c, cond, seed):
    gen = torch.Generator().manual_seed(seed)
    y = graded(3, p, c, cond, gen)
    q = orthonormalize(y)
    eye = torch.eye(c, dtype=torch.float64)
    q64 = q.double()
    assert (q64.mT @ q64 - eye).abs().max().item() < 5e-6, seed
    # Same span: y is reproduced by its projection onto q (to fp32 level relative to |y|).
    y64 = y.double()
    residual = (y64 - q64 @ (q64.mT @ y64)).norm(dim=(-2, -1)) / y64.norm(dim=(-2, -1))
    assert residual.max().item() < 1e-5, seed


@pytest.mark.parametrize("c", [24, 48, 100, 130])
def test_cholesky_qr_passes(device, c, seed, monkeypatch):
    """One pass: orthonormal to ~cond^2 1e-16 (here 1e2), then fp32 rounding; two: fp32 rounding.
    A zero matrix is flagged and stays finite. On a GPU: 24 and 48 columns take the compiled LDL^T's
    32 and 64 tiles; with LDLT_MAX_COLUMNS raised to 128 for the test, 100 takes its 128 tile and
    130 cuSOLVER's Cholesky (past the kernel's size)."""
    gen = torch.Generator().manual_seed(seed)
    y = graded(3, 400, c, 1e2, gen)
    y[0] = 0
    monkeypatch.setattr(orthonormalize_module, "LDLT_MAX_COLUMNS", 128)
    for passes in (1, 2):
        q, failed = cholesky_qr(y.to(device), passes=passes)
        assert q.device.type == failed.device.type == torch.device(device).type, seed
        assert failed.cpu().tolist() == [True, False, False], (seed, passes)
        assert bool(torch.isfinite(q).all()), (seed, passes)
        q64 = q[1:].double().cpu()
        assert (q64.mT @ q64 - torch.eye(c, dtype=torch.float64)).abs().max().item() < 5e-6, (seed, passes)
        y64 = y[1:].double()
        assert ((y64 - q64 @ (q64.mT @ y64)).norm() / y64.norm()).item() < 1e-5, (seed, passes)


def test_rank_deficient_and_zero_inputs_fall_back_to_householder(seed):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(3, 200, 12, generator=gen)
    y[0, :, 6:] = y[0, :, :6]  # rank 6 of 12
    y[1] = 0
    q = orthonormalize(y)
    assert torch.isfinite(q).all(), seed
    q64 = q[2].double()
    assert (q64.mT @ q64 - torch.eye(12, dtype=torch.float64)).abs().max().item() < 5e-6, seed
    # The rank-deficient one: its basis still spans y's columns.
    y0 = y[0].double()
    q0 = q[0].double()
    assert ((y0 - q0 @ (q0.mT @ y0)).norm() / y0.norm()).item() < 1e-5, seed


def test_split_parts_add_up_to_fp32(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 64, 9, generator=gen)
    for parts, bound in ((2, 2e-5), (3, 1e-7)):
        total = sum(p.double() for p in split_parts(x, torch.bfloat16, parts))
        assert ((total - x.double()).abs() / x.double().abs().clamp_min(1e-30)).max().item() < bound, (seed, parts)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bmm with out_dtype)")
def test_split_products_against_float64(seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 300, 700, generator=gen).to(torch.bfloat16).cuda()
    x = torch.randn(3, 700, 40, generator=gen).cuda()
    xl = torch.randn(3, 40, 300, generator=gen).cuda()
    truth = a.double() @ x.double()
    truth_left = xl.double() @ a.double()
    for parts, bound in ((2, 1e-4), (3, 2e-6)):
        got = split_bmm(a, x, parts)
        left = split_bmm_left(xl, a, parts)
        assert got.dtype == left.dtype == torch.float32
        scale = truth.abs().amax().item()
        assert (got.double() - truth).abs().max().item() < bound * scale, (seed, parts)
        assert (left.double() - truth_left).abs().max().item() < bound * truth_left.abs().amax().item(), (seed, parts)


# -- the bf16 route of truncated_svd (split products, Cholesky QR, host eigh of B B^T) ------------
def _spiked_bf16(batch: int, n: int, m: int, spikes: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.linalg.qr(torch.randn(batch, n, spikes, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(batch, m, spikes, generator=gen, dtype=torch.float64))[0]
    s = 10.0 * torch.linspace(1.0, 0.3, spikes, dtype=torch.float64)
    noise = 1e-3 * torch.randn(batch, n, m, generator=gen, dtype=torch.float64)
    return ((u * s) @ v.mT + noise).to(torch.bfloat16)


def _check_bf16_route(a: torch.Tensor, k: int, seed: int) -> None:
    from spectrum_fast.linalg import truncated_svd

    u, s, vh = truncated_svd(a, k, seed=seed)
    assert u.dtype == s.dtype == vh.dtype == torch.float32
    ref = torch.linalg.svdvals(a.double().cpu())[..., :k]
    assert ((s.double().cpu() - ref) / ref).abs().max().item() < 2e-5, seed
    # Triplets: A v_i = s_i u_i and A^T u_i = s_i v_i to fp32 level (relative to s_1), and orthonormal.
    a64, u64, v64, s64 = a.double().cpu(), u.double().cpu(), vh.double().cpu().mT, s.double().cpu()
    scale = s64[..., :1].unsqueeze(-1)
    assert ((a64 @ v64 - u64 * s64.unsqueeze(-2)).abs() / scale).max().item() < 1e-4, seed
    assert ((a64.mT @ u64 - v64 * s64.unsqueeze(-2)).abs() / scale).max().item() < 1e-4, seed
    eye = torch.eye(k, dtype=torch.float64)
    assert (u64.mT @ u64 - eye).abs().max().item() < 1e-5, seed
    assert (v64.mT @ v64 - eye).abs().max().item() < 1e-5, seed


@pytest.mark.parametrize("shape", [(2, 120, 300), (1, 300, 90)])
def test_bf16_route_on_spiked_matrices(monkeypatch, shape, seed):
    """The route's arithmetic on the CPU (products emulated in fp32): forced on for bf16 there."""
    from spectrum_fast.linalg import split_products

    svd_module = importlib.import_module("spectrum_fast.linalg.truncated_svd")  # the package's name is the function
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(split_products, "available", lambda a: a.dtype == torch.bfloat16)
    calls = []
    route = svd_module._randomized_svd_split
    monkeypatch.setattr(svd_module, "_randomized_svd_split", lambda *args: calls.append(1) or route(*args))
    gen = torch.Generator().manual_seed(seed)
    _check_bf16_route(_spiked_bf16(*shape, 8, gen), 5, seed)
    assert calls, "the bf16 route did not run"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_route_on_the_gpu(seed):
    svd_module = importlib.import_module("spectrum_fast.linalg.truncated_svd")
    assert svd_module._takes_split_products(torch.zeros(1, 2, 2, dtype=torch.bfloat16, device="cuda"))
    gen = torch.Generator().manual_seed(seed)
    _check_bf16_route(_spiked_bf16(3, 500, 1200, 12, gen).cuda(), 8, seed)


def test_bf16_route_redoes_rank_deficient_sketches(monkeypatch, seed):
    """A zero matrix and one of rank 3 < l in a batch. Cholesky QR fails on the zero matrix's sketch,
    which is redone by the Householder route; the rank-3 one's float64 Gram is positive definite by
    rounding, and its extra columns (amplified rounding, orthonormalized by the second pass) only
    widen the subspace. Every matrix of the batch comes out right."""
    from spectrum_fast.linalg import split_products, truncated_svd

    svd_module = importlib.import_module("spectrum_fast.linalg.truncated_svd")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(split_products, "available", lambda a: a.dtype == torch.bfloat16)
    redone = []
    fallback = svd_module._randomized_svd
    monkeypatch.setattr(svd_module, "_randomized_svd", lambda op, *args: redone.append(op.batch) or fallback(op, *args))
    gen = torch.Generator().manual_seed(seed)
    a = _spiked_bf16(3, 120, 300, 8, gen)
    a[1] = 0
    low = torch.randn(120, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 300, generator=gen, dtype=torch.float64)
    a[2] = low.to(torch.bfloat16)
    u, s, vh = truncated_svd(a, 5, seed=seed)
    assert redone and redone[0] in (1, 2), (seed, redone)  # the zero matrix, perhaps the rank-3 one
    assert torch.isfinite(u).all() and torch.isfinite(s).all() and torch.isfinite(vh).all(), seed
    ref = torch.linalg.svdvals(a.double())[..., :5]
    assert ((s[0].double() - ref[0]) / ref[0]).abs().max().item() < 2e-5, seed
    assert s[1].abs().max().item() == 0.0, seed
    assert ((s[2, :3].double() - ref[2, :3]) / ref[2, :3]).abs().max().item() < 2e-5, seed
    # Past its rank, the bf16 rounding of the rank-3 matrix (a flat noise floor): Ritz values never
    # exceed the true ones (interlacing), to rounding.
    assert (s[2, 3:].double() <= ref[2, 3:] * (1 + 1e-5)).all(), seed
