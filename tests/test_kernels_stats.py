"""The Triton statistics kernel (spectrum_fast.kernels.stats) against its plain-torch reference,
ops.stats.snr_statistics_torch computed in float64 on the CPU, on fresh random spectra every run.

One change to the reference for these comparisons: an IEEE square root. torch's float64 sqrt on
the CPU (SLEEF, 0.5001 ulp on AVX2/AVX-512 builds) is one ulp off for about 1 in 80 eigenvalues
(exact squares excepted); the kernel's (sqrt.rn.f64 on NVIDIA, numpy in the interpreter), torch's
on CUDA and the C++ extension's are correctly rounded. On CUDA the kernel is also compared with
snr_statistics_torch run unchanged on the GPU.

Where the kernel runs: the ``device`` fixture gives "cpu", where it runs under Triton's interpreter
(TRITON_INTERPRET=1, set for that test only), and "cuda", where it runs compiled (marked gpu,
skipped without CUDA). Setting the variable in a fixture is enough because kernels.stats builds its
kernel per mode at launch; with a plain ``triton.jit`` (Triton 3.6) it would have to be set before
the module defining the kernel is imported (test_interpreter_mode_is_chosen_at_launch).

Exactness checked: sigma_max, sigma, threshold and n_signal bit for bit (NaN where torch has NaN);
signal and noise are float64 sums in another order (torch's cascade vs the kernel's blocks): within
SUM_RTOL; snr = signal / noise / sigma_max adds two divisions of those: within SNR_RTOL (largest
seen over a few thousand rows: 1.9 ulp on the sums, 2.8 ulp on snr).

The interpreter is slow (about a millisecond per matrix and block), so the CPU cases are small; the
big batches run on CUDA only.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need triton (pip install triton)")

from spectrum_fast.kernels import stats as kernel_stats  # noqa: E402
from spectrum_fast.ops import stats as ops_stats  # noqa: E402
from spectrum_fast.ops.stats import SpectrumStats, snr_statistics_torch  # noqa: E402

EPS = 2.0**-52
SUM_RTOL = 1e-15  # 4.5 ulp
SNR_RTOL = 2e-15  # 9 ulp: two sums and two divisions
BIT_EXACT = ("sigma_max", "sigma", "threshold", "n_signal")
COLUMN_RTOL = {name: (0.0 if name in BIT_EXACT else SNR_RTOL if name == "snr" else SUM_RTOL)
               for name in SpectrumStats.FIELDS}

K_VALUES = [1, 2, 3, 5, 7, 64, 100, 1000, 4097]
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def batch_for(device: str, cpu: int, cuda: int) -> int:
    return cpu if device == "cpu" else cuda


def trained_like_eigenvalues(batch: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """[batch, k] ascending Gram eigenvalues of trained-looking matrices: a noise bulk (random
    width and scale per row), k/16 heavy-tailed spikes s_i ~ c i^-0.7 with c from 2 to 400, and in
    every third row a rank-deficient bottom third of rounding noise (tiny, some negative)."""
    g = generator
    scale = 10 ** (4 * torch.rand(batch, 1, generator=g, dtype=torch.float64) - 2)
    width = 0.2 + 1.5 * torch.rand(batch, 1, generator=g, dtype=torch.float64)
    s = scale * (1 + width * (2 * torch.rand(batch, k, generator=g, dtype=torch.float64) - 1))
    r = max(1, k // 16)
    c = 2 + 398 * torch.rand(batch, 1, generator=g, dtype=torch.float64)
    s[:, :r] += scale * c * torch.arange(1, r + 1, dtype=torch.float64) ** -0.7
    # Squares of float64 values have square roots far from rounding ties: jitter them off it, as
    # real eigenvalues are.
    eig = s**2 * (1 + 1e-9 * torch.rand(batch, k, generator=g, dtype=torch.float64))
    if k >= 3:
        rank_deficient = torch.arange(batch) % 3 == 2
        bottom = k // 3
        noise = (torch.rand(batch, bottom, generator=g, dtype=torch.float64) - 0.3) * 1e-13 * scale**2
        eig[rank_deficient, :bottom] = noise[rank_deficient]
    return eig.sort(dim=-1).values


def singular_values_ieee(eigvals: torch.Tensor) -> torch.Tensor:
    """ops.stats.singular_values_from_eigenvalues with a correctly rounded sqrt (numpy's)."""
    clamped = eigvals.to(torch.float64).clamp_min(0).cpu()
    return torch.from_numpy(np.sqrt(clamped.numpy())).to(eigvals.device)


def reference_table(eigvals: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """snr_statistics_torch in float64 on the CPU, with an IEEE sqrt (see the module docstring)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ops_stats, "singular_values_from_eigenvalues", singular_values_ieee)
        return snr_statistics_torch(eigvals.cpu().to(torch.float64), n, m)


# torch's own CUDA float64 sigma differs from the IEEE reference (and from this kernel, which
# matches that reference bit for bit) by up to 1 ulp: its CUDA quantile/lerp arithmetic is
# contracted differently (H100, device run of c97e6f6: 21 of 21 mismatches were sigma, <= 2.2e-16).
# The threshold, sigma times a factor, then differs by that ulp plus its own rounding: <= 2 ulp
# (device run of bdf1d4a: up to 3.2e-16).
TWO_ULP = 2.0**-51


def assert_columns_match(got: torch.Tensor, want: torch.Tensor, context: str, ulp_slack: bool = False) -> None:
    assert got.dtype == torch.float64 and got.shape == want.shape, (context, got.dtype, got.shape)
    for j, name in enumerate(SpectrumStats.FIELDS):
        rtol = COLUMN_RTOL[name]
        if ulp_slack and name in ("sigma", "threshold"):
            rtol = max(rtol, TWO_ULP)
        torch.testing.assert_close(got[:, j], want[:, j], rtol=rtol, atol=0.0, equal_nan=True,
                                   msg=lambda text, name=name, rtol=rtol: f"{context}: column {name} "
                                   f"(rtol {rtol:g}) differs from snr_statistics_torch\n{text}")


def assert_matches_torch(got: torch.Tensor, eigvals: torch.Tensor, n: int, m: int, context: str) -> None:
    """The kernel's table against the reference, column by column (and on CUDA against plain
    snr_statistics_torch on the GPU too, whose sqrt is IEEE already)."""
    assert got.device == eigvals.device, context
    assert_columns_match(got.cpu(), reference_table(eigvals, n, m), context)
    if got.is_cuda:
        assert_columns_match(got, snr_statistics_torch(eigvals, n, m), f"{context} (torch on CUDA)", ulp_slack=True)


@pytest.mark.parametrize("k", K_VALUES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torch_across_shapes(device, k, dtype, seed):
    g = torch.Generator().manual_seed(seed + k)
    eig = trained_like_eigenvalues(batch_for(device, 6, 96), k, g).to(dtype)
    eig = eig.sort(dim=-1).values.to(device)  # sorted again: float32 rounding may tie neighbours
    for n, m in [(k, k), (k, 8 * k), (8 * k + 3, k)]:  # square, wide 1/8, tall
        got = kernel_stats.snr_statistics_triton(eig, n, m)
        assert_matches_torch(got, eig, n, m, f"[seed={seed}] {device} k={k} {dtype} {n}x{m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_eigenvalues_are_upcast_exactly(device, dtype, seed):
    eig = trained_like_eigenvalues(batch_for(device, 3, 64), 50, torch.Generator().manual_seed(seed))
    eig = (eig / eig.amax(-1, keepdim=True)).to(dtype).sort(dim=-1).values.to(device)  # in float16 range
    got = kernel_stats.snr_statistics_triton(eig, 50, 200)
    assert_matches_torch(got, eig, 50, 200, f"[seed={seed}] {device} {dtype}")


def test_threshold_factor_uses_a_correctly_rounded_sqrt(device, seed):
    """788/5120 is a ratio where libm's pow(beta, 0.5) is one ulp off sqrt(beta): the reference and
    the kernel must both use the correctly rounded sqrt (the C++ extension does too)."""
    n, m = 788, 5120
    assert (n / m) ** 0.5 != math.sqrt(n / m)
    eig = trained_like_eigenvalues(batch_for(device, 2, 64), 50, torch.Generator().manual_seed(seed)).to(device)
    got = kernel_stats.snr_statistics_triton(eig, n, m)
    assert_matches_torch(got, eig, n, m, f"[seed={seed}] {device} pow != sqrt ratio")
    assert torch.equal(got[:, 2].cpu(), got[:, 1].cpu() * (1 + math.sqrt(n / m))), f"[seed={seed}]"


def test_value_exactly_at_threshold_is_noise(device, seed):
    """A singular value equal to tau counts as noise (S > tau is signal), in the kernel as in torch."""
    g = torch.Generator().manual_seed(seed)
    k, n, m = 101, 101, 404
    s = singular_values_ieee(trained_like_eigenvalues(4, k, g))
    quartile_positions = {math.floor(q * (k - 1)) for q in (0.25, 0.75)} | {math.ceil(q * (k - 1)) for q in (0.25, 0.75)}
    rows = []
    for row in s:
        tau = reference_table(row[None] ** 2, n, m)[0, 2]
        # Put tau in place of a value near it that no quartile reads, keeping the row ascending:
        # the quartiles, hence tau, do not move.
        fits = [i for i in range(k - 1) if i not in quartile_positions
                and (i == 0 or row[i - 1] <= tau) and tau <= row[i + 1]]
        assert fits, f"[seed={seed}] construction failed: tau above the spectrum"
        j = min(fits, key=lambda i: abs(i - int(torch.searchsorted(row, tau))))
        row = row.clone()
        row[j] = tau
        rows.append(row**2)  # sqrt(fl(tau^2)) == tau: IEEE sqrt of a rounded square is exact
    eig = torch.stack(rows)
    want = reference_table(eig, n, m)
    for row, tau in zip(singular_values_ieee(eig), want[:, 2]):
        assert (row == tau).any(), f"[seed={seed}] construction failed: no value equal to tau"
    got = kernel_stats.snr_statistics_triton(eig.to(device), n, m)
    # Against the IEEE reference only: torch's own CUDA threshold can sit 1-2 ulp off (see
    # TWO_ULP), and a value placed exactly at tau then flips sides there (device run of f4f220c).
    assert_columns_match(got.cpu(), want, f"[seed={seed}] {device} value at tau")
    n_above = (singular_values_ieee(eig) > want[:, 2:3]).sum(-1).to(torch.float64)
    assert torch.equal(got[:, 5].cpu(), n_above), f"[seed={seed}] tie counted as signal"


@pytest.mark.parametrize("k", [1, 5, 64])
def test_all_equal_values_have_sigma_zero(device, k, seed):
    """IQR 0 -> sigma = tau = 0: every value is signal, noise is 1.0 (spectrum.py), snr = sum / max."""
    c = 0.1 + torch.rand(3, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 10
    eig = (c**2).expand(3, k).contiguous()
    got = kernel_stats.snr_statistics_triton(eig.to(device), 7, 9)
    assert_matches_torch(got, eig.to(device), 7, 9, f"[seed={seed}] {device} all equal k={k}")
    got = got.cpu()
    assert torch.equal(got[:, 1], torch.zeros(3, dtype=torch.float64)), f"[seed={seed}] sigma"
    assert torch.equal(got[:, 5], torch.full((3,), float(k), dtype=torch.float64)), f"[seed={seed}] n_signal"
    assert torch.equal(got[:, 4], torch.ones(3, dtype=torch.float64)), f"[seed={seed}] noise"


def test_zero_matrix_has_snr_zero(device, seed):
    """A zero matrix (all eigenvalues 0) between ordinary ones: all statistics 0, snr 0, not NaN."""
    eig = trained_like_eigenvalues(3, 9, torch.Generator().manual_seed(seed))
    eig[1] = 0.0
    got = kernel_stats.snr_statistics_triton(eig.to(device), 9, 30)
    assert_matches_torch(got, eig.to(device), 9, 30, f"[seed={seed}] {device} zero matrix")
    assert torch.equal(got[1].cpu(), torch.zeros(7, dtype=torch.float64)), f"[seed={seed}] {got[1]}"
    assert not got[[0, 2]].isnan().any(), f"[seed={seed}] a zero row leaked into its neighbours"


def test_nan_and_inf_rows_follow_torch(device, seed):
    """Non-finite eigenvalues give the torch reference's NaNs, column for column: NaN at a quartile
    position (sigma NaN), at the largest place (sigma_max NaN, snr 0 since NaN > 0 is false),
    elsewhere (noise NaN), a whole NaN row, +inf and -inf (clamped to 0) at the top."""
    nan, inf = float("nan"), float("inf")
    k = 9  # quartile positions 2 and 6
    base = trained_like_eigenvalues(1, k, torch.Generator().manual_seed(seed))[0]
    rows = []
    for position, value in [(2, nan), (6, nan), (4, nan), (0, nan), (k - 1, nan), (k - 1, inf), (k - 1, -inf)]:
        row = base.clone()
        row[position] = value
        rows.append(row)
    rows.append(torch.full((k,), nan, dtype=torch.float64))
    rows.append(base)  # a finite row after them stays finite
    eig = torch.stack(rows)
    got = kernel_stats.snr_statistics_triton(eig.to(device), 9, 40)
    assert_matches_torch(got, eig.to(device), 9, 40, f"[seed={seed}] {device} non-finite rows")
    assert got[-1].isfinite().all(), f"[seed={seed}]"


def test_batches_of_many_matrices(device, seed):
    """One launch, one program per matrix: a large batch gives each matrix its own numbers."""
    g = torch.Generator().manual_seed(seed)
    for batch, k in ([(120, 7), (6, 1536)] if device == "cpu" else [(300, 1000), (28320, 64), (1024, 1536)]):
        eig = trained_like_eigenvalues(batch, k, g).to(device)
        got = kernel_stats.snr_statistics_triton(eig, k, 4 * k)
        assert_matches_torch(got, eig, k, 4 * k, f"[seed={seed}] {device} B={batch} k={k}")
        single = kernel_stats.snr_statistics_triton(eig[batch // 2 : batch // 2 + 1], k, 4 * k)
        assert torch.equal(single, got[batch // 2 : batch // 2 + 1]), f"[seed={seed}] row depends on its batch"


def test_longest_rows(device, seed):
    """k = 16384 (a 16384-wide Gram) streams in 16 blocks of 1024."""
    k = 16384
    eig = trained_like_eigenvalues(batch_for(device, 2, 64), k, torch.Generator().manual_seed(seed)).to(device)
    got = kernel_stats.snr_statistics_triton(eig, k, 2 * k)
    assert_matches_torch(got, eig, k, 2 * k, f"[seed={seed}] {device} k={k}")


def test_input_validation_and_layout(device, seed):
    g = torch.Generator().manual_seed(seed)
    eig = trained_like_eigenvalues(4, 20, g).to(device)
    with pytest.raises(ValueError, match=r"\[B, k\]"):
        kernel_stats.snr_statistics_triton(eig[0], 20, 30)
    with pytest.raises(TypeError, match="floating"):
        kernel_stats.snr_statistics_triton(eig.to(torch.int64), 20, 30)
    with pytest.raises(ValueError, match="at least one"):
        kernel_stats.snr_statistics_triton(eig[:, :0], 20, 30)
    with pytest.raises(ValueError, match="positive"):
        kernel_stats.snr_statistics_triton(eig, 0, 30)
    empty = kernel_stats.snr_statistics_triton(eig[:0], 20, 30)
    assert empty.shape == (0, 7) and empty.dtype == torch.float64
    strided = torch.stack([eig, eig], dim=-1)[..., 0]  # every other element: not contiguous
    assert not strided.is_contiguous()
    assert torch.equal(kernel_stats.snr_statistics_triton(strided, 20, 30),
                       kernel_stats.snr_statistics_triton(eig, 20, 30)), f"[seed={seed}]"


def test_output_starts_poisoned(monkeypatch):
    """A kernel that writes nothing leaves NaN, never zeros or stale memory that look like results."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")

    class WritesNothing:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    monkeypatch.setattr(kernel_stats, "_kernel", lambda interpret: WritesNothing())
    out = kernel_stats.snr_statistics_triton(torch.ones(3, 5, dtype=torch.float64), 5, 6)
    assert out.shape == (3, 7) and out.isnan().all()


