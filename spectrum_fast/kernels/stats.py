"""Spectrum's per-matrix statistics in one Triton launch: [B, k] ascending Gram eigenvalues ->
[B, 7] float64 table, the same columns and numbers as ops.stats.snr_statistics_torch.

One program per matrix. It reads the five values it needs to place the threshold (both quartiles'
neighbours and the largest), then streams its row once in blocks of BLOCK, so any k works.

Exactness (tests/test_kernels_stats.py checks it against the torch reference):
- everything is float64; float32 (or 16-bit) eigenvalues are upcast on load, exactly;
- quartile positions use integers: torch.quantile's rank q (k - 1) is a whole number of quarters,
  so floor, ceil and the weight (0, 1/4, 1/2 or 3/4) come out exactly as from torch's float rank;
- the interpolation is torch.lerp's two-sided formula; its products (by 1/4, 1/2, 3/4) are exact,
  and the compiled kernel is built without fused multiply-adds anyway (enable_fp_fusion=False), so
  every operation rounds once, as written;
- float64 division and square root are IEEE-rounded in Triton (div.rn.f64, sqrt.rn.f64 on NVIDIA,
  numpy in the interpreter), and Python float literals meeting a float64 tensor become float64
  constants (1.349 is not rounded to float32);
- so sigma_max, sigma, threshold and n_signal are bit-identical to the reference wherever its
  square root is IEEE too (torch on CUDA, the C++ extension; torch's float64 sqrt on the CPU, SLEEF
  on AVX2/AVX-512 builds, is one ulp off for about 1 in 80 values); signal, noise and snr are sums
  in another order, equal to a few ulps.

Compiled or interpreted: built at first launch, once per mode, and the mode picked at every
launch (kernels/runtime.py), so TRITON_INTERPRET only has to be set when the kernel is launched,
and CPU (interpreted) and CUDA (compiled) launches can share one process.
"""

# Annotations stay strings, so the kernel's ``tl.constexpr`` needs no triton at import time
# (triton reads the string "tl.constexpr" as constexpr all the same).
from __future__ import annotations

import torch

from . import runtime

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: available() answers False and nothing launches.
    triton = tl = None

COLUMNS = ("sigma_max", "sigma", "threshold", "signal", "noise", "n_signal", "snr")  # = SpectrumStats.FIELDS
INPUT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)  # all upcast to float64 exactly
MAX_BLOCK = 1024  # values per program per step: 8 float64 per thread at 4 warps


