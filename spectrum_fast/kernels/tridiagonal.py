"""All eigenvalues of many symmetric tridiagonal matrices by bisection on Sturm counts, in one
Triton launch: diagonals [B, n] and subdiagonals [B, n - 1] (float64) -> [B, n] ascending.

Why: after the GPU bulge chase (kernels/bulge.py) the tridiagonal's eigenvalues are the last
step, and LAPACK dsterf on the host costs about as much as the chase it replaces (n = 4096: 187 ms
of dsterf against 425 ms for all of dsbev, one core of the CI machine). Bisection is
embarrassingly parallel: every eigenvalue is found on its own.

How: eigenvalue k is the point where the Sturm count (the number of eigenvalues below x: the
negative pivots q_i = (d_i - x) - e_{i-1}^2 / q_{i-1} of T - xI = LDL^T) steps from k to k + 1.
Each program takes BLOCK eigenvalue indices of one matrix and bisects them together, one lane
each, from the Gershgorin interval; ITERATIONS halvings shrink it far below float64's resolution,
so the result is as accurate as the counts (about n * eps * ||T|| absolute, like dstebz). Pivots
smaller than ``pivmin`` in magnitude are replaced by -pivmin, as LAPACK's dlaebz does, so a zero
pivot never divides.

Status: correct on the CPU under TRITON_INTERPRET (tests/test_kernels_tridiagonal.py); not yet
timed on a GPU, so the scan does not use it yet.

Built at first launch, once per mode (compiled or interpreted): kernels/runtime.py; so the body
calls no jit function (tl.zeros is one: tl.full instead).
"""

from __future__ import annotations

import torch

from . import runtime

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

# Halvings of the Gershgorin interval: 2^-ITERATIONS of its width is below float64's resolution of
# any eigenvalue inside it (the interval's width is at most ~4 ||T||).
ITERATIONS = 64
MAX_BLOCK = 128


def _bisect(d_ptr, e_ptr, out_ptr, lower_ptr, upper_ptr, n, pivmin_ptr, ITERATIONS: tl.constexpr,
            BLOCK: tl.constexpr):
    """Program (matrix, block of eigenvalue indices)."""
    matrix = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = k < n
    d_row = d_ptr + matrix * n
    e_row = e_ptr + matrix * (n - 1)
    pivmin = tl.load(pivmin_ptr + matrix)
    lo = tl.full([BLOCK], 0.0, tl.float64) + tl.load(lower_ptr + matrix)
    hi = tl.full([BLOCK], 0.0, tl.float64) + tl.load(upper_ptr + matrix)
    step = 0
    while step < ITERATIONS:
        mid = 0.5 * (lo + hi)
        # Sturm count below mid, for every lane at once.
        q = tl.load(d_row) - mid
        q = tl.where(tl.abs(q) < pivmin, -pivmin, q)
        count = (q < 0).to(tl.int32)
        i = 1
        while i < n:
            e = tl.load(e_row + i - 1)
            q = (tl.load(d_row + i) - mid) - (e * e) / q
            q = tl.where(tl.abs(q) < pivmin, -pivmin, q)
            count += (q < 0).to(tl.int32)
            i += 1
        above = count > k  # eigenvalue k lies below mid
        hi = tl.where(above, mid, hi)
        lo = tl.where(above, lo, mid)
        step += 1
    tl.store(out_ptr + matrix * n + k, 0.5 * (lo + hi), mask=valid)


def available(device: torch.device | str) -> bool:
    """triton importable, and a CUDA device, or the CPU under TRITON_INTERPRET=1 (tests)."""
    return runtime.available(device)


def tridiagonal_eigvalsh(d: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Eigenvalues, ascending, of the symmetric tridiagonal matrices with diagonals ``d`` [B, n]
    and subdiagonals ``e`` [B, n - 1] (float64, same device) -> [B, n] float64."""
    if not available(d.device):
        raise RuntimeError(f"tridiagonal_eigvalsh: the Triton kernel can't run on {d.device} "
                           "(needs triton, and CUDA, or TRITON_INTERPRET=1 on the CPU)")
    if d.dim() != 2 or e.dim() != 2 or e.shape != (d.shape[0], max(d.shape[1] - 1, 0)):
        raise ValueError(f"tridiagonal_eigvalsh: need d [B, n] and e [B, n - 1], got {tuple(d.shape)} "
                         f"and {tuple(e.shape)}")
    if d.dtype != torch.float64 or e.dtype != torch.float64 or e.device != d.device:
        raise ValueError("tridiagonal_eigvalsh: d and e must be float64 tensors on one device")
    batch, n = d.shape
    out = torch.full((batch, n), float("nan"), dtype=torch.float64, device=d.device)  # poisoned
    if batch == 0 or n == 0:
        return out
    d, e = d.contiguous(), e.contiguous()
    # Gershgorin interval per matrix, widened so that both ends are strictly outside the spectrum.
    radius = torch.zeros_like(d)
    radius[:, 1:] += e.abs()
    radius[:, :-1] += e.abs()
    lower = (d - radius).min(dim=1).values
    upper = (d + radius).max(dim=1).values
    norm = torch.maximum(lower.abs(), upper.abs())
    slack = 2 * n * torch.finfo(torch.float64).eps * norm + torch.finfo(torch.float64).tiny
    lower, upper = lower - slack, upper + slack
    # dlaebz's pivot floor: the smallest safe number, scaled by the largest e^2 (at least 1).
    e2max = (e * e).amax(dim=1) if n > 1 else torch.zeros(batch, dtype=torch.float64, device=d.device)
    pivmin = torch.finfo(torch.float64).tiny * torch.clamp(e2max, min=1.0)
    block = min(MAX_BLOCK, max(16, triton.next_power_of_2(n)))
    grid = (batch, triton.cdiv(n, block))
    args = (d, e if n > 1 else d, out, lower.contiguous(), upper.contiguous(), n, pivmin.contiguous())
    runtime.launch(runtime.build(_bisect, runtime.interpreting()), grid, d.device, args,
                   ITERATIONS=ITERATIONS, BLOCK=block, num_warps=4)
    return out
