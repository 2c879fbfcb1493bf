"""Band -> tridiagonal by Householder bulge chasing, in one Triton launch: symmetric float64 band
matrices in lower band storage ([B, n, width], ops.band.lower_band's layout, width >= 2b so the
bulges fit), reduced in place; their diagonals and subdiagonals come back.

Why: the exact route's second stage runs LAPACK dsbev on the host (Givens bulge chasing, then
dsterf), and the host sets the pace of the whole scan: 15 host threads gave 70 ms per 4096
matrix at b = 16 while the GPU's stage 1 took 42 ms (bench/probes/two_stage.log), and scan times
followed the host's load from run to run. On the GPU, one program per matrix chases every sweep
in turn; many matrices run at once, one per SM.

The algorithm is tests/bulge_chasing_reference.py's (checked there against LAPACK): sweep i
annihilates column i below its subdiagonal with one reflector, applied to both sides of the
diagonal block; the block below fills in from the right, a second reflector annihilates the first
column of that fill, and so on down the matrix. The rest of each bulge is annihilated by the next
sweep. The program works in global memory on the band storage (n x 2b doubles per matrix, not
n^2: the bands of many batches can wait on the GPU for one launch), a block of at most
BLOCK x BLOCK (b <= BLOCK) per step, a diagonal block read whole through its lower triangle, with
a barrier between a step's stores and the next loads.

Checked against LAPACK under TRITON_INTERPRET on the CPU and natively on the GPU
(tests/test_kernels_bulge.py); on the H100 a batch of 32 bands of n = 4096 takes 22 ms per matrix
against 73 ms for dsbev on 15 host threads (bench/results/kernels_bulge_h100_7203162.log), so the
exact route's "auto" uses it (ops.eigen).

Built at first launch, once per mode (compiled or interpreted): kernels/runtime.py; so the body
calls no jit function (tl.sum and tl.zeros are ones) and reduces with tl.standard._sum_combine.
"""

from __future__ import annotations

import torch

from . import runtime

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None


def _bulge_chase(band_ptr, n, bandwidth, width, BLOCK: tl.constexpr):
    """One program = one matrix, in lower band storage: band[c, d] = A[c + d, c] for d < width
    (row-major [n, width], width >= 2 * bandwidth so the bulges fit). Element (r, c) of the
    symmetric matrix lives at min(r, c) * width + |r - c|.

    Each step of a sweep takes the block of rows jr .. jr + rows_in - 1, columns jc .. jc +
    cols_in - 1 (all below the diagonal), whose first column is to be annihilated below its top:
    at the sweep's start that is column i alone (jc = i, jr = i + 1); down the chase it is the
    fill of the block below the last diagonal block. One reflector does it, from the left; the
    diagonal block at jr then gets it on both sides, and the block below that, from the right,
    which makes the next step's fill."""
    band = band_ptr + tl.program_id(0).to(tl.int64) * n * width
    r = tl.arange(0, BLOCK)
    rows = r[:, None]
    cols = r[None, :]
    # Offsets of a diagonal block's elements relative to its first diagonal element: both
    # triangles read the lower one.
    diag_offsets = tl.where(rows >= cols, cols * width + (rows - cols), rows * width + (cols - rows))
    lower_half = rows >= cols
    i = 0
    while i < n - 2:
        jc = i
        jr = i + 1
        cols_in = 1
        rows_in = tl.minimum(bandwidth, n - jr)
        # element (jr + p, jc + q): column jc + q, diagonal jr - jc + p - q
        b_ptrs = band + (jc + cols) * width + (jr - jc + rows - cols)
        blk = tl.load(b_ptrs, mask=(rows < rows_in) & (cols < cols_in), other=0.0)
        while jr < n:
            # Reflector for the block's first column (dlarfg's formulas; no rescaling: Gram entries
            # are far from float64's range limits; tau 0 when the block has one row).
            x = tl.reduce(tl.where(cols == 0, blk, 0.0), 1, tl.standard._sum_combine)
            alpha = tl.reduce(tl.where(r == 0, x, 0.0), 0, tl.standard._sum_combine)
            sigma = tl.reduce(tl.where(r > 0, x * x, 0.0), 0, tl.standard._sum_combine)
            norm = tl.sqrt(alpha * alpha + sigma)
            beta = tl.where(alpha >= 0, -norm, norm)
            trivial = sigma == 0.0
            beta = tl.where(trivial, alpha, beta)
            tau = tl.where(trivial, 0.0, (beta - alpha) / tl.where(trivial, 1.0, beta))
            scale = tl.where(trivial, 0.0, 1.0 / tl.where(trivial, 1.0, alpha - beta))
            v = tl.where(r == 0, 1.0, x * scale)  # x is 0 past the block's rows
            blk -= (tau * v)[:, None] * tl.reduce(v[:, None] * blk, 0, tl.standard._sum_combine)[None, :]
            blk = tl.where(cols == 0, tl.where(rows == 0, beta, 0.0), blk)
            tl.store(b_ptrs, blk, mask=(rows < rows_in) & (cols < cols_in))
            # Diagonal block at jr: d <- H d H (lower triangle stored).
            inside = (rows < rows_in) & (cols < rows_in)
            d_ptrs = band + jr * width + diag_offsets
            d = tl.load(d_ptrs, mask=inside, other=0.0)
            w = tau * tl.reduce(d * v[None, :], 1, tl.standard._sum_combine)
            w -= (0.5 * tau * tl.reduce(v * w, 0, tl.standard._sum_combine)) * v
            d -= v[:, None] * w[None, :] + w[:, None] * v[None, :]
            tl.store(d_ptrs, d, mask=inside & lower_half)
            tl.debug_barrier()
            # The block below it, from the right: the next step's fill (empty past the end).
            jc = jr
            cols_in = rows_in
            jr = jr + rows_in
            rows_in = tl.minimum(bandwidth, n - jr)
            b_ptrs = band + (jc + cols) * width + (jr - jc + rows - cols)
            blk = tl.load(b_ptrs, mask=(rows < rows_in) & (cols < cols_in), other=0.0)
            blk -= tl.reduce(blk * v[None, :], 1, tl.standard._sum_combine)[:, None] * (tau * v)[None, :]
        i += 1