def _snr_statistics_rows(eigvals_ptr, out_ptr, k, short_side, long_side, BLOCK: tl.constexpr):
    """One program = one matrix: row ``program_id`` of eigvals [B, k] -> row of out [B, 7]."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = eigvals_ptr + row * k

    # Quartile neighbours, as torch.quantile places them: rank = q (k - 1), counted in quarters.
    # (No helper function: see _kernel. Hence the clamp-and-sqrt written out at each load.)
    q25_quarters = k - 1
    q75_quarters = 3 * (k - 1)
    e = tl.load(row_ptr + q25_quarters // 4).to(tl.float64)
    q25_below = tl.sqrt(tl.where(e < 0, 0.0, e))  # where, not maximum: a NaN stays NaN as in torch
    e = tl.load(row_ptr + (q25_quarters + 3) // 4).to(tl.float64)
    q25_above = tl.sqrt(tl.where(e < 0, 0.0, e))
    e = tl.load(row_ptr + q75_quarters // 4).to(tl.float64)
    q75_below = tl.sqrt(tl.where(e < 0, 0.0, e))
    e = tl.load(row_ptr + (q75_quarters + 3) // 4).to(tl.float64)
    q75_above = tl.sqrt(tl.where(e < 0, 0.0, e))
    e = tl.load(row_ptr + k - 1).to(tl.float64)
    sigma_max = tl.sqrt(tl.where(e < 0, 0.0, e))

    # torch.lerp: a + w (b - a) below w = 1/2, b - (b - a)(1 - w) from 1/2 on (not interchangeable
    # when b - a rounds).
    w25 = (q25_quarters % 4).to(tl.float64) * 0.25
    w75 = (q75_quarters % 4).to(tl.float64) * 0.25
    q25 = tl.where(w25 < 0.5, q25_below + w25 * (q25_above - q25_below),
                   q25_above - (q25_above - q25_below) * (1.0 - w25))
    q75 = tl.where(w75 < 0.5, q75_below + w75 * (q75_above - q75_below),
                   q75_above - (q75_above - q75_below) * (1.0 - w75))
    sigma = (q75 - q25) / 1.349
    # beta in float64 from the integer sides; sqrt, not pow, so it matches the torch reference.
    beta = short_side.to(tl.float64) / long_side.to(tl.float64)
    threshold = sigma * (1.0 + tl.sqrt(beta))

    signal_acc = tl.full([BLOCK], 0.0, tl.float64)
    noise_acc = tl.full([BLOCK], 0.0, tl.float64)
    count_acc = tl.full([BLOCK], 0, tl.int32)
    # A while loop, not range(0, k, BLOCK): Triton 3.6's interpreter turns a runtime k into a
    # Python int with int(1-element array), which numpy >= 2.4 refuses (triton-lang/triton#9171).
    start = 0
    while start < k:
        offsets = start + tl.arange(0, BLOCK)
        inside = offsets < k
        block = tl.load(row_ptr + offsets, mask=inside, other=0.0).to(tl.float64)
        s = tl.sqrt(tl.where(block < 0, 0.0, block))
        above = (s > threshold) & inside  # NaN is never above: it lands in noise, as in torch
        signal_acc += tl.where(above, s, 0.0)
        noise_acc += tl.where(above, 0.0, s)  # padding lanes add 0
        count_acc += above.to(tl.int32)
        start += BLOCK
    signal = tl.reduce(signal_acc, 0, tl.standard._sum_combine)  # = tl.sum: see _kernel
    n_signal = tl.reduce(count_acc, 0, tl.standard._sum_combine)
    noise_sum = tl.reduce(noise_acc, 0, tl.standard._sum_combine)
    noise = tl.where(n_signal < k, noise_sum, 1.0)  # spectrum.py: 1.0 when nothing is <= tau
    snr = tl.where(sigma_max > 0, signal / noise / sigma_max, 0.0)

    out_row = out_ptr + row * 7
    tl.store(out_row + 0, sigma_max)
    tl.store(out_row + 1, sigma)
    tl.store(out_row + 2, threshold)
    tl.store(out_row + 3, signal)
    tl.store(out_row + 4, noise)
    tl.store(out_row + 5, n_signal.to(tl.float64))
    tl.store(out_row + 6, snr)


# The matrix sides vary per call and feed only float arithmetic: specializing on their values
# (== 1, multiple of 16) would only recompile.
_NOT_SPECIALIZED = ["short_side", "long_side"]


def _kernel(interpret: bool):
    """The kernel for one mode, built on first use (kernels/runtime.py says why).

    Triton 3.6 turns a kernel's callees into compiled or interpreted functions once, when they are
    decorated, and neither mode can call the other's. So the kernel body calls no jit function
    except tl.standard._sum_combine, Triton's own, through tl.reduce: what tl.sum does; tl.sum,
    tl.zeros and helpers of ours would be decorated in whichever mode triton was imported. The
    interpreter recognizes _sum_combine by identity (numpy's sum) and the compiler compiles it, so
    both modes work when triton is imported without TRITON_INTERPRET, as in a test session or a
    scan (a process started with TRITON_INTERPRET=1 interprets everything, CUDA included).
    """
    return runtime.build(_snr_statistics_rows, interpret, tuple(_NOT_SPECIALIZED))


def available(device: torch.device | str) -> bool:
    """Whether the kernel can run on ``device``: triton importable, and a CUDA device, or the CPU
    with TRITON_INTERPRET=1 (Triton's interpreter, for tests)."""
    return runtime.available(device, needs_sum_combine=True)


def _launch_shape(k: int) -> tuple[int, int]:
    """(BLOCK, num_warps): one step for k <= MAX_BLOCK, about 8 values per thread."""
    block = min(max(triton.next_power_of_2(k), 32), MAX_BLOCK)
    return block, max(1, min(4, block // 256))


def snr_statistics_triton(eigvals: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """[B, k] ascending eigenvalues of the Grams of B matrices of shape n x m -> [B, 7] float64
    (columns COLUMNS), on the eigenvalues' device, in one launch."""
    if not available(eigvals.device):
        raise RuntimeError(f"snr_statistics_triton: the Triton kernel can't run on {eigvals.device} "
                           "(needs triton, and CUDA, or TRITON_INTERPRET=1 on the CPU)")
    if eigvals.dim() != 2:
        raise ValueError(f"snr_statistics_triton: eigvals must be [B, k], got shape {tuple(eigvals.shape)}")
    if eigvals.dtype not in INPUT_DTYPES:
        raise TypeError(f"snr_statistics_triton: eigvals must be floating ({', '.join(map(str, INPUT_DTYPES))}), "
                        f"got {eigvals.dtype}")
    if n < 1 or m < 1:
        raise ValueError(f"snr_statistics_triton: matrix sides must be positive, got {n} x {m}")
    batch, k = eigvals.shape
    if k == 0:
        raise ValueError("snr_statistics_triton: need at least one eigenvalue per matrix")
    eigvals = eigvals.contiguous()  # rows at stride k
    # Poisoned: a row the kernel fails to write stays NaN instead of looking like a result.
    out = torch.full((batch, len(COLUMNS)), float("nan"), dtype=torch.float64, device=eigvals.device)
    if batch == 0:
        return out
    block, num_warps = _launch_shape(k)
    args = (eigvals, out, k, min(n, m), max(n, m))
    # The interpreter computes with numpy, which warns where the GPU silently gives inf or NaN
    # (signal / 0 noise, NaN rows), as torch does: results are the same (runtime.launch quiets it).
    runtime.launch(_kernel(runtime.interpreting()), (batch,), eigvals.device, args,
                   BLOCK=block, num_warps=num_warps, enable_fp_fusion=False)  # the interpreter ignores the last two
    return out
