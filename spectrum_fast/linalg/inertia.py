"""How many eigenvalues of symmetric matrices lie above a shift, without computing them:
``count_above(g, shift) -> (counts, reliable)``, batched.

Sylvester's law of inertia: a congruence S = L D L^T keeps the number of positive eigenvalues, so
that of G - shift I is the number of positive eigenvalues of D. The factorization goes BLOCK
columns at a time; each diagonal block of the Schur complement at its turn (the pivot block) is
split one of two ways (PIVOT_BLOCK):
- "eigh": its eigendecomposition, whose signs give the block's inertia and whose inverse needs no
  triangular solve. torch checks eigh's convergence on the host, which waits for the GPU at every
  block;
- "lu" (CUDA only: torch has no LU without pivoting on the CPU): LU without pivoting (cuBLAS's
  batched getrf for small blocks), which for a symmetric block is L diag(d) L^T, so the signs of
  U's diagonal d are its inertia; nothing waits.
No pivoting across blocks: a nearly singular pivot would make the factors grow, so the smallest
|pivot| is checked against the matrix's scale and such matrices come back as not ``reliable``
(the caller solves them another way). In float64 the count is then that of a matrix within
~1e-13 (relative) of G - shift I: exact for any eigenvalue farther from the shift than that.

The work is n^3 / 3 multiply-adds per matrix, almost all in one rank-PANEL update of the trailing
matrix per panel (batched GEMMs); a panel is factored BLOCK columns at a time. A rank-32 update
moves 8 bytes per 4 flops of the trailing matrix (memory-bound); a panel of 128 columns makes the
updates compute-bound.
"""

from __future__ import annotations

import torch

BLOCK = 32
PANEL = 128
PIVOT_BLOCK = {"cuda": "lu", "cpu": "eigh"}
# A diagonal block whose smallest |eigenvalue| is below this fraction of the matrix's largest
# diagonal magnitude marks the matrix unreliable (element growth in the factors).
RELIABLE_PIVOT = 1e-10


def count_above(g: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts, reliable) for symmetric ``g`` [B, n, n] (any float dtype; only its lower triangle
    is read) and ``shift`` [B]: counts [B] int64 = #{eigenvalues of g > shift}, reliable [B] bool.
    Works in float64 on a copy; g is not changed."""
    if g.dim() != 3 or g.shape[-1] != g.shape[-2]:
        raise ValueError(f"count_above: g must be [B, n, n], got {tuple(g.shape)}")
    batch, n, _ = g.shape
    s = g.to(torch.float64, copy=True)
    shift = torch.as_tensor(shift, dtype=torch.float64, device=g.device).reshape(batch)
    s.diagonal(dim1=-2, dim2=-1).sub_(shift.unsqueeze(-1))
    scale = s.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(torch.finfo(torch.float64).tiny)
    counts = torch.zeros(batch, dtype=torch.int64, device=g.device)
    smallest = torch.full((batch,), torch.inf, dtype=torch.float64, device=g.device)
    split = _split_pivot_block_lu if PIVOT_BLOCK.get(g.device.type, "eigh") == "lu" else _split_pivot_block_eigh
    for p0 in range(0, n, PANEL):
        p1 = min(p0 + PANEL, n)
        columns, inverse_pivots = [], []
        for b0 in range(p0, p1, BLOCK):
            b1 = min(b0 + BLOCK, p1)
            pivots, to_columns = split(s[:, b0:b1, b0:b1])
            counts += (pivots > 0).sum(-1)
            smallest = torch.minimum(smallest, pivots.abs().amin(-1))
            if b1 == n:
                break
            # The eliminated columns S[b1:, b0:b1] in the basis that diagonalizes their pivot block.
            x = to_columns(s[:, b1:, b0:b1])
            # Tiny pivots (the matrix is flagged below) contribute nothing instead of overflowing:
            # the factorization of the other matrices in the batch goes on with finite numbers.
            inverse = torch.where(pivots.abs() > RELIABLE_PIVOT * scale.unsqueeze(-1), 1.0 / pivots, 0.0)
            if b1 < p1:  # the rest of this panel now; the trailing matrix once per panel
                rest = s[:, b1:, b1:p1]
                rest.sub_((x * inverse.unsqueeze(-2)) @ x[:, : p1 - b1].mT)
            columns.append(x[:, p1 - b1 :])
            inverse_pivots.append(inverse)
        if p1 < n:
            x = torch.cat(columns, dim=-1)  # [B, n - p1, p1 - p0]
            inverse = torch.cat(inverse_pivots, dim=-1)
            s[:, p1:, p1:].baddbmm_(x * inverse.unsqueeze(-2), x.mT, alpha=-1.0)
    reliable = torch.isfinite(smallest) & (smallest > RELIABLE_PIVOT * scale)
    return counts, reliable


def _split_pivot_block_eigh(block: torch.Tensor):
    """(d, f): the block's eigenvalues d and f(C) = C V for its eigenvectors V (block = V diag(d) V^T)."""
    evals, evecs = torch.linalg.eigh(torch.nan_to_num(block))
    return evals, lambda c: c @ evecs


def _split_pivot_block_lu(block: torch.Tensor):
    """(d, f): block = L diag(d) L^T from LU without pivoting (U = diag(d) L^T) and f(C) = C L^-T."""
    lu, _, _ = torch.linalg.lu_factor_ex(block, pivot=False)
    d = lu.diagonal(dim1=-2, dim2=-1)
    # C L^-T: solve X L^T = C; L^T is the upper triangle of LU^T with a unit diagonal.
    return d, lambda c: torch.linalg.solve_triangular(lu.mT, c, upper=True, left=False, unitriangular=True)
