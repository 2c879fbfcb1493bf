"""linalg.inertia.count_above: the number of eigenvalues above a shift, against float64 eigvalsh,
on random symmetric matrices (sizes across the block and panel edges) and on Grams of spiked
matrices with the shift between two close eigenvalues; a singular pivot block is reported."""

from __future__ import annotations

import pytest
import torch

from spectrum_fast.linalg import inertia


@pytest.mark.parametrize("block, panel", [(128, 128), (32, 128), (32, 64)])
@pytest.mark.parametrize("n", [1, 5, 31, 32, 33, 100, 129, 257, 300])
def test_counts_match_eigvalsh_on_random_symmetric_matrices(n, block, panel, device, seed, monkeypatch):
    """Pivot blocks of one panel (the default) or several, across the block and panel edges."""
    monkeypatch.setattr(inertia, "BLOCK", block)
    monkeypatch.setattr(inertia, "PANEL", panel)
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(3, n, n, generator=gen, dtype=torch.float64)
    a = a + a.mT
    ev = torch.linalg.eigvalsh(a)
    cut = torch.randint(0, n, (3,), generator=gen)
    below = ev.gather(-1, cut.unsqueeze(-1)).squeeze(-1)
    above = ev.gather(-1, (cut + 1).clamp(max=n - 1).unsqueeze(-1)).squeeze(-1)
    shift = torch.where(cut + 1 < n, (below + above) / 2, below + 1.0)  # between two, or above all
    counts, reliable = inertia.count_above(a.to(device), shift.to(device))
    truth = (ev > shift.unsqueeze(-1)).sum(-1)
    assert counts.cpu().tolist() == truth.tolist(), (seed, n)
    assert bool(reliable.all()), (seed, n)


def test_counts_on_spiked_grams_split_close_eigenvalues(device, seed):
    """Grams W W^T (fp32, as the fast mode forms them) of noise plus 12 spikes; the shift halfway
    between the 12th and 13th eigenvalues and between two bulk values near the top."""
    gen = torch.Generator().manual_seed(seed)
    n, m, r = 200, 600, 12
    w = torch.randn(4, n, m, generator=gen, dtype=torch.float64) / m ** 0.5
    u = torch.linalg.qr(torch.randn(4, n, r, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(4, m, r, generator=gen, dtype=torch.float64))[0]
    w += (u * torch.linspace(4, 2, r, dtype=torch.float64)) @ v.mT
    g = (w @ w.mT).to(torch.float32)
    ev = torch.linalg.eigvalsh(g.double()).flip(-1)
    for q in (r, r + 5):
        shift = (ev[:, q - 1] + ev[:, q]) / 2
        counts, reliable = inertia.count_above(g.to(device), shift.to(device))
        assert counts.cpu().tolist() == [q] * 4, (seed, q, ((ev[:, q - 1] - ev[:, q]) / ev[:, q]).tolist())
        assert bool(reliable.all()), seed


def test_a_singular_pivot_block_is_reported_not_trusted(device, seed):
    gen = torch.Generator().manual_seed(seed)
    d = torch.rand(2, 70, generator=gen, dtype=torch.float64) + 1.0
    g = torch.diag_embed(d)
    shift = d[:, 0].clone()  # g - shift I has an exact zero on its first pivot block's diagonal
    shift[1] = 0.5  # the second matrix is fine
    counts, reliable = inertia.count_above(g.to(device), shift.to(device))
    assert reliable.cpu().tolist() == [False, True], seed
    assert int(counts[1]) == 70, seed


def test_bad_shape_is_one_clear_error():
    with pytest.raises(ValueError, match=r"count_above: g must be \[B, n, n\]"):
        inertia.count_above(torch.zeros(3, 4), torch.zeros(3))


_CUDA_ROUTES = [pytest.param(r, marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                              reason="needs a CUDA GPU")])
                for r in ("kernel", "lu")]


