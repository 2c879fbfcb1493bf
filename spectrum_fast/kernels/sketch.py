"""Randomized sketch Y = A @ Omega of one matrix or a batch, with the Gaussian test matrix Omega
generated inside the kernel, tile by tile, and never written to memory.

A is [n, m] or [B, n, m] (bf16, fp16 or fp32, any strides); Omega is m x l per matrix; Y is fp32.
A sketch only needs l << m columns: a skinny GEMM that reads A once.

Omega, exactly (what ``gaussian_test_matrix`` writes out, for the tests):
- Philox4x32-10 (Salmon et al., SC'11; the generator behind tl.randn), keyed by the 64-bit seed,
  gives four 32-bit words per counter. The counter of row r, column group g of matrix b is
  (b m + r) ceil(l / 4) + g: one counter per four columns, the per-matrix offset b m ceil(l / 4)
  keeping the matrices of a batch independent.
- Box-Muller turns the words into four standard normals, for columns 4g .. 4g + 3 (one Philox call
  per four values: tl.randn spends one call per value, and generating Omega is this kernel's main
  cost besides reading A). Each uniform keeps 23 random bits, as an odd multiple of 2^-24, so it
  is never 0 or 1 and the logarithm stays finite.
- Rounded to A's dtype: bf16/fp16 A is multiplied by a bf16/fp16 Omega on the tensor cores. The
  products are exact in the fp32 accumulator; the rounding only changes which test matrix is used,
  which stays a valid, nearly Gaussian sketch. fp32 A is multiplied by the fp32 Omega with
  input_precision="ieee" (never TF32, whose 10-bit mantissa would perturb A itself).
Omega depends on the seed, the matrix's place in the batch, m and l, not on the tiles or the
launch. It is the same on every device only up to the last bits of log/cos/sin, and of the
rounding to bf16 (the interpreter truncates where the GPU rounds to nearest).

Tiles: each program computes a BLOCK_N x BLOCK_L tile of Y, looping over K_STEPS tiles of BLOCK_K
columns of A; it generates the BLOCK_K x BLOCK_L tile of Omega it needs at each step. So Omega is
generated anew for every row tile of A: the generator does n / BLOCK_N times the work of drawing
Omega once, and it, not reading A, is what limits this kernel; tall tiles (BLOCK_N = 256) keep
that factor down. What fusing buys is memory: no B x m x l Omega is ever allocated. Where a
launch would have too few programs to fill the GPU (one matrix, few row tiles), the columns of A
are split over several programs (split-K), which write partial sums that torch adds up afterwards
(deterministic, unlike atomics).

Compiled or interpreted: built at first launch per mode (kernels/runtime.py), so TRITON_INTERPRET
only has to be set when the kernel runs. Hence the body calls no jit function (not tl.randn,
tl.zeros or tl.cdiv: runtime.py says why) and writes Philox out; and its loops have constexpr
bounds (K_STEPS, the rounds), which also keeps triton 3.6's interpreter clear of its int(array)
failure under numpy >= 2.4 (triton-lang/triton#9171).
"""

# Annotations stay strings, so the kernel's ``tl.constexpr`` needs no triton at import time.
from __future__ import annotations

import torch

from . import runtime

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: available() answers False and nothing launches.
    triton = tl = None

INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
VALUES_PER_COUNTER = 4  # Philox4x32 gives four words, Box-Muller two normals per pair of words
_MAX_GRID_Z = 65535  # CUDA's limit on grid dimension 1, where (matrix, split) pairs go