def test_available(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not kernel_stats.available("cpu")
    assert not kernel_stats.available("meta")
    assert kernel_stats.available("cuda") == torch.cuda.is_available()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernel_stats.snr_statistics_triton(torch.ones(2, 3, dtype=torch.float64), 3, 4)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernel_stats.available("cpu")


def test_interpreter_mode_is_chosen_at_launch(monkeypatch):
    """What the device fixture relies on. Plain triton.jit reads TRITON_INTERPRET when it
    decorates; kernels.stats decorates at launch, per mode, so the variable counts when set."""
    import triton

    def body(x):
        return x

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert type(triton.jit(body)).__name__ == "JITFunction"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert type(triton.jit(body)).__name__ == "InterpretedFunction"
    eig = torch.tensor([[0.5, 1.0, 4.0]], dtype=torch.float64)
    assert_matches_torch(kernel_stats.snr_statistics_triton(eig, 3, 5), eig, 3, 5, "set at launch")
    assert type(kernel_stats._kernel(True)).__name__ == "InterpretedFunction"
    assert type(kernel_stats._kernel(False)).__name__ == "JITFunction"


def test_dispatch_uses_triton_on_cuda_only(device, monkeypatch, seed):
    """ops.snr_statistics: the Triton kernel for CUDA eigenvalues; on the CPU the C++ extension or
    torch, even when the interpreter could run the kernel there."""
    calls = []
    real = kernel_stats.snr_statistics_triton
    monkeypatch.setattr(kernel_stats, "snr_statistics_triton", lambda *a: calls.append(a) or real(*a))
    eig = trained_like_eigenvalues(5, 12, torch.Generator().manual_seed(seed)).to(device)
    stats = ops_stats.snr_statistics(eig.reshape(1, 5, 12), 12, 40)  # any leading dims: flattened
    assert len(calls) == (1 if device == "cuda" else 0)
    table = torch.stack([getattr(stats, f) for f in SpectrumStats.FIELDS], dim=-1)
    want = reference_table(eig, 12, 40)
    torch.testing.assert_close(table.cpu(), want, rtol=1e-12, atol=1e-15, msg=f"[seed={seed}] {device}")  # any backend


def test_package_works_without_triton():
    """Triton is optional: with it unimportable, the package imports, the dispatcher falls back and
    available() says no (in a fresh interpreter, triton blocked before anything imports it)."""
    script = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "import spectrum_fast\n"
        "from spectrum_fast.kernels import stats\n"
        "from spectrum_fast.ops import snr_statistics\n"
        "assert not stats.available('cpu') and not stats.available('cuda')\n"
        "eig = torch.tensor([[0.25, 1.0, 9.0]], dtype=torch.float64)\n"
        "print(snr_statistics(eig, 3, 4).snr.item())\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # even with the interpreter asked for
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    want = snr_statistics_torch(torch.tensor([[0.25, 1.0, 9.0]], dtype=torch.float64), 3, 4)[0, 6].item()
    assert float(done.stdout.strip()) == want


def test_dispatcher_falls_back_to_torch_when_the_kernel_fails(monkeypatch):
    """A triton that cannot build the kernel (another version, an unsupported GPU) must not break a
    scan: the first failure warns once and plain torch computes the same table from then on."""
    from spectrum_fast.ops import stats as ops_stats_module

    class Broken:
        @staticmethod
        def available(device):
            return True

        @staticmethod
        def snr_statistics_triton(eigvals, n, m):
            raise AttributeError("module 'triton.language.standard' has no attribute '_sum_combine'")

    eig = torch.rand(3, 9, dtype=torch.float64).sort(dim=-1).values + 0.1

    class FakeCuda:  # a tensor stand-in whose device says cuda, so the dispatcher tries Triton
        def __init__(self, t):
            self.t = t
            self.device = torch.device("cuda")
            self.shape = t.shape

        def reshape(self, *shape):
            return self

    monkeypatch.setattr(ops_stats_module, "_triton_kernels", lambda: Broken)
    monkeypatch.setattr(ops_stats_module, "_triton_failed", None)
    monkeypatch.setattr(ops_stats_module, "snr_statistics_torch", lambda e, n, m: snr_statistics_torch(eig, n, m))
    with pytest.warns(RuntimeWarning, match="Triton statistics kernel failed"):
        first = ops_stats_module.snr_statistics(FakeCuda(eig), 9, 20)
    assert ops_stats_module._triton_failed is not None
    second = ops_stats_module.snr_statistics(FakeCuda(eig), 9, 20)  # no second attempt, no warning
    want = snr_statistics_torch(eig, 9, 20)
    for got in (first, second):
        assert torch.equal(torch.stack([getattr(got, f) for f in SpectrumStats.FIELDS], -1), want)