def _kernel_ops():
    from spectrum_fast import _extension

    ext = _extension.cuda_ops()
    if ext is None or not hasattr(ext, "ldlt_unpivoted"):
        pytest.skip("spectrum_fast._C is not built with its CUDA kernels")
    return ext


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("b", [1, 2, 16, 32, 33, 64, 65, 128])
def test_pivot_block_kernel_is_ldlt_without_pivoting(b, seed):
    """d and L^-T of the compiled kernel: L^-1 B L^-T = diag(d) to rounding, d = the unpivoted LU's
    pivots (torch), L^-T unit upper triangular, on indefinite blocks of every tile size; blocks read
    through a strided view (the count passes sub-blocks of its working matrix), upper triangles
    poisoned (only the lower one is read)."""
    ext = _kernel_ops()
    gen = torch.Generator().manual_seed(seed)
    # Diagonally dominant with diagonal entries of both signs: indefinite, and stable without pivoting.
    a = torch.randn(5, b, b, generator=gen, dtype=torch.float64)
    signs = torch.randint(0, 2, (5, b), generator=gen).to(torch.float64) * 2 - 1
    a = (a + a.mT) / 2 + torch.diag_embed(signs * (b + 5))
    big = torch.full((5, b + 7, b + 7), torch.nan, dtype=torch.float64)
    big[:, 3 : 3 + b, 2 : 2 + b] = a.tril()
    view = big.cuda()[:, 3 : 3 + b, 2 : 2 + b]
    d, l_inv_t = ext.ldlt_unpivoted(view)
    d, l_inv_t = d.cpu(), l_inv_t.cpu()
    assert torch.isfinite(d).all() and torch.isfinite(l_inv_t).all(), seed
    assert torch.equal(l_inv_t.tril(-1), torch.zeros_like(l_inv_t)), seed
    assert torch.equal(l_inv_t.diagonal(dim1=-2, dim2=-1), torch.ones(5, b, dtype=torch.float64)), seed
    lu = torch.linalg.lu_factor_ex(a.cuda(), pivot=False)[0].cpu()
    torch.testing.assert_close(d, lu.diagonal(dim1=-2, dim2=-1), rtol=1e-9, atol=1e-9 * float(a.abs().max()))
    congruent = l_inv_t.mT @ a @ l_inv_t
    scale = float(a.abs().max()) * b
    torch.testing.assert_close(congruent, torch.diag_embed(d), rtol=0, atol=1e-11 * scale)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pivot_block_kernel_bad_input_is_one_clear_error():
    ext = _kernel_ops()
    with pytest.raises(RuntimeError, match="ldlt_unpivoted: needs float64"):
        ext.ldlt_unpivoted(torch.zeros(2, 4, 4, device="cuda"))
    with pytest.raises(RuntimeError, match="ldlt_unpivoted: blocks of at most 128 rows"):
        ext.ldlt_unpivoted(torch.zeros(1, 129, 129, dtype=torch.float64, device="cuda"))
    with pytest.raises(RuntimeError, match=r"ldlt_unpivoted: needs square blocks"):
        ext.ldlt_unpivoted(torch.zeros(1, 3, 4, dtype=torch.float64, device="cuda"))


@pytest.mark.parametrize("route", _CUDA_ROUTES)
def test_cuda_routes_count_the_same(route, seed, monkeypatch):
    """Each CUDA pivot-block route against float64 eigvalsh, across the block edges."""
    if route == "kernel":
        _kernel_ops()
    monkeypatch.setitem(inertia.PIVOT_BLOCK, "cuda", route)
    assert inertia._pivot_route(torch.device("cuda")) == route
    gen = torch.Generator().manual_seed(seed)
    for n in (127, 128, 300):
        a = torch.randn(4, n, n, generator=gen, dtype=torch.float64)
        a = a + a.mT
        ev = torch.linalg.eigvalsh(a)
        shift = (ev[:, n // 3] + ev[:, n // 3 + 1]) / 2
        counts, reliable = inertia.count_above(a.cuda(), shift.cuda())
        assert counts.cpu().tolist() == (ev > shift.unsqueeze(-1)).sum(-1).tolist(), (seed, n)
        assert bool(reliable.all()), (seed, n)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_kernel_route_runs_inside_a_cuda_graph(seed):
    """Nothing in the count waits for the device on the kernel route: it can be captured, and its
    replay on new contents of the same buffers counts them."""
    _kernel_ops()
    gen = torch.Generator().manual_seed(seed)
    n = 260
    g = torch.empty(6, n, n, dtype=torch.float64, device="cuda")
    shift = torch.empty(6, dtype=torch.float64, device="cuda")

    def fill():
        a = torch.randn(6, n, n, generator=gen, dtype=torch.float64)
        a = a + a.mT
        ev = torch.linalg.eigvalsh(a)
        cut = torch.randint(1, n - 1, (6,), generator=gen)
        s = (ev.gather(-1, cut.unsqueeze(-1)) + ev.gather(-1, cut.unsqueeze(-1) - 1)).squeeze(-1) / 2
        g.copy_(a)
        shift.copy_(s)
        return (ev > s.unsqueeze(-1)).sum(-1)

    fill()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        inertia.count_above(g, shift)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        counts, _ = inertia.count_above(g, shift)
    for _ in range(2):
        truth = fill()
        graph.replay()
        assert counts.cpu().tolist() == truth.tolist(), seed
