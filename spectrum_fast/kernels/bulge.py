"""Band -> tridiagonal by Householder bulge chasing, in one Triton launch: [B, n, n] symmetric
float64 matrices of bandwidth b (stage 1's output, ops.band.reduce_to_band_), reduced in place;
their diagonals and subdiagonals come back.

Why: the exact route's second stage runs LAPACK dsbev on the host (Givens bulge chasing, then
dsterf), and the host sets the pace of the whole scan: 15 host threads gave 70 ms per 4096
matrix at b = 16 while the GPU's stage 1 took 42 ms (bench/probes/two_stage.log), and scan times
followed the host's load from run to run. On the GPU, one program per matrix chases every sweep
in turn; many matrices run at once, one per SM.

The algorithm is tests/bulge_chasing_reference.py's (checked there against LAPACK): sweep i
annihilates column i below its subdiagonal with one reflector, applied to both sides of the
diagonal block; the block below fills in from the right, a second reflector annihilates the first
column of that fill, and so on down the matrix. The rest of each bulge is annihilated by the next
sweep. Both triangles are kept, so every block is read whole; the program works in global memory
(L2-resident for the band's neighbourhood), a block of at most BLOCK x BLOCK (b <= BLOCK) per
step, with a barrier between a step's stores and the next loads.

Status: correct on the CPU under TRITON_INTERPRET (tests/test_kernels_bulge.py); not yet timed on
a GPU, so nothing calls it outside its tests and benches.

Built at first launch, once per mode (compiled or interpreted), as kernels/stats.py explains; so,
again, the body calls no jit function (tl.sum and tl.zeros are ones) and reduces with
tl.standard._sum_combine.
"""

from __future__ import annotations

import functools

import torch

from .stats import _interpreting

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None


def _bulge_chase(a_ptr, n, bandwidth, BLOCK: tl.constexpr):
    """One program = one matrix a[program_id] ([n, n], row-major, symmetric, bandwidth b)."""
    a = a_ptr + tl.program_id(0).to(tl.int64) * n * n
    r = tl.arange(0, BLOCK)
    rows = r[:, None]
    cols = r[None, :]
    i = 0
    while i < n - 2:
        j1 = i + 1
        len1 = tl.minimum(bandwidth, n - j1)
        # Reflector for column i, rows j1 .. j1 + len1 - 1 (dlarfg's formulas; no rescaling:
        # Gram entries are far from float64's range limits).
        x = tl.load(a + (j1 + r) * n + i, mask=r < len1, other=0.0)
        alpha = tl.reduce(tl.where(r == 0, x, 0.0), 0, tl.standard._sum_combine)
        sigma = tl.reduce(tl.where(r > 0, x * x, 0.0), 0, tl.standard._sum_combine)
        norm = tl.sqrt(alpha * alpha + sigma)
        beta = tl.where(alpha >= 0, -norm, norm)
        trivial = sigma == 0.0
        beta = tl.where(trivial, alpha, beta)
        tau = tl.where(trivial, 0.0, (beta - alpha) / tl.where(trivial, 1.0, beta))
        scale = tl.where(trivial, 0.0, 1.0 / tl.where(trivial, 1.0, alpha - beta))
        v = tl.where(r == 0, 1.0, x * scale)
        column = tl.where(r == 0, beta, 0.0)
        tl.store(a + (j1 + r) * n + i, column, mask=r < len1)
        tl.store(a + i * n + j1 + r, column, mask=r < len1)
        # Diagonal block: d <- H d H.
        inside = (rows < len1) & (cols < len1)
        d_ptrs = a + (j1 + rows) * n + (j1 + cols)
        d = tl.load(d_ptrs, mask=inside, other=0.0)
        w = tau * tl.reduce(d * v[None, :], 1, tl.standard._sum_combine)
        w -= (0.5 * tau * tl.reduce(v * w, 0, tl.standard._sum_combine)) * v
        d -= v[:, None] * w[None, :] + w[:, None] * v[None, :]
        tl.store(d_ptrs, d, mask=inside)
        tl.debug_barrier()
        # The chase, block by block down the matrix.
        while j1 + len1 < n:
            j2 = j1 + len1
            len2 = tl.minimum(bandwidth, n - j2)
            below = (rows < len2) & (cols < len1)
            b_ptrs = a + (j2 + rows) * n + (j1 + cols)
            bt_ptrs = a + (j1 + cols) * n + (j2 + rows)  # the same block, mirrored
            blk = tl.load(b_ptrs, mask=below, other=0.0)
            blk -= tl.reduce(blk * v[None, :], 1, tl.standard._sum_combine)[:, None] * (tau * v)[None, :]
            # Reflector for the fill's first column (tau 0 when the block has one row).
            x = tl.reduce(tl.where(cols == 0, blk, 0.0), 1, tl.standard._sum_combine)
            alpha = tl.reduce(tl.where(r == 0, x, 0.0), 0, tl.standard._sum_combine)
            sigma = tl.reduce(tl.where(r > 0, x * x, 0.0), 0, tl.standard._sum_combine)
            norm = tl.sqrt(alpha * alpha + sigma)
            beta = tl.where(alpha >= 0, -norm, norm)
            trivial = sigma == 0.0
            beta = tl.where(trivial, alpha, beta)
            tau = tl.where(trivial, 0.0, (beta - alpha) / tl.where(trivial, 1.0, beta))
            scale = tl.where(trivial, 0.0, 1.0 / tl.where(trivial, 1.0, alpha - beta))
            v = tl.where(r == 0, 1.0, tl.where(r < len2, x * scale, 0.0))
            blk -= (tau * v)[:, None] * tl.reduce(v[:, None] * blk, 0, tl.standard._sum_combine)[None, :]
            blk = tl.where(cols == 0, tl.where(rows == 0, beta, 0.0), blk)
            tl.store(b_ptrs, blk, mask=below)
            tl.store(bt_ptrs, blk, mask=below)
            inside = (rows < len2) & (cols < len2)
            d_ptrs = a + (j2 + rows) * n + (j2 + cols)
            d = tl.load(d_ptrs, mask=inside, other=0.0)
            w = tau * tl.reduce(d * v[None, :], 1, tl.standard._sum_combine)
            w -= (0.5 * tau * tl.reduce(v * w, 0, tl.standard._sum_combine)) * v
            d -= v[:, None] * w[None, :] + w[:, None] * v[None, :]
            tl.store(d_ptrs, d, mask=inside)
            tl.debug_barrier()
            j1 = j2
            len1 = len2
        i += 1