def _sketch_or_write_omega(
    a_ptr, out_ptr,
    n, m, l, groups,
    stride_ab, stride_an, stride_am,
    stride_ob, stride_or,
    key_lo, key_hi, splits,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, K_STEPS: tl.constexpr,
    WRITE_OMEGA: tl.constexpr, DOT_IN_FP32: tl.constexpr,
):
    """Program (tile, z): tile = row tile * column tiles + column tile of Y, z = matrix * splits +
    split. Sketch mode: out[z] (rows of Y, unit column stride) = A[matrix][:, this split's columns]
    @ Omega[those rows]. WRITE_OMEGA: out[matrix] = Omega as the sketch uses it (A is not read;
    a_ptr only gives its dtype), for the tests; launched with one row tile and one split."""
    tile = tl.program_id(0)
    z = tl.program_id(1)
    column_tiles = (l + BLOCK_L - 1) // BLOCK_L
    tile_n = tile // column_tiles
    tile_l = tile % column_tiles  # fastest: neighbouring programs read the same rows of A
    matrix = z // splits
    split = z % splits

    rows_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tile_l * BLOCK_L + tl.arange(0, BLOCK_L)
    groups_here = tile_l * (BLOCK_L // 4) + tl.arange(0, BLOCK_L // 4)  # counters of this column tile
    rows_k = split * (K_STEPS * BLOCK_K) + tl.arange(0, BLOCK_K)  # rows of Omega = columns of A
    key0 = key_lo.to(tl.uint32, bitcast=True)  # passed as int32 so every seed compiles alike
    key1 = key_hi.to(tl.uint32, bitcast=True)
    first_counter = matrix.to(tl.int64) * m  # the per-matrix offset, in rows of Omega

    a_ptrs = (a_ptr + matrix.to(tl.int64) * stride_ab + rows_n.to(tl.int64)[:, None] * stride_an
              + rows_k.to(tl.int64)[None, :] * stride_am)
    rows_n_ok = rows_n[:, None] < n
    acc = tl.full((BLOCK_N, BLOCK_L), 0.0, tl.float32)

    # Steps past m (the last split's tail) load zeros from A, so their Omega rows add nothing.
    for _step in range(K_STEPS):
        counter = (first_counter + rows_k[:, None]) * groups + groups_here[None, :]  # int64
        c0 = counter.to(tl.uint32)  # low word (truncation)
        c1 = (counter >> 32).to(tl.uint32)
        c2 = c0 * 0
        c3 = c0 * 0
        k0 = key0
        k1 = key1
        for _round in tl.static_range(10):  # Philox4x32-10: the standard multipliers and Weyl key steps
            hi0 = tl.umulhi(c0, 0xD2511F53)
            lo0 = c0 * 0xD2511F53
            hi1 = tl.umulhi(c2, 0xCD9E8D57)
            lo1 = c2 * 0xCD9E8D57
            c0 = hi1 ^ c1 ^ k0
            c1 = lo1
            c2 = hi0 ^ c3 ^ k1
            c3 = lo0
            k0 = k0 + 0x9E3779B9
            k1 = k1 + 0xBB67AE85
        # Box-Muller on (c0, c1) and (c2, c3); uniforms are odd multiples of 2^-24 in (0, 1).
        u0 = ((c0 >> 8) | 1).to(tl.float32) * 5.9604644775390625e-08
        u1 = ((c1 >> 8) | 1).to(tl.float32) * 5.9604644775390625e-08
        u2 = ((c2 >> 8) | 1).to(tl.float32) * 5.9604644775390625e-08
        u3 = ((c3 >> 8) | 1).to(tl.float32) * 5.9604644775390625e-08
        radius01 = tl.sqrt(-2.0 * tl.log(u0))
        radius23 = tl.sqrt(-2.0 * tl.log(u2))
        angle1 = (u1 - 0.5) * 6.283185307179586  # in (-pi, pi), where sin/cos are most accurate
        angle3 = (u3 - 0.5) * 6.283185307179586
        # Columns 4g .. 4g+3 <- (z0, z1, z2, z3): join pairs into [.., 2, 2], then flatten.
        quad = tl.join(tl.join(radius01 * tl.cos(angle1), radius23 * tl.cos(angle3)),
                       tl.join(radius01 * tl.sin(angle1), radius23 * tl.sin(angle3)))
        omega = tl.reshape(quad, (BLOCK_K, BLOCK_L)).to(a_ptr.dtype.element_ty)

        if WRITE_OMEGA:
            omega_ptrs = (out_ptr + matrix.to(tl.int64) * stride_ob
                          + rows_k.to(tl.int64)[:, None] * stride_or + cols[None, :])
            tl.store(omega_ptrs, omega.to(tl.float32), mask=(rows_k[:, None] < m) & (cols[None, :] < l))
        else:
            a_tile = tl.load(a_ptrs, mask=rows_n_ok & (rows_k[None, :] < m), other=0.0)
            if DOT_IN_FP32:
                # The interpreter hands bf16 to numpy as uint16 bit patterns: upcast (exact) first.
                acc = tl.dot(a_tile.to(tl.float32), omega.to(tl.float32), acc)
            else:
                acc = tl.dot(a_tile, omega, acc, input_precision="ieee")
            a_ptrs += BLOCK_K * stride_am
        rows_k += BLOCK_K

    if not WRITE_OMEGA:
        out_ptrs = out_ptr + z.to(tl.int64) * stride_ob + rows_n.to(tl.int64)[:, None] * stride_or + cols[None, :]
        tl.store(out_ptrs, acc, mask=rows_n_ok & (cols[None, :] < l))


# The key changes every call: specializing on its value (== 1, multiple of 16) would only recompile.
_NOT_SPECIALIZED = ("key_lo", "key_hi")


def _kernel(interpret: bool):
    """The kernel for one mode, built on first use (kernels/runtime.py says why)."""
    return runtime.build(_sketch_or_write_omega, interpret, _NOT_SPECIALIZED)


def available(device: torch.device | str) -> bool:
    """Whether the kernel can run on ``device``: triton importable, and a CUDA device, or the CPU
    with TRITON_INTERPRET=1 (Triton's interpreter, for tests)."""
    device = torch.device(device)
    if device.type == "cuda" and runtime.available(device) and not runtime.interpreting():
        return torch.cuda.get_device_capability(device) >= (8, 0)  # bf16 tl.dot needs sm_80+
    return runtime.available(device)


def supports(a: torch.Tensor) -> bool:
    """Whether ``a`` is a tensor this kernel sketches: [n, m] or [B, n, m] of INPUT_DTYPES."""
    return isinstance(a, torch.Tensor) and a.dim() in (2, 3) and a.dtype in INPUT_DTYPES


def _philox_key(seed: int) -> tuple[int, int]:
    """The 64-bit seed (any int, taken mod 2^64) as two words, each passed as a signed int32."""
    seed %= 2**64
    words = (seed & 0xFFFFFFFF, seed >> 32)
    return tuple(w - 2**32 if w >= 2**31 else w for w in words)


def _launch_config(l: int, dtype: torch.dtype, interpreted: bool) -> dict:
    """Tiles and compile options. Interpreted: small tiles, so that the tests' small shapes still
    span several tiles of every kind (the interpreter ignores num_warps and num_stages). tl.dot
    needs every side >= 16."""
    if interpreted:
        return dict(BLOCK_N=32, BLOCK_K=32, BLOCK_L=min(max(16, triton.next_power_of_2(l)), 32),
                    num_warps=1, num_stages=1)
    # The best of a few configurations tried on one H200 (bf16 and fp32, 1 x 4096 x 14336 and
    # 64 x 1536 x 5120, l = 64 and 138): the tallest tile spreads the generator's work over the most
    # rows; 64 columns of Omega and 32 of A per step keep registers in check.
    block_l = min(max(16, triton.next_power_of_2(l)), 64)
    return dict(BLOCK_N=256, BLOCK_K=32, BLOCK_L=block_l, num_warps=8, num_stages=3)


def _k_steps_and_splits(k_tiles: int, programs: int, device: torch.device, k_splits: int | None) -> tuple[int, int]:
    """(K_STEPS, splits): each split covers K_STEPS column tiles of A, K_STEPS a power of two (it
    is a compile-time constant: powers of two bound the number of variants). Without k_splits, on
    a GPU, split until the launch has about two programs per SM, keeping at least 8 steps each
    (each split writes a partial n x l sum)."""
    if k_splits is None:
        k_splits = 1
        if device.type == "cuda" and not runtime.interpreting():
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            k_splits = max(1, min(-(-2 * sms // programs), k_tiles // 8))
    k_steps = triton.next_power_of_2(-(-k_tiles // max(1, min(k_splits, k_tiles))))
    return k_steps, -(-k_tiles // k_steps)


def sketch(a: torch.Tensor, l: int, seed: int, *, k_splits: int | None = None, poison: bool = False) -> torch.Tensor:
    """Y = A @ Omega, fp32: A [n, m] or [B, n, m] -> [n, l] or [B, n, l], on A's device.

    Omega is the m x l Gaussian test matrix of ``seed`` (module docstring), per matrix of the
    batch. k_splits forces the number of programs the columns of A are split over (tests).
    poison=True fills the output with NaN first, so tiles the kernel fails to write show up."""
    if not available(a.device):
        raise RuntimeError(f"sketch: the Triton kernel can't run on {a.device} "
                           "(needs triton, and CUDA, or TRITON_INTERPRET=1 on the CPU)")
    if not supports(a):
        raise ValueError(f"sketch: a must be [n, m] or [B, n, m] of {', '.join(map(str, INPUT_DTYPES))}, "
                         f"got {getattr(a, 'dtype', type(a))} {tuple(getattr(a, 'shape', ()))}")
    if l < 1:
        raise ValueError(f"sketch: l must be >= 1, got {l}")
    a3 = a if a.dim() == 3 else a.unsqueeze(0)
    batch, n, m = a3.shape
    interpreted = runtime.interpreting()
    config = _launch_config(l, a.dtype, interpreted)
    tiles = -(-n // config["BLOCK_N"]) * -(-l // config["BLOCK_L"])
    k_steps, splits = _k_steps_and_splits(max(1, -(-m // config["BLOCK_K"])), batch * tiles, a.device, k_splits)
    if batch * splits > _MAX_GRID_Z:
        raise ValueError(f"sketch: {batch} matrices x {splits} splits exceed the grid's {_MAX_GRID_Z}")
    shape = (batch * splits, n, l)
    partial = runtime.output_buffer(shape, torch.float32, a.device, poison)
    if batch and n:
        if m == 0:
            partial.zero_()  # an empty sum
        else:
            key_lo, key_hi = _philox_key(seed)
            args = (a3, partial, n, m, l, -(-l // VALUES_PER_COUNTER), a3.stride(0), a3.stride(1), a3.stride(2),
                    partial.stride(0), partial.stride(1), key_lo, key_hi, splits)
            runtime.launch(_kernel(interpreted), (tiles, batch * splits), a.device, args, **config,
                           K_STEPS=k_steps, WRITE_OMEGA=False, DOT_IN_FP32=interpreted)
    y = partial if splits == 1 else partial.view(batch, splits, n, l).sum(dim=1)
    return y if a.dim() == 3 else y[0]


def gaussian_test_matrix(batch: int, m: int, l: int, seed: int, dtype: torch.dtype,
                         device: torch.device | str) -> torch.Tensor:
    """Omega [batch, m, l] in fp32, exactly as ``sketch`` multiplies it with A of ``dtype`` (values
    rounded to that dtype), by the same kernel in write mode. For the tests: the sketch never
    stores Omega."""
    device = torch.device(device)
    if not available(device):
        raise RuntimeError(f"gaussian_test_matrix: the Triton kernel can't run on {device}")
    if dtype not in INPUT_DTYPES:
        raise ValueError(f"gaussian_test_matrix: dtype must be one of {INPUT_DTYPES}, got {dtype}")
    omega = torch.full((batch, m, l), float("nan"), dtype=torch.float32, device=device)
    if batch and m and l:
        interpreted = runtime.interpreting()
        config = dict(_launch_config(l, dtype, interpreted), BLOCK_N=16, num_stages=1)  # no rows of A
        dtype_carrier = torch.empty(1, dtype=dtype, device=device)  # a_ptr: only its dtype is read
        key_lo, key_hi = _philox_key(seed)
        args = (dtype_carrier, omega, 0, m, l, -(-l // VALUES_PER_COUNTER), 0, 0, 0,
                omega.stride(0), omega.stride(1), key_lo, key_hi, 1)
        runtime.launch(_kernel(interpreted), (-(-l // config["BLOCK_L"]), batch), device, args, **config,
                       K_STEPS=-(-m // config["BLOCK_K"]), WRITE_OMEGA=True, DOT_IN_FP32=interpreted)
    return omega
