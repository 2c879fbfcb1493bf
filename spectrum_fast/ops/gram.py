"""Gram matrix of the smaller side of a weight, never rounded to the input's precision.

The singular values of W are the square roots of the eigenvalues of W W^T (or W^T W, the smaller).
Two precisions:
- "float64" (default, exact): the input is upcast in chunks along the long side and multiplied in
  float64. bf16 x bf16 products are exact in float64 and the sum rounds at 1e-16, so the SNR
  matches a float64 SVD to ~1e-14 even for weights whose largest singular value is 400x the noise
  edge (bench/probes/precision_and_speed.log: on the H100, fp32 Gram + fp32 solve was off by up to 42%
  there, and fp32 Gram + float64 solve by up to 11%).
- "float32": fp32 accumulation and fp32 output (torch.mm(..., out_dtype=float32) for bf16/fp16 on
  CUDA), TF32 off. Much faster GEMM on the H100, but its error grows with the spikes (6e-5 at
  spike scale 8, tens of percent at 400).
  Backends of the float32 path: torch.mm, or the Triton kernel spectrum_fast.kernels.gram (one
  triangle of tiles: half the flops) where _TRITON_GRAM_MIN_K enables it.
"""

from __future__ import annotations

import contextlib

import torch

# Upcast at most this many bytes of the input at once (float64 chunk along the long side).
_CHUNK_BYTES = 128 << 20

# float32 path on CUDA: input dtype -> smallest short side k from which the Triton triangle
# kernel replaces torch.mm; None = never. From bench/results/kernels_gram_h100_c97e6f6.log (H100):
# against the torch.mm loop, bf16 was 1.17-1.84x faster for k = 1536, 4096 and 8192 in both
# layouts (only 1.14x at k = 1024, where a batched torch.bmm was 1.8x); fp32 1.02-1.88x for
# k >= 1536 but 0.68x at k = 1024 (contiguous). Yet a whole float32 scan of the Llama-3-8B shapes
# with it on took 21.5 s against 16.8-18.1 s with torch.mm (bench/results/
# gpu_scan_vs_spectrum_h100_bdf1d4a.log): the kernel autotunes 5 configs per shape and layout on
# first use, inside the scan. kernels/gram.py now launches the configs autotuning chose there
# directly on sm_90; off until a whole scan with that is measured. fp16 was not measured.
_TRITON_GRAM_MIN_K: dict[torch.dtype, int | None] = {
    torch.bfloat16: None,
    torch.float16: None,
    torch.float32: None,
}