@functools.lru_cache(maxsize=None)
def _kernel(interpret: bool):
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_bulge_chase)
    return triton.runtime.jit.JITFunction(_bulge_chase)


def available(device: torch.device | str) -> bool:
    """triton importable, and a CUDA device, or the CPU under TRITON_INTERPRET=1 (tests)."""
    if triton is None or not hasattr(getattr(tl, "standard", None), "_sum_combine"):
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and _interpreting()


def band_to_tridiagonal_(a: torch.Tensor, bandwidth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce ``a`` ([B, n, n] float64, symmetric, zero beyond ``bandwidth``: ops.band's output)
    in place to a similar tridiagonal matrix. -> (diagonals [B, n], subdiagonals [B, n - 1])."""
    if not available(a.device):
        raise RuntimeError(f"band_to_tridiagonal_: the Triton kernel can't run on {a.device} "
                           "(needs triton, and CUDA, or TRITON_INTERPRET=1 on the CPU)")
    if a.dim() != 3 or a.shape[-1] != a.shape[-2] or a.dtype != torch.float64:
        raise ValueError(f"band_to_tridiagonal_ expects [B, n, n] float64, got {tuple(a.shape)} {a.dtype}")
    if not a.is_contiguous():
        raise ValueError("band_to_tridiagonal_ works in place on a contiguous tensor")
    batch, n, _ = a.shape
    if bandwidth < 1:
        raise ValueError(f"bandwidth must be at least 1, got {bandwidth}")
    if batch and n > 2 and bandwidth > 1:
        block = max(16, triton.next_power_of_2(min(bandwidth, n)))
        launch = _kernel(_interpreting())[(batch,)]
        if a.device.type == "cuda" and not _interpreting():
            with torch.cuda.device(a.device):
                launch(a, n, bandwidth, BLOCK=block, num_warps=4)
        else:
            launch(a, n, bandwidth, BLOCK=block)
    return a.diagonal(dim1=-2, dim2=-1).clone(), a.diagonal(offset=-1, dim1=-2, dim2=-1).clone()