def available(device: torch.device | str) -> bool:
    """triton importable, and a CUDA device, or the CPU under TRITON_INTERPRET=1 (tests)."""
    return runtime.available(device, needs_sum_combine=True)


def default_num_warps(block: int) -> int:
    """Warps per program. A step is a chain of small reductions over one BLOCK x BLOCK tile: within
    one warp they are register shuffles, across warps they go through shared memory. Measured on
    the H100 (bench/results/kernels_bulge_h100_7203162.log, n = 4096, 32 matrices, ms per matrix
    at 1/2/4 warps): BLOCK 16: 22.8/23.7/24.6; BLOCK 32: 36.6/23.6/21.7; BLOCK 64: 254/88/29."""
    return 1 if block <= 16 else 4


def band_to_tridiagonal(bands: torch.Tensor, bandwidth: int,
                        num_warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce symmetric band matrices given in lower band storage, ``bands`` [B, n, width] float64
    with bands[:, c, d] = A[c + d, c] (ops.band.lower_band's layout) and width >= 2 * bandwidth
    (room for the bulges; the diagonals past ``bandwidth`` zero), in place to similar tridiagonal
    matrices. -> (diagonals [B, n], subdiagonals [B, n - 1]). ``num_warps``: per program, on CUDA
    (default_num_warps)."""
    if not available(bands.device):
        raise RuntimeError(f"band_to_tridiagonal: the Triton kernel can't run on {bands.device} "
                           "(needs triton, and CUDA, or TRITON_INTERPRET=1 on the CPU)")
    if bands.dim() != 3 or bands.dtype != torch.float64:
        raise ValueError(f"band_to_tridiagonal expects [B, n, width] float64, got {tuple(bands.shape)} {bands.dtype}")
    if not bands.is_contiguous():
        raise ValueError("band_to_tridiagonal works in place on a contiguous tensor")
    if bandwidth < 1:
        raise ValueError(f"bandwidth must be at least 1, got {bandwidth}")
    batch, n, width = bands.shape
    if n > 2 and bandwidth > 1 and width < min(2 * bandwidth, 2 * (n - 1)):
        raise ValueError(f"band storage of width {width} has no room for the bulges of bandwidth {bandwidth}: "
                         f"give at least {2 * bandwidth} diagonals")
    if batch and n > 2 and bandwidth > 1:
        block = max(16, triton.next_power_of_2(min(bandwidth, n)))
        runtime.launch(runtime.build(_bulge_chase, runtime.interpreting()), (batch,), bands.device,
                       (bands, n, bandwidth, width), BLOCK=block, num_warps=num_warps or default_num_warps(block))
    return bands[:, :, 0].clone(), bands[:, : n - 1, 1].clone() if width > 1 else bands.new_zeros(batch, max(n - 1, 0))
