"""spectrum_fast.linalg.truncated_svd and its Triton sketch kernel (spectrum_fast.kernels.sketch),
against float64 references, on fresh random inputs every run (the ``seed`` fixture; every message
names it).

The kernel: Y = A @ Omega against A.double() @ Omega.double(), with Omega written out by the same
kernel in its write mode, within the rounding bound of an m-term fp32 sum; Omega itself against a
numpy Philox4x32-10 + Box-Muller reference written here from the definitions (and checked on
Random123's known-answer vectors). Where it runs: the ``device`` fixture, "cpu" under Triton's
interpreter, "cuda" compiled (marked gpu).

truncated_svd, against torch.linalg.svd in float64:
- spiked spectra (k + 3 singular values from 10 down to 1 over noise near 2e-3): both methods are
  accurate to fp32 rounding: relative error of the top k singular values <= SPIKED_RTOL and largest
  principal angle between computed and true top-k singular subspaces <= SPIKED_ANGLE (a few 1e-6
  seen for both, bf16 inputs included);
- flat (pure Gaussian noise) and heavy-tailed (s_i = i^-0.7 over noise) spectra, where sketching
  with l = k + 10 columns is inexact by nature: errors are compared with torch.svd_lowrank's on the
  same matrices, as the median over a batch of 32 (each matrix's error being its top-k maximum):
  "randomized" (the same algorithm as svd_lowrank, same l and iterations) within RANDOMIZED_VS_LOWRANK
  of it on flat spectra, HEAVY_VS_LOWRANK on heavy-tailed ones, whose errors spread over orders of
  magnitude from one Gaussian draw to the next; "lanczos" (l steps: 2 l - 1 products with A) within
  LANCZOS_VS_SKETCH of svd_lowrank without power iterations at the same l (2 l products). Lanczos
  is far better where the spectrum decays, but on flat spectra its k-th Ritz value for k near l is
  unconverged: about 1.7x the plain sketch's error at k = 20, l = 30.
  Seen over 300 batches of 32 per case (CPU, fp32): randomized / svd_lowrank at most 1.24 on flat
  spectra (log standard deviation 0.08: the 1.5 bound is ~5 of them away) and 2.2 on heavy-tailed
  ones (0.27: 4.0 is ~5 away); lanczos / svd_lowrank(niter=0) at most 1.71. Skipping the power
  iterations costs ~4x on flat spectra and ~1000x on heavy-tailed ones at k = 5 (svd_lowrank with
  niter=0 against 2), so the bounds still catch it.
The interpreter is slow (milliseconds per program and step), so the kernel's CPU cases are small.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import spectrum_fast.linalg
from spectrum_fast.kernels import sketch as sketch_kernel
from spectrum_fast.linalg import truncated_svd

svd_module = importlib.import_module("spectrum_fast.linalg.truncated_svd")  # the module, not the function

METHODS = ["randomized", "lanczos"]
SPIKED_RTOL = 2e-5
SPIKED_ANGLE = 1e-4  # radians
ORTHONORMAL_ATOL = 2e-5  # |U^T U - I|, fp32
RANDOMIZED_VS_LOWRANK = 1.5
HEAVY_VS_LOWRANK = 4.0
LANCZOS_VS_SKETCH = 2.5
ERROR_FLOOR = 1e-5  # fp32 rounding: below it, ratios of errors mean nothing


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """These matrices are small: more OpenMP threads save nothing, and where another process holds
    a core they spin (100x slower products seen on a busy 2-core machine). Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- inputs --------------------------------------------------------------------------------------
def orthonormal_columns(batch: tuple, rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(*batch, rows, cols, dtype=torch.float64, generator=g)).Q


def spiked(batch: tuple, n: int, m: int, spikes: int, g: torch.Generator) -> torch.Tensor:
    """``spikes`` singular values log-spaced from 10 to 1, over Gaussian noise of edge ~2e-3."""
    values = torch.logspace(1, 0, spikes, dtype=torch.float64)
    low_rank = (orthonormal_columns(batch, n, spikes, g) * values) @ orthonormal_columns(batch, m, spikes, g).mT
    return low_rank + 1e-3 * torch.randn(*batch, n, m, dtype=torch.float64, generator=g) / max(n, m) ** 0.5