@contextlib.contextmanager
def _full_fp32_matmul():
    """TF32 would round fp32 products to 10 mantissa bits: force it off while forming Grams."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _short_side_first(w: torch.Tensor) -> torch.Tensor:
    """[..., n, m] -> [..., k, L] with k = min(n, m): the Gram is then A @ A^T."""
    return w if w.shape[-2] <= w.shape[-1] else w.mT


def gram(w: torch.Tensor, precision: str = "float64") -> torch.Tensor:
    """Gram of the smaller side of ``w`` ([n, m] or [B, n, m]) -> [..., k, k], k = min(n, m)."""
    a = _short_side_first(w)
    if precision == "float64":
        return _gram_fp64_chunked(a)
    if precision == "float32":
        return _gram_fp32(a)
    raise ValueError(f"precision must be 'float64' or 'float32', not {precision!r}")


# float64 Grams by the 2 x 2 block triangle (_accumulate_triangle), per device type. H200 (the
# same run, bench/probes/gram_f64_h200_1effe4b-wt3.log): 1536 x 5120 bf16 0.383 against 0.428 ms per matrix
# with one product, 4096 x 14336 6.18 against 7.89 ms. Not measured on a CPU: off there.
BLOCK_TRIANGLE = {"cuda": True, "cpu": False}


def _gram_fp64_chunked(a: torch.Tensor) -> torch.Tensor:
    """float64 Gram of ``a`` ([k, L] or [B, k, L]) with at most _CHUNK_BYTES of float64 input alive.

    Whole matrices per chunk where one fits (DeepSeek-V2's 1536 x 5120 experts: two), so each
    product runs the full depth L and writes its output once; chunking a batch along L instead
    made products as shallow as 240 columns, each re-reading and re-writing the batch's Grams
    (H200, bench/probes/gram_f64_h200_1effe4b-wt4.log: 0.649 against 0.431 ms per 1536 x 5120
    matrix). A matrix bigger than a chunk is done alone, in slices along L."""
    k = a.shape[-2]
    batched = a if a.dim() == 3 else a.unsqueeze(0)
    triangle = BLOCK_TRIANGLE.get(a.device.type, False) and k >= 2
    accumulate = _accumulate_triangle if triangle else (lambda out, c: out.baddbmm_(c, c.mT))
    # Accumulated in place, from zeros: baddbmm also where one chunk covers all of L, since batched
    # matmul with a transposed operand took 2-4x longer on a CPU (MKL, torch 2.13: 256x1024 in
    # 10.9 ms against 2.5 ms for baddbmm).
    out = torch.zeros(batched.shape[0], k, k, dtype=torch.float64, device=a.device)
    for matrices, _, chunk in upcast_blocks(batched, torch.float64, _CHUNK_BYTES):
        accumulate(out[matrices], chunk)
        del chunk  # else the next chunk is allocated while this one is still held: two at once
    if triangle:
        h = k // 2
        out[:, :h, h:] = out[:, h:, :h].mT  # the block left out: exactly symmetric
    return out if a.dim() == 3 else out[0]


def upcast_blocks(a: torch.Tensor, dtype: torch.dtype, chunk_bytes: int):
    """Yield (matrices, columns, block) with block = a[matrices][:, :, columns] converted to
    ``dtype``, covering [B, n, m] ``a`` with at most ``chunk_bytes`` per block: whole matrices where
    one fits, else one matrix at a time in slices of its columns (a single matrix bigger than
    chunk_bytes). A caller that drops each block (del) before asking for the next holds one at a time."""
    batch, n, m = a.shape
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_matrix = max(1, n * m * itemsize)
    if per_matrix <= chunk_bytes:
        group = chunk_bytes // per_matrix
        for first in range(0, batch, group):
            yield slice(first, first + group), slice(None), a[first : first + group].to(dtype)
        return
    width = max(1, chunk_bytes // (n * itemsize))
    for i in range(batch):
        for first in range(0, m, width):
            columns = slice(first, first + width)
            yield slice(i, i + 1), columns, a[i : i + 1, :, columns].to(dtype)


def _accumulate_triangle(out: torch.Tensor, c: torch.Tensor) -> None:
    """out += c c^T ([B, k, k], [B, k, L]) on and below the block diagonal of a 2 x 2 split: three
    products of half the rows (75% of the flops); the block above is the caller's to mirror."""
    h = c.shape[-2] // 2
    top, bottom = c[:, :h], c[:, h:]
    out[:, :h, :h].baddbmm_(top, top.mT)
    out[:, h:, :h].baddbmm_(bottom, top.mT)
    out[:, h:, h:].baddbmm_(bottom, bottom.mT)


def _use_triton_gram(a: torch.Tensor) -> bool:
    """Whether the float32 Gram of ``a`` ([k, L] or [B, k, L]) goes to the Triton kernel."""
    min_k = _TRITON_GRAM_MIN_K.get(a.dtype)
    if min_k is None or not a.is_cuda or a.shape[-2] < min_k:
        return False
    try:  # imported here, on first use: triton is optional
        from ..kernels import gram as triton_gram
    except ImportError:
        return False
    return triton_gram.available(a.device) and triton_gram.supports(a)


def _gram_fp32(a: torch.Tensor) -> torch.Tensor:
    if _use_triton_gram(a):
        from ..kernels.gram import gram_fp32_triton

        # No NaN fill of the output here: the kernel tests (poisoned output) show every tile is
        # written, and the fill is a k x k write per matrix that torch.mm does not pay either.
        return gram_fp32_triton(a, poison=False)
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16):
        if a.dim() == 2:
            return torch.mm(a, a.mT, out_dtype=torch.float32)
        return torch.bmm(a, a.mT, out_dtype=torch.float32)
    with _full_fp32_matmul():
        a32 = a.to(torch.float32)
        return a32 @ a32.mT
