"""linalg.small_eigh: eigenpairs of small symmetric float64 matrices by every route, against the
definition (A V = V diag(w), V orthonormal, w ascending) and float64 eigvalsh, on fresh random
matrices; the "jacobi" route (cuSOLVER's batched Jacobi solver through the extension) on a GPU,
on random, graded and degenerate matrices,
also inside a CUDA graph; and truncated_svd redoing a matrix whose solve did not converge."""

from __future__ import annotations

import importlib

import pytest
import torch

from spectrum_fast import _extension
from spectrum_fast.linalg import small_eigh

svd_module = importlib.import_module("spectrum_fast.linalg.truncated_svd")  # the package's name is the function
_NEEDS_JACOBI = pytest.mark.skipif(
    not torch.cuda.is_available() or small_eigh.jacobi_max_size(torch.device("cuda")) == 0,
    reason="needs a CUDA GPU and the extension built with cuSOLVER")


def random_symmetric(batch: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Symmetric with a spread of magnitudes and a close pair, as Grams of sketches have."""
    q = torch.linalg.qr(torch.randn(batch, n, n, generator=gen, dtype=torch.float64)).Q
    w = torch.logspace(-6, 3, n, dtype=torch.float64) * (1 + 0.1 * torch.rand(batch, n, generator=gen, dtype=torch.float64))
    if n > 2:
        w[:, 1] = w[:, 2] * (1 + 1e-9)
    return (q * w.unsqueeze(-2)) @ q.mT


def check_eigenpairs(a: torch.Tensor, values: torch.Tensor, vectors: torch.Tensor, ctx: str) -> None:
    a, values, vectors = (x.cpu() for x in (a, values, vectors))
    n = a.shape[-1]
    scale = torch.linalg.matrix_norm(a, ord=2).clamp_min(1e-300)[:, None, None]
    assert bool((values[:, 1:] >= values[:, :-1]).all()), f"{ctx} eigenvalues not ascending"
    truth = torch.linalg.eigvalsh(a)
    assert ((values - truth).abs() / scale[:, 0]).max().item() < 1e-13 * n, f"{ctx} eigenvalues"
    residual = (a @ vectors - vectors * values.unsqueeze(-2)).abs() / scale
    assert residual.max().item() < 1e-13 * n, f"{ctx} A V != V diag(w): {residual.max().item():.2e}"
    eye = torch.eye(n, dtype=torch.float64)
    assert (vectors.mT @ vectors - eye).abs().max().item() < 1e-13 * n, f"{ctx} V not orthonormal"


@pytest.mark.parametrize("route", ["host", "numpy", "device"])
@pytest.mark.parametrize("n", [1, 2, 26, 74])
def test_routes_against_the_definition(route, n, device, seed):
    gen = torch.Generator().manual_seed(seed)
    a = random_symmetric(3, n, gen)
    values, vectors, converged = small_eigh.small_eigh(a.to(device), route)
    assert values.device.type == vectors.device.type == converged.device.type == torch.device(device).type
    check_eigenpairs(a, values, vectors, f"[seed={seed} {route} n={n}]")
    assert bool(converged.all())


def test_jacobi_size_is_zero_off_the_gpu():
    assert small_eigh.jacobi_max_size(torch.device("cpu")) == 0


def test_unknown_route():
    with pytest.raises(ValueError, match="route must be one of"):
        small_eigh.small_eigh(torch.eye(2, dtype=torch.float64).unsqueeze(0), "qr")


@pytest.mark.gpu
@_NEEDS_JACOBI
@pytest.mark.parametrize("n", [1, 2, 17, 26, 32])
@pytest.mark.parametrize("batch", [1, 7, 300])
def test_jacobi_against_the_definition(n, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    a = random_symmetric(batch, n, gen).cuda()
    values, vectors, converged = small_eigh.small_eigh(a, "jacobi")
    check_eigenpairs(a, values, vectors, f"[seed={seed} jacobi n={n} batch={batch}]")
    assert bool(converged.all()), seed


@pytest.mark.gpu
@_NEEDS_JACOBI
def test_jacobi_on_structured_matrices(seed):
    """Repeated eigenvalues (a multiplicity of 5 and of 3), a diagonal matrix (no rotation to do),
    zero, 1 x 1."""
    gen = torch.Generator().manual_seed(seed)
    n = 24
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64)).Q
    repeated = torch.cat([torch.full((5,), 2.0), torch.full((3,), -1.0), torch.rand(16, generator=gen) * 10]).double()
    cases = {
        "repeated": (q * repeated) @ q.mT,
        "diagonal": torch.diag(torch.randn(n, generator=gen, dtype=torch.float64)),
        "zero": torch.zeros(n, n, dtype=torch.float64),
    }
    for name, a in cases.items():
        values, vectors, converged = small_eigh.small_eigh(a.unsqueeze(0).cuda(), "jacobi")
        check_eigenpairs(a.unsqueeze(0), values, vectors, f"[seed={seed} {name}]")
        assert bool(converged.all()), f"[seed={seed} {name}] not converged"
    one = torch.randn(3, 1, 1, generator=gen, dtype=torch.float64)
    values, vectors, converged = small_eigh.small_eigh(one.cuda(), "jacobi")
    assert torch.equal(values.cpu(), one[:, :, 0]) and torch.equal(vectors.cpu().abs(), torch.ones(3, 1, 1, dtype=torch.float64))
    assert bool(converged.all())


@pytest.mark.gpu
@_NEEDS_JACOBI
def test_jacobi_reads_the_lower_triangle_of_any_layout(seed):
    """A strided input (every other matrix of a batch, transposed) and garbage above the diagonal."""
    gen = torch.Generator().manual_seed(seed)
    a = random_symmetric(8, 20, gen)
    junk = a.tril() + torch.randn(8, 20, 20, generator=gen, dtype=torch.float64).triu(1) * 1e3
    view = junk.cuda().mT.contiguous().mT[::2]  # column-major storage, stride 2 over the batch
    values, vectors, converged = small_eigh.small_eigh(view, "jacobi")
    check_eigenpairs(a[::2], values, vectors, f"[seed={seed}]")
    assert bool(converged.all())


@pytest.mark.gpu
@_NEEDS_JACOBI
def test_jacobi_replays_in_a_cuda_graph(seed):
    """Captured once, replayed on new matrices: the solve reads nothing on the host."""
    gen = torch.Generator().manual_seed(seed)
    static = random_symmetric(5, 26, gen).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        small_eigh.small_eigh(static, "jacobi")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = small_eigh.small_eigh(static, "jacobi")
    for i in range(3):
        fresh = random_symmetric(5, 26, gen)
        static.copy_(fresh)
        graph.replay()
        check_eigenpairs(fresh, out[0], out[1], f"[seed={seed} replay {i}]")
        assert bool(out[2].all())


@pytest.mark.gpu
@_NEEDS_JACOBI
@pytest.mark.parametrize("case, message", [
    ("float32", "needs float64"), ("cpu", "needs a CUDA tensor"), ("2d", "needs square matrices"),
    ("not-square", "needs square matrices"), ("too-big", "matrices of 1 to 32 rows"), ("empty", "matrices of 1 to 32 rows"),
    ("tolerance", "tolerance must be"), ("sweeps", "max_sweeps must be"),
])
def test_jacobi_bad_input(case, message):
    a = {"float32": torch.eye(4, device="cuda").unsqueeze(0), "cpu": torch.eye(4, dtype=torch.float64).unsqueeze(0),
         "2d": torch.eye(4, dtype=torch.float64, device="cuda"),
         "not-square": torch.ones(1, 4, 5, dtype=torch.float64, device="cuda"),
         "too-big": torch.eye(33, dtype=torch.float64, device="cuda").unsqueeze(0),
         "empty": torch.ones(2, 0, 0, dtype=torch.float64, device="cuda"),
         "tolerance": torch.eye(4, dtype=torch.float64, device="cuda").unsqueeze(0),
         "sweeps": torch.eye(4, dtype=torch.float64, device="cuda").unsqueeze(0)}[case]
    extra = {"tolerance": (-1.0, 30), "sweeps": (0.0, 0)}.get(case, ())
    with pytest.raises(RuntimeError, match=message):
        _extension.cuda_ops().small_eigh_jacobi(a, *extra)


@pytest.mark.gpu
@_NEEDS_JACOBI
def test_jacobi_flags_a_matrix_with_a_nan(seed):
    """A NaN (or an infinity) in one matrix of a batch: that matrix is reported not converged (the
    solver itself returns a NaN matrix converged, with finite values); the others are right."""
    gen = torch.Generator().manual_seed(seed)
    a = random_symmetric(4, 12, gen)
    bad = a.clone()
    bad[1, 3, 2] = float("nan")
    bad[2, 5, 5] = float("inf")
    values, vectors, converged = small_eigh.small_eigh(bad.cuda(), "jacobi")
    assert converged.cpu().tolist() == [True, False, False, True], seed
    check_eigenpairs(a[[0, 3]], values[[0, 3]], vectors[[0, 3]], f"[seed={seed}]")


def test_truncated_svd_redoes_a_matrix_whose_solve_did_not_converge(monkeypatch, seed):
    """The bf16 route (forced on for the CPU) with the eigen solve of the second matrix reported
    unconverged: that matrix alone is redone by the fp32 route, and every result is right."""
    from spectrum_fast.linalg import split_products, truncated_svd

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(split_products, "available", lambda a: a.dtype == torch.bfloat16)
    solve = small_eigh.small_eigh

    def second_unconverged(gram, route):
        values, vectors, converged = solve(gram, route)
        return values, vectors, converged & (torch.arange(gram.shape[0]) != 1)

    monkeypatch.setattr(small_eigh, "small_eigh", second_unconverged)
    redone = []
    fallback = svd_module._randomized_svd
    monkeypatch.setattr(svd_module, "_randomized_svd", lambda op, *args: redone.append(op.batch) or fallback(op, *args))
    gen = torch.Generator().manual_seed(seed)
    u0 = torch.linalg.qr(torch.randn(3, 90, 90, generator=gen, dtype=torch.float64)).Q
    v0 = torch.linalg.qr(torch.randn(3, 200, 90, generator=gen, dtype=torch.float64)).Q
    a = ((u0 * torch.logspace(1, -4, 90, dtype=torch.float64)) @ v0.mT).to(torch.bfloat16)
    u, s, vh = truncated_svd(a, 4, seed=seed)
    assert redone == [1], (seed, redone)
    ref = torch.linalg.svdvals(a.double())[..., :4]
    assert ((s.double() - ref) / ref).abs().max().item() < 1e-4, seed