def heavy_tailed(batch: tuple, n: int, m: int, g: torch.Generator) -> torch.Tensor:
    """s_i = i^-0.7 over all min(n, m) directions, plus noise of edge ~0.04."""
    r = min(n, m)
    values = torch.arange(1, r + 1, dtype=torch.float64) ** -0.7
    signal = (orthonormal_columns(batch, n, r, g) * values) @ orthonormal_columns(batch, m, r, g).mT
    return signal + 0.02 * torch.randn(*batch, n, m, dtype=torch.float64, generator=g) / max(n, m) ** 0.5


def flat(batch: tuple, n: int, m: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(*batch, n, m, dtype=torch.float64, generator=g)


# -- checks ----------------------------------------------------------------------------------------
def largest_principal_angle(basis: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest angle between the column spans of two orthonormal [.., d, k] bases (radians), from
    its sine (the part of ``basis`` outside ``reference``): accurate for small angles."""
    basis = basis.double()
    outside = basis - reference @ (reference.mT @ basis)
    sine = torch.linalg.matrix_norm(outside, ord=2).max().item()
    return float(np.arcsin(min(1.0, sine)))


def relative_errors(s: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Largest relative error of the top k singular values, per matrix: [..]."""
    k = s.shape[-1]
    return ((s.double().cpu() - reference[..., :k]).abs() / reference[..., :k]).amax(dim=-1)


def assert_well_formed(u, s, vh, shape, k, ctx):
    """fp32, shapes, S descending and non-negative, U and V orthonormal."""
    *batch, n, m = shape
    assert (u.dtype, s.dtype, vh.dtype) == (torch.float32,) * 3, f"{ctx} dtypes {u.dtype} {s.dtype} {vh.dtype}"
    assert tuple(u.shape) == (*batch, n, k) and tuple(s.shape) == (*batch, k) and tuple(vh.shape) == (*batch, k, m), \
        f"{ctx} shapes U {tuple(u.shape)} S {tuple(s.shape)} Vh {tuple(vh.shape)} for A {shape}, k={k}"
    assert torch.isfinite(u).all() and torch.isfinite(s).all() and torch.isfinite(vh).all(), f"{ctx} non-finite output"
    assert (s >= 0).all(), f"{ctx} negative singular values {s}"
    assert (s[..., :-1] >= s[..., 1:]).all(), f"{ctx} S not descending: {s}"
    eye = torch.eye(k, dtype=torch.float32, device=u.device)
    for name, gram in (("U", u.mT @ u), ("V", vh @ vh.mT)):
        off = (gram - eye).abs().max().item()
        assert off <= ORTHONORMAL_ATOL, f"{ctx} {name} not orthonormal: max |{name}^T {name} - I| = {off:.2e}"


# -- the sketch kernel -----------------------------------------------------------------------------
SKETCH_CASES = {
    # name: (shape of the tensor made, transpose it?, l, k_splits)
    "2d": ((45, 70), False, 23, None),  # 2 row tiles (the second partial), 3 column steps, 1 column tile
    "batch-split": ((3, 70, 75), False, 40, 2),  # 2 column tiles of Omega, the last split's tail past m
    "transposed": ((2, 50, 33), True, 17, 3),  # a [2, 33, 50] view with column stride 33
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("case", list(SKETCH_CASES))
def test_sketch_matches_float64_product(device, dtype, case, seed):
    shape, transpose, l, k_splits = SKETCH_CASES[case]
    ctx = f"[seed={seed} {case} {dtype} {device}]"
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(shape, generator=g) * 2.0 ** torch.randint(-3, 4, (), generator=g).item()).to(dtype)
    a = (a.mT if transpose else a).to(device)
    batch, m = (a.shape[0] if a.dim() == 3 else 1), a.shape[-1]

    y = sketch_kernel.sketch(a, l, seed, k_splits=k_splits, poison=True)
    omega = sketch_kernel.gaussian_test_matrix(batch, m, l, seed, dtype, device)

    a3 = (a if a.dim() == 3 else a.unsqueeze(0)).double().cpu()
    omega = omega.double().cpu()
    assert torch.isfinite(omega).all(), f"{ctx} Omega has unwritten (NaN) entries"
    want = a3 @ omega
    got = (y if y.dim() == 3 else y.unsqueeze(0)).double().cpu()
    assert got.shape == want.shape, f"{ctx} shape {tuple(y.shape)}"
    assert not torch.isnan(got).any(), f"{ctx} unwritten (NaN) tiles at {torch.isnan(got).nonzero()[:5].tolist()}"
    # An m-term fp32 sum of exact products (16-bit inputs) or fp32-rounded ones: |error| <= (m + 1) u |A| |Omega|.
    bound = (m + 1) * 2.0**-24 * (a3.abs() @ omega.abs()) + 1e-30
    worst = ((got - want).abs() / bound).max().item()
    assert worst <= 1.0, f"{ctx} sketch off by {worst:.2f}x the fp32 rounding bound"


def philox4x32_10(counter: np.ndarray, key: tuple[int, int]) -> list[np.ndarray]:
    """Philox4x32 with 10 rounds (Salmon et al., SC'11), in uint64 arithmetic: counter words
    [4, ...] -> the four output words."""
    mask = np.uint64(0xFFFFFFFF)
    c = [np.asarray(word, dtype=np.uint64) & mask for word in counter]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for _ in range(10):
        p0 = c[0] * np.uint64(0xD2511F53)
        p1 = c[2] * np.uint64(0xCD9E8D57)
        c = [((p1 >> np.uint64(32)) ^ c[1] ^ k0) & mask, p1 & mask, ((p0 >> np.uint64(32)) ^ c[3] ^ k1) & mask, p0 & mask]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    return c


def reference_omega(batch: int, m: int, l: int, seed: int) -> np.ndarray:
    """The test matrix kernels/sketch.py defines, in float64 from its definition."""
    groups = -(-l // 4)
    seed %= 2**64
    b, r, g = np.meshgrid(np.arange(batch), np.arange(m), np.arange(groups), indexing="ij")
    counter = ((b * m + r) * groups + g).astype(np.uint64)
    zero = np.zeros_like(counter)
    words = philox4x32_10([counter, counter >> np.uint64(32), zero, zero], (seed & 0xFFFFFFFF, seed >> 32))
    u = [((w >> np.uint64(8)) | np.uint64(1)).astype(np.float64) * 2.0**-24 for w in words]
    radius01, radius23 = np.sqrt(-2 * np.log(u[0])), np.sqrt(-2 * np.log(u[2]))
    angle1, angle3 = (u[1] - 0.5) * 2 * np.pi, (u[3] - 0.5) * 2 * np.pi
    values = np.stack([radius01 * np.cos(angle1), radius01 * np.sin(angle1),
                       radius23 * np.cos(angle3), radius23 * np.sin(angle3)], axis=-1)  # column 4 g + q
    return values.reshape(batch, m, 4 * groups)[..., :l]


def test_numpy_philox_reference_known_answers():
    """Random123's known-answer vectors for philox4x32_10, so the reference above is Philox."""
    vectors = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for counter, key, want in vectors:
        got = tuple(int(w) for w in philox4x32_10([np.uint64(c) for c in counter], key))
        assert got == want, f"philox4x32_10({counter}, {key}) = {[hex(w) for w in got]}"


def test_omega_is_the_documented_gaussian(device, seed):
    """Omega = Philox4x32-10 + Box-Muller as kernels/sketch.py defines it (fp32 transcendental
    functions: ~1e-6 off); standard normal moments; 16-bit versions are that Omega rounded."""
    batch, m, l = 2, 256, 37  # l not a multiple of 4: the last counter's spare values are dropped
    ctx = f"[seed={seed} {device}]"
    omega = sketch_kernel.gaussian_test_matrix(batch, m, l, seed, torch.float32, device).double().cpu()
    want = torch.from_numpy(reference_omega(batch, m, l, seed))
    off = ((omega - want).abs() / (1 + want.abs())).max().item()
    assert off <= 1e-5, f"{ctx} Omega differs from the Philox + Box-Muller reference by {off:.2e}"
    count = omega.numel()
    assert abs(omega.mean().item()) <= 5 / count**0.5, f"{ctx} mean {omega.mean().item():.4f}"
    assert abs(omega.var().item() - 1) <= 5 * (2 / count) ** 0.5, f"{ctx} variance {omega.var().item():.4f}"
    assert not torch.equal(omega[0], omega[1]), f"{ctx} the matrices of a batch share Omega"
    for dtype, precision in ((torch.bfloat16, 2.0**-7), (torch.float16, 2.0**-10)):
        rounded = sketch_kernel.gaussian_test_matrix(batch, m, l, seed, dtype, device).double().cpu()
        off = ((rounded - omega).abs() - precision * omega.abs()).max().item()
        assert off <= 2.0**-24, f"{ctx} {dtype} Omega is not the fp32 one rounded (off by {off:.2e})"


# -- truncated_svd: accuracy -------------------------------------------------------------------------
SPIKED_SHAPES = {"200x300": ((), 200, 300), "300x120": ((), 300, 120), "3x120x90": ((3,), 120, 90)}


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("shape", list(SPIKED_SHAPES))
@pytest.mark.parametrize("method", METHODS)
def test_spiked_spectra_to_fp32_accuracy(monkeypatch, method, shape, k, seed):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the torch sketch (the kernel's case is below)
    batch, n, m = SPIKED_SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    a64 = spiked(batch, n, m, k + 3, g)
    for dtype in (torch.float32, torch.bfloat16):
        a = a64.to(dtype)
        _check_spiked(a, truncated_svd(a, k, method=method, seed=seed), k, f"[seed={seed} {method} {shape} k={k} {dtype}]")


def _check_spiked(a, result, k, ctx):
    u, s, vh = result
    assert_well_formed(u, s, vh, tuple(a.shape), k, ctx)
    u_ref, s_ref, vh_ref = torch.linalg.svd(a.double().cpu(), full_matrices=False)
    error = relative_errors(s, s_ref).max().item()
    assert error <= SPIKED_RTOL, f"{ctx} singular values off by {error:.2e} (relative)"
    for name, basis, reference in (("U", u, u_ref[..., :k]), ("V", vh.mT, vh_ref[..., :k, :].mT)):
        angle = largest_principal_angle(basis.cpu(), reference)
        assert angle <= SPIKED_ANGLE, f"{ctx} {name}: largest principal angle {angle:.2e} rad"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_randomized_through_the_sketch_kernel(device, dtype, monkeypatch, seed):
    """The same checks with the sketch from the Triton kernel (interpreted on the CPU)."""
    calls = []
    kernel_sketch = sketch_kernel.sketch

    def recording_sketch(a, l, sketch_seed, **kw):
        calls.append((tuple(a.shape), l))
        return kernel_sketch(a, l, sketch_seed, **kw)

    monkeypatch.setattr(svd_module.sketch_kernel, "sketch", recording_sketch)
    monkeypatch.setattr(svd_module, "FUSED_SKETCH", True)  # on a GPU the kernel runs only when asked for
    g = torch.Generator().manual_seed(seed)
    for batch, n, m, k in (((), 200, 300, 5), ((3,), 90, 120, 1)):
        a = spiked(batch, n, m, k + 3, g).to(dtype).to(device)
        ctx = f"[seed={seed} {device} {dtype} {tuple(a.shape)} k={k}]"
        _check_spiked(a, truncated_svd(a, k, seed=seed), k, ctx)
    assert len(calls) == 2, f"[seed={seed}] the Triton sketch ran {len(calls)} times, not 2"


SPECTRA = {"flat": flat, "heavy-tailed": heavy_tailed}


@pytest.mark.parametrize("shape", [(200, 300), (300, 120)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("spectrum", list(SPECTRA))
def test_inexact_spectra_against_svd_lowrank(monkeypatch, spectrum, shape, seed):
    """Median errors over a batch of 32 (module docstring: why medians, and the bounds)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    n, m = shape
    a = SPECTRA[spectrum]((32,), n, m, torch.Generator().manual_seed(seed)).float()
    s_ref = torch.linalg.svdvals(a.double())
    failures = []
    for k in (1, 5, 20):
        l = k + 10
        ours = {method: relative_errors(truncated_svd(a, k, method=method, seed=seed + k)[1], s_ref).median().item()
                for method in METHODS}
        lowrank = {niter: relative_errors(torch.svd_lowrank(a, q=l, niter=niter)[1][..., :k], s_ref).median().item()
                   for niter in (0, 2)}
        factor = RANDOMIZED_VS_LOWRANK if spectrum == "flat" else HEAVY_VS_LOWRANK
        checks = (("randomized", ours["randomized"], factor, lowrank[2], "svd_lowrank(niter=2)"),
                  ("lanczos", ours["lanczos"], LANCZOS_VS_SKETCH, lowrank[0], "svd_lowrank(niter=0)"))
        for method, error, bound_factor, reference, reference_name in checks:
            if error > bound_factor * reference + ERROR_FLOOR:
                failures.append(f"{method} k={k}: median error {error:.2e} > {bound_factor} x {reference_name}'s "
                                f"{reference:.2e}")
    assert not failures, f"[seed={seed} {spectrum} {n}x{m}] " + "; ".join(failures)


# -- truncated_svd: forms, edge cases, seeds ----------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape,k", [((30, 20), 20), ((20, 30), 20), ((2, 25, 40), 7), ((1, 40, 9), 3)],
                         ids=["full-tall", "full-wide", "batch", "batch-of-one"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=str)
def test_forms_and_dtypes(monkeypatch, method, shape, k, dtype, seed):
    """fp32 results for fp16 and float64 inputs; k = min(n, m) gives the whole, exact SVD."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ctx = f"[seed={seed} {method} {shape} k={k} {dtype}]"
    a = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    u, s, vh = truncated_svd(a, k, method=method, seed=seed)
    assert_well_formed(u, s, vh, shape, k, ctx)
    s_ref = torch.linalg.svdvals(a.double())
    if k == min(shape[-2:]):
        error = relative_errors(s, s_ref).max().item()
        assert error <= 1e-4, f"{ctx} the full SVD's singular values are off by {error:.2e}"
        rebuilt = (u.double() * s.double()[..., None, :]) @ vh.double()
        off = (rebuilt - a.double()).abs().max().item() / s_ref.max().item()
        assert off <= 1e-5, f"{ctx} U S Vh differs from A by {off:.2e} of its norm"


@pytest.mark.parametrize("method", METHODS)
def test_rank_deficient_and_zero_matrices(monkeypatch, method, seed):
    """Where A's range runs out before k (rank 3, k = 5; A = 0) the bases stay orthonormal and the
    missing singular values are ~0 (Lanczos restarts from a random vector at breakdown)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    g = torch.Generator().manual_seed(seed)
    rank3 = torch.randn(2, 60, 3, generator=g) @ torch.randn(2, 3, 45, generator=g)
    for name, a in (("rank 3", rank3), ("zero", torch.zeros(2, 60, 45))):
        ctx = f"[seed={seed} {method} {name}]"
        u, s, vh = truncated_svd(a, 5, method=method, seed=seed)
        assert_well_formed(u, s, vh, (2, 60, 45), 5, ctx)
        s_ref = torch.linalg.svdvals(a.double())
        scale = max(s_ref.max().item(), 1.0)
        assert (s[:, 3:] <= 1e-5 * scale).all(), f"{ctx} singular values past the rank: {s[:, 3:]}"
        off = (s.double() - s_ref[:, :5]).abs().max().item() / scale
        assert off <= 1e-5, f"{ctx} singular values off by {off:.2e} of the largest"


@pytest.mark.parametrize("method", METHODS)
def test_seeds(monkeypatch, method, seed):
    """An int seed reproduces a call bit for bit; another seed draws other numbers; seed=None
    draws from torch's generator (reproducible after torch.manual_seed, fresh otherwise)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    a = torch.randn(50, 40, generator=torch.Generator().manual_seed(seed))
    ctx = f"[seed={seed} {method}]"
    first, again, other = (truncated_svd(a, 4, method=method, seed=s) for s in (seed, seed, seed + 1))
    assert all(torch.equal(x, y) for x, y in zip(first, again)), f"{ctx} the same seed gave other results"
    assert not torch.equal(first[0], other[0]), f"{ctx} another seed gave the same U"
    torch.manual_seed(seed)
    drawn = truncated_svd(a, 4, method=method)
    torch.manual_seed(seed)
    redrawn = truncated_svd(a, 4, method=method)
    assert all(torch.equal(x, y) for x, y in zip(drawn, redrawn)), f"{ctx} seed=None ignores torch.manual_seed"
    fresh = truncated_svd(a, 4, method=method)
    assert not torch.equal(fresh[0], redrawn[0]), f"{ctx} seed=None drew the same seed twice"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("small_eigh_route", ["auto", "host"])
def test_repeated_shapes_replay_cuda_graphs_with_the_eager_results(monkeypatch, small_eigh_route, seed):
    """bf16 on a GPU: the first call with a shape runs eagerly, the second captures CUDA graphs (one
    for the whole call where the small eigen solve runs on the device, "jacobi", which "auto" takes
    where the extension has it; else two, around the host's solve), later ones replay them on new
    inputs; every call gives what the eager route gives for its matrix and seed (the same kernels),
    and spiked matrices stay accurate through the replays."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(svd_module, "_GRAPHS", svd_module.graphs.GraphCache())
    monkeypatch.setattr(svd_module, "SMALL_EIGH", small_eigh_route)
    g = torch.Generator().manual_seed(seed)
    mats = [spiked((2,), 96, 160, 8, g) for _ in range(4)]
    inputs = [a.to(torch.bfloat16).cuda() for a in mats]
    graphed = [truncated_svd(a, 5, seed=seed + i) for i, a in enumerate(inputs)]
    expected = 1 if svd_module._small_eigh_route(15, inputs[0].device) == "jacobi" else 2
    assert len(svd_module._GRAPHS._graphs) == expected, f"the second call should have captured {expected} graph(s)"
    monkeypatch.setattr(svd_module.graphs, "ENABLED", False)
    for i, (a, a64, got) in enumerate(zip(inputs, mats, graphed)):
        ctx = f"[seed={seed} call {i}]"
        eager = truncated_svd(a, 5, seed=seed + i)
        for name, x, y in zip("USV", got, eager):  # same kernels; cuBLAS may pick other algorithms in a capture
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, msg=lambda m: f"{ctx} {name}: {m}")
        s_ref = torch.linalg.svdvals(a.double().cpu())
        assert relative_errors(got[1], s_ref).max() <= SPIKED_RTOL, ctx
    spectrum_fast.linalg.release_graphs()
    assert not svd_module._GRAPHS._graphs, "release_graphs left graphs held"


# -- bad input ----------------------------------------------------------------------------------------
A = torch.zeros(6, 4)
BAD_INPUTS = {
    "A-not-a-tensor": (([[1.0, 2.0]], 1), {}, "A must be a torch.Tensor"),
    "A-1d": ((torch.zeros(5), 1), {}, "A must be"),
    "A-4d": ((torch.zeros(2, 2, 3, 3), 1), {}, "A must be"),
    "A-integer": ((torch.zeros(6, 4, dtype=torch.int32), 1), {}, "A must have a floating dtype"),
    "A-complex": ((torch.zeros(6, 4, dtype=torch.complex64), 1), {}, "A must have a floating dtype"),
    "k-zero": ((A, 0), {}, "k must be"),
    "k-too-big": ((A, 5), {}, r"k must be .*min\(n, m\) = 4"),
    "k-float": ((A, 2.0), {}, "k must be"),
    "k-bool": ((A, True), {}, "k must be"),
    "method": ((A, 2), {"method": "qr"}, "method must be one of"),
    "oversample": ((A, 2), {"oversample": -1}, "oversample must be"),
    "power_iters": ((A, 2), {"power_iters": -1}, "power_iters must be"),
    "seed": ((A, 2), {"seed": 1.5}, "seed must be"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(case):
    args, kwargs, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message) as caught:
        truncated_svd(*args, **kwargs)
    assert "\n" not in str(caught.value), f"{case}: the error is not one line: {caught.value}"
