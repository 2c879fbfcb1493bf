"""Products of a 16-bit matrix with fp32 matrices on tensor cores, to near-fp32 accuracy.

A (bf16) is exact in its format; only the fp32 operand X needs more bits than one bf16 number
holds. Written as a sum of 16-bit parts, X = X_1 + X_2 (+ X_3), each the 16-bit rounding of
what is left, A @ X = sum_i A @ X_i with fp32 accumulation (torch.bmm(..., out_dtype=float32)):
- two parts carry 16 significant bits of bf16 X (8 + 8): about 1.5e-5 of |X| left out, enough for
  the subspace iterations, whose errors the next iteration corrects;
- three parts carry 24 bits, fp32's own: the final projection B = Q^T A, whose singular values
  are the result.
The parts go side by side through one tensor-core GEMM at 16-bit speed (the thin products are
memory-bound: A is read once, not once per part); an fp32 GEMM without TF32 runs at a fraction of
it (H100: DESIGN.md section 3, 758 against 53 TFLOP/s), so three bf16 products still cost less than
one fp32 product. Meant for CUDA; on a CPU the products are emulated in fp32 (for tests).
"""

from __future__ import annotations

import torch


def split_parts(x: torch.Tensor, dtype: torch.dtype, parts: int) -> list[torch.Tensor]:
    """fp32 ``x`` as ``parts`` tensors of ``dtype`` whose fp32 sum approximates it, largest first."""
    out = []
    rest = x
    for i in range(parts):
        head = rest.to(dtype)
        out.append(head)
        if i + 1 < parts:
            rest = rest - head.to(rest.dtype)
    return out


def available(a: torch.Tensor) -> bool:
    """Whether ``a`` can take the split products: bf16 on a CUDA device. Not fp16: its narrow
    exponent range turns the small parts of small entries subnormal (3.4e-5 relative left out with
    two parts or three, measured), so fp16 A takes the fp32 products instead."""
    return a.is_cuda and a.dtype == torch.bfloat16


def _bmm_fp32_out(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x @ y for bf16 operands with fp32 accumulation and output. On a CPU (tests), the same
    products in fp32: bf16 values and their products are exact there, so only the order of the
    fp32 sums differs from the tensor cores'."""
    if x.is_cuda:
        return torch.bmm(x, y, out_dtype=torch.float32)
    return torch.bmm(x.float(), y.float())


def split_bmm(a: torch.Tensor, x: torch.Tensor, parts: int) -> torch.Tensor:
    """a @ x for bf16 ``a`` [B, p, q] and fp32 ``x`` [B, q, c] -> fp32 [B, p, c] (module docstring)."""
    pieces = split_parts(x, a.dtype, parts)
    if len(pieces) == 1:
        return _bmm_fp32_out(a, pieces[0])
    # One GEMM over the parts side by side: the thin products are memory-bound, and this reads a
    # once instead of once per part. The parts' results are then summed largest first.
    c = x.shape[-1]
    y = _bmm_fp32_out(a, torch.cat(pieces, dim=-1))
    out = y[..., :c].clone()
    for i in range(1, len(pieces)):
        out.add_(y[..., i * c : (i + 1) * c])
    return out


def split_bmm_left(x: torch.Tensor, a: torch.Tensor, parts: int) -> torch.Tensor:
    """x @ a for fp32 ``x`` [B, c, p] and bf16 ``a`` [B, p, q] -> fp32 [B, c, q] (a transposed
    view: (a^T x^T)^T, the same products; bmm takes the transposed operands as they are)."""
    return split_bmm(a.mT, x.mT, parts).mT
