"""Gram G = A A^T of a batch A [B, k, L] (bf16, fp16 or fp32) in fp32, one triangle of tiles.

Why a kernel: torch.mm computes all k x k outputs, but G is symmetric, so half of its tiles are
redundant. Here each program computes one BLOCK x BLOCK tile (i, j) with i >= j of one matrix
and writes it twice (G[i, j] and, transposed, G[j, i]): about half the flops of a full GEMM.

Precision (DESIGN.md, "Precision traps"): products of bf16/fp16 values are exact in fp32 and the
dot accumulates in fp32; fp32 inputs use input_precision="ieee", never TF32; the output is fp32,
never the input's dtype.

Under TRITON_INTERPRET=1 (set before triton is imported: see tests/test_kernels_gram.py) the
kernel runs on CPU tensors through triton's interpreter, with one small config: autotuning there
would only time numpy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

from . import runtime

_INTERPRETED = bool(knobs.runtime.interpret)  # fixed at import, as triton.jit decides it then

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_INT32_LIMIT = 2**31 - 1

# Square tiles (the triangle is made of whole tiles). GROUP = tile rows per band of the launch
# order (see _lower_tile). H100: 228 KB shared memory per SM; a 128x128x64 bf16 stage is 32 KB.
# fp32 inputs double that; configs that do not fit are dropped by the autotuner (OutOfResources).
_H100_CONFIGS = [
    triton.Config({"BLOCK": 128, "BLOCK_L": 64, "GROUP": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK": 128, "BLOCK_L": 64, "GROUP": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK": 128, "BLOCK_L": 32, "GROUP": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK": 64, "BLOCK_L": 64, "GROUP": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK": 64, "BLOCK_L": 32, "GROUP": 8}, num_warps=4, num_stages=3),
]
# Interpreter (tests): the interpreter's cost is per program, so tiles not much smaller than the
# test shapes, and a small band so that k = 100 spans two bands, the last one partial.
_INTERPRETER_CONFIG = triton.Config({"BLOCK": 32, "BLOCK_L": 64, "GROUP": 3}, num_warps=1, num_stages=1)


@triton.jit
def _triangle_row(t):
    """Largest r with r (r + 1) / 2 <= t: the row of tile t in row-major order of a lower triangle."""
    r = ((tl.sqrt((8 * t + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)
    # fp32 sqrt (possibly approximate on the GPU) can put the floor one off either way: correct it.
    r = tl.where((r + 1) * (r + 2) // 2 <= t, r + 1, r)
    r = tl.where(r * (r + 1) // 2 > t, r - 1, r)
    return r


@triton.jit
def _lower_tile(t, num_tile_rows, GROUP: tl.constexpr):
    """Program t -> tile (i, j), i >= j, of a lower triangle of num_tile_rows tile rows.

    Plain row-major order would have the programs running at once (one wave) read a few row
    panels i but every column panel j. Instead: bands of GROUP tile rows; in a band, first the
    rectangle left of its diagonal block, column by column (GROUP tiles sharing one column panel
    run together), then the band's small diagonal triangle. A wave then touches ~GROUP row panels
    plus wave/GROUP column panels, as in the grouped ordering of a plain GEMM.
    """
    start = (_triangle_row(t) // GROUP) * GROUP  # first tile row of t's band
    height = tl.minimum(GROUP, num_tile_rows - start)  # the last band may be short
    u = t - start * (start + 1) // 2  # index of t inside its band
    rect = height * start  # tiles left of the band's diagonal block
    in_rect = u < rect
    v = tl.maximum(u - rect, 0)  # index inside the diagonal triangle (clamped: unused when in_rect)
    r = _triangle_row(v)
    i = tl.where(in_rect, start + u % height, start + r)
    j = tl.where(in_rect, u // height, start + v - r * (r + 1) // 2)
    return i, j


@triton.jit
def _load_tile(ptrs, rows_ok, cols_ok, EVEN_ROWS: tl.constexpr, EVEN_COLS: tl.constexpr):
    """Load with only the masks the shape needs (zeros past k or L: they add nothing to a dot)."""
    if EVEN_ROWS and EVEN_COLS:
        tile = tl.load(ptrs)
    elif EVEN_ROWS:
        tile = tl.load(ptrs, mask=cols_ok, other=0.0)
    elif EVEN_COLS:
        tile = tl.load(ptrs, mask=rows_ok, other=0.0)
    else:
        tile = tl.load(ptrs, mask=rows_ok & cols_ok, other=0.0)
    return tile


@triton.jit
def _gram_lower_tiles_kernel(
    a_ptr, g_ptr,
    k, L,
    stride_ab, stride_ak, stride_al,
    stride_gb, stride_gk,
    BLOCK: tl.constexpr, BLOCK_L: tl.constexpr, GROUP: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_L: tl.constexpr, BF16_AS_FP32: tl.constexpr,
):
    # tile counts follow BLOCK, which the autotuner picks: derive them here, not in the caller
    num_tile_rows = tl.cdiv(k, BLOCK)
    tiles_per_matrix = num_tile_rows * (num_tile_rows + 1) // 2
    pid = tl.program_id(0)
    batch = pid // tiles_per_matrix  # consecutive programs work on the same matrix
    ti, tj = _lower_tile(pid % tiles_per_matrix, num_tile_rows, GROUP)

    offs = tl.arange(0, BLOCK)
    rows_i = ti * BLOCK + offs
    rows_j = tj * BLOCK + offs
    offs_l = tl.arange(0, BLOCK_L)
    a = a_ptr + batch.to(tl.int64) * stride_ab
    # Strides equal to 1 are specialized by triton, so either layout (a transposed view has
    # stride_al != 1) is read in place and coalesced. Rows past k are masked, not wrapped with
    # (r % k): a modulo would hide from triton that the rows of a transposed view are contiguous.
    x_ptrs = a + rows_i[:, None] * stride_ak + offs_l[None, :] * stride_al  # [BLOCK, BLOCK_L]
    y_ptrs = a + rows_j[None, :] * stride_ak + offs_l[:, None] * stride_al  # [BLOCK_L, BLOCK]
    x_rows_ok = rows_i[:, None] < k
    y_rows_ok = rows_j[None, :] < k

    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for step in range(0, tl.cdiv(L, BLOCK_L)):
        l_left = L - step * BLOCK_L
        x = _load_tile(x_ptrs, x_rows_ok, offs_l[None, :] < l_left, EVEN_K, EVEN_L)
        y = _load_tile(y_ptrs, y_rows_ok, offs_l[:, None] < l_left, EVEN_K, EVEN_L)
        if BF16_AS_FP32:  # interpreter only: see _bf16_as_fp32
            x = x.to(tl.float32)
            y = y.to(tl.float32)
        # "ieee": full fp32 products for fp32 inputs (tf32 would keep 10 mantissa bits); bf16 and
        # fp16 products are exact anyway. Accumulation is fp32 in both cases.
        acc = tl.dot(x, y, acc, input_precision="ieee")
        x_ptrs += BLOCK_L * stride_al
        y_ptrs += BLOCK_L * stride_al

    # Mirror in this kernel, not in a second pass: the extra store of the transposed tile costs
    # one tile write, while a second pass would re-read half of G, write it again and need
    # another launch. On a diagonal tile (i == j) the first store keeps only r >= c and the
    # transposed store fills r < c from the same values, so G == G^T bitwise by construction
    # (the MMA need not give G[r, c] and G[c, r] the same rounding).
    g = g_ptr + batch.to(tl.int64) * stride_gb
    lower = (rows_i[:, None] >= rows_j[None, :]) & (rows_i[:, None] < k)  # rows_j <= rows_i < k
    tl.store(g + rows_i[:, None] * stride_gk + rows_j[None, :], acc, mask=lower)
    upper = (rows_j[:, None] < rows_i[None, :]) & (rows_i[None, :] < k)
    tl.store(g + rows_j[:, None] * stride_gk + rows_i[None, :], tl.trans(acc), mask=upper)


# The config the autotuner chose on the H100 (bench/results/kernels_gram_h100_c97e6f6.log) depended
# only on the input dtype and layout, across k = 1024..8192 and L = 4096..28672 (one exception:
# 8 x 1024 x 4096 fp32 contiguous took BLOCK_L 64 with 8 warps). On sm_90 these launch directly:
# autotuning 5 configs per new shape inside a scan cost more than the kernel saved.
# (dtype, layout) -> config; layout "rows" = L contiguous, "columns" = a transposed view.
_SM90_CONFIGS = {
    (torch.bfloat16, "rows"): dict(BLOCK=128, BLOCK_L=64, GROUP=8, num_warps=8, num_stages=3),
    (torch.bfloat16, "columns"): dict(BLOCK=128, BLOCK_L=32, GROUP=8, num_warps=4, num_stages=4),
    (torch.float32, "rows"): dict(BLOCK=128, BLOCK_L=32, GROUP=8, num_warps=4, num_stages=4),
    (torch.float32, "columns"): dict(BLOCK=64, BLOCK_L=32, GROUP=8, num_warps=4, num_stages=3),
}


def _measured_config(a: torch.Tensor) -> dict | None:
    """The fixed launch config for ``a`` ([B, k, L]) on an sm_90 GPU, or None (autotune)."""
    if _INTERPRETED or not a.is_cuda or torch.cuda.get_device_capability(a.device) != (9, 0):
        return None
    layout = "rows" if a.stride(2) == 1 else "columns" if a.stride(1) == 1 else None
    config = _SM90_CONFIGS.get((a.dtype, layout))
    return dict(config) if config is not None else None


def _bf16_as_fp32(dtype: torch.dtype) -> bool:
    """triton 3.6's interpreter keeps bf16 as uint16 bit patterns and hands them to numpy.matmul
    as integers (garbage Grams). There, upcast the loaded tiles: bf16 -> fp32 is exact and the
    fp32 dot computes the same exact products, so the math is unchanged. Compiled: never."""
    return _INTERPRETED and dtype == torch.bfloat16


_gram_autotuned = triton.autotune(
    configs=[_INTERPRETER_CONFIG] if _INTERPRETED else _H100_CONFIGS,
    # the autotuner adds the tensors' dtypes to the key; stride_al tells a transposed view apart
    key=["k", "L", "stride_al"],
)(triton.heuristics({
    "EVEN_K": lambda args: args["k"] % args["BLOCK"] == 0,
    "EVEN_L": lambda args: args["L"] % args["BLOCK_L"] == 0,
    "BF16_AS_FP32": lambda args: _bf16_as_fp32(args["a_ptr"].dtype),
})(_gram_lower_tiles_kernel))


def available(device: torch.device | str) -> bool:
    """Whether gram_fp32_triton can run on tensors of this device in this process."""
    device = torch.device(device)
    if device.type == "cpu":
        return _INTERPRETED
    if device.type == "cuda":
        # bf16 tl.dot needs sm_80+; under the interpreter CUDA tensors would go through numpy.
        return not _INTERPRETED and torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    return False


def supports(a: torch.Tensor) -> bool:
    """Shape, dtype and index range this kernel handles (offsets within one matrix are int32)."""
    if a.dim() not in (2, 3) or a.dtype not in _DTYPES:
        return False
    k, length = a.shape[-2], a.shape[-1]
    stride_k, stride_l = a.stride()[-2], a.stride()[-1]
    # the farthest offset a program forms, counting the masked lanes of the last tiles past k and L
    farthest = (k + 256) * stride_k + (length + 256) * stride_l
    return farthest <= _INT32_LIMIT and (k + 256) * k <= _INT32_LIMIT


def gram_fp32_triton(a: torch.Tensor, *, poison: bool = True) -> torch.Tensor:
    """A [B, k, L] or [k, L] (bf16/fp16/fp32, any strides) -> A A^T, fp32, [B, k, k] or [k, k].

    poison=True allocates the output filled with NaN, so a tile the kernel failed to write shows
    up (the tests rely on it); it costs one extra write of the output, which ops.gram skips.
    """
    if not isinstance(a, torch.Tensor) or a.dim() not in (2, 3):
        raise ValueError(f"gram_fp32_triton wants a [B, k, L] or [k, L] tensor, got {getattr(a, 'shape', type(a))}")
    if a.dtype not in _DTYPES:
        raise ValueError(f"gram_fp32_triton wants bfloat16, float16 or float32, got {a.dtype}")
    if not available(a.device):
        raise RuntimeError(f"the Triton Gram kernel cannot run on {a.device} here "
                           f"(TRITON_INTERPRET={'1' if _INTERPRETED else 'unset'}; CUDA sm_80+ or the interpreter on CPU)")
    if not supports(a):
        raise ValueError(f"shape {tuple(a.shape)} with strides {a.stride()} exceeds the kernel's int32 offsets")
    batched = a.dim() == 3
    a3 = a if batched else a.unsqueeze(0)
    batch, k, length = a3.shape
    shape = (batch, k, k)
    out = runtime.output_buffer(shape, torch.float32, a.device, poison)
    if batch and k:
        if length == 0:
            out.zero_()  # an empty sum: the loop would not run, but say it here rather than rely on it
        elif (config := _measured_config(a3)) is not None:
            _launch(a3, out, _gram_lower_tiles_kernel, **config)
        else:
            _launch(a3, out, _gram_autotuned)
    return out if batched else out[0]


def _lower_tile_count(k: int, block: int) -> int:
    rows = triton.cdiv(k, block)
    return rows * (rows + 1) // 2


def _launch(a: torch.Tensor, out: torch.Tensor, kernel, **config) -> None:
    """Run `kernel`: the autotuned one, or (tests) the raw kernel with an explicit config."""
    batch, k, length = a.shape
    args = (a, out, k, length, a.stride(0), a.stride(1), a.stride(2), out.stride(0), out.stride(1))
    if not config:
        kernel[lambda meta: (batch * _lower_tile_count(k, meta["BLOCK"]),)](*args)
        return
    num_warps = config.pop("num_warps", 4)
    num_stages = config.pop("num_stages", 2)
    config.setdefault("EVEN_K", k % config["BLOCK"] == 0)
    config.setdefault("EVEN_L", length % config["BLOCK_L"] == 0)
    config.setdefault("BF16_AS_FP32", _bf16_as_fp32(a.dtype))
    kernel[(batch * _lower_tile_count(k, config["BLOCK"]),)](*args, **config, num_warps=num_warps,
                                                             num_stages=num_stages)
