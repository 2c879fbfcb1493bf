"""How many eigenvalues of symmetric matrices lie above a shift, without computing them:
``count_above(g, shift) -> (counts, reliable)``, batched.

Sylvester's law of inertia: a congruence S = L D L^T keeps the number of positive eigenvalues, so
that of G - shift I is the number of positive eigenvalues of D. The factorization goes BLOCK
columns at a time; each diagonal block of the Schur complement at its turn (the pivot block) is
split one of three ways (PIVOT_BLOCK):
- "kernel" (CUDA, the compiled extension): L diag(d) L^T without pivoting and L^-T in one launch,
  one block of threads per matrix (csrc/ldlt_unpivoted.cu); nothing waits, so a count can run
  inside a CUDA graph;
- "lu" (CUDA without the extension): torch's LU without pivoting, which for a symmetric block is
  L diag(d) L^T (U = diag(d) L^T), and L^-T by a triangular solve. torch runs these as cuSOLVER or
  cuBLAS calls looped over the batch at small batches (slow: bench/probes/inertia_routes_h100_*.log)
  and as MAGMA's batched kernels, which synchronize the device, at large ones;
- "eigh" (CPU: torch has no LU without pivoting there): the block's eigendecomposition, whose
  signs give its inertia and whose inverse needs no triangular solve.
No pivoting across blocks: a nearly singular pivot would make the factors grow, so the smallest
|pivot| is checked against the matrix's scale and such matrices come back as not ``reliable``
(the caller solves them another way). In float64 the count is then that of a matrix within
~1e-13 (relative) of G - shift I: exact for any eigenvalue farther from the shift than that.

The work is almost all in one rank-PANEL update of the trailing matrix per panel, one batched
GEMM over the whole trailing square: 2 n^3 / 3 multiply-adds per matrix, twice what its lower
triangle needs, but one launch per panel (the lower triangle in column chunks took more launches
and measured slower on the H100, bench/probes/fast_components_h100_04bb809.log). A panel is
factored BLOCK columns at a time. A rank-32 update moves 8 bytes per 4 flops of the trailing
matrix (memory-bound); a panel of 128 columns makes the updates compute-bound.
"""

from __future__ import annotations

import torch

from .. import _extension

# Pivot blocks of 128 columns, one per panel: fewer, larger pivot-block launches. H100 (torch's LU route)
# (bench/probes/fast_components_h100_cc1a531.log, counts right for all): 0.29 against 0.38 ms per
# 1536 x 1536 Gram (batch 64) with blocks of 32; 4.65 against 9.61 ms per 4096 x 4096 (batch 4).
BLOCK = 128
PANEL = 128
PIVOT_BLOCK = {"cuda": "kernel", "cpu": "eigh"}
# A pivot (a pivot block's eigenvalue or LU pivot) smaller in magnitude than this fraction of the
# matrix's largest diagonal magnitude marks the matrix unreliable (element growth in the factors).
RELIABLE_PIVOT = 1e-10


def count_above(g: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts, reliable) for symmetric ``g`` [B, n, n] (any float dtype; both triangles are read)
    and ``shift`` [B]: counts [B] int64 = #{eigenvalues of g > shift}, reliable [B] bool. Works in
    float64 on a copy; g is not changed."""
    if g.dim() != 3 or g.shape[-1] != g.shape[-2]:
        raise ValueError(f"count_above: g must be [B, n, n], got {tuple(g.shape)}")
    batch, n, _ = g.shape
    s = g.to(torch.float64, copy=True)
    shift = torch.as_tensor(shift, dtype=torch.float64, device=g.device).reshape(batch)
    s.diagonal(dim1=-2, dim2=-1).sub_(shift.unsqueeze(-1))
    scale = s.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(torch.finfo(torch.float64).tiny)
    counts = torch.zeros(batch, dtype=torch.int64, device=g.device)
    smallest = torch.full((batch,), torch.inf, dtype=torch.float64, device=g.device)
    split = _SPLITS[_pivot_route(g.device)]
    for p0 in range(0, n, PANEL):
        p1 = min(p0 + PANEL, n)
        # The panel's eliminated columns below it (x) and their products with the inverse pivot
        # blocks (y): the trailing update is y x^T, once per panel.
        xs, ys = [], []
        for b0 in range(p0, p1, BLOCK):
            b1 = min(b0 + BLOCK, p1)
            pivots, eliminate = split(s[:, b0:b1, b0:b1], scale)
            counts += (pivots > 0).sum(-1)
            smallest = torch.minimum(smallest, pivots.abs().amin(-1))
            if b1 == n:
                break
            x, y = eliminate(s[:, b1:, b0:b1])
            if b1 < p1:  # the rest of this panel now; the trailing matrix once per panel
                s[:, b1:, b1:p1].baddbmm_(y, x[:, : p1 - b1].mT, alpha=-1.0)
            xs.append(x[:, p1 - b1 :])
            ys.append(y[:, p1 - b1 :])
        if p1 < n:
            # One GEMM over the whole trailing square: updating its lower triangle alone, in column
            # chunks, halved the flops but multiplied the launches (H100: slower at 1536 and 4096).
            # One block per panel (the default) needs no copy into a panel buffer.
            x_panel = xs[0] if len(xs) == 1 else torch.cat(xs, -1)
            y_panel = ys[0] if len(ys) == 1 else torch.cat(ys, -1)
            s[:, p1:, p1:].baddbmm_(y_panel, x_panel.mT, alpha=-1.0)
    reliable = torch.isfinite(smallest) & (smallest > RELIABLE_PIVOT * scale)
    return counts, reliable


def _pivot_route(device: torch.device) -> str:
    """PIVOT_BLOCK's route for ``device``; "kernel" falls back to "lu" where the extension lacks it."""
    route = PIVOT_BLOCK.get(device.type, "eigh")
    if route == "kernel":
        ext = _extension.cuda_ops()
        if ext is None or not hasattr(ext, "ldlt_unpivoted") or BLOCK > ext.ldlt_unpivoted_max_size():
            return "lu"
    return route


def _inverse_pivots(d: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """1 / d, with 0 for tiny pivots (the matrix is flagged) so the rest of the batch stays finite."""
    return torch.where(d.abs() > RELIABLE_PIVOT * scale.unsqueeze(-1), 1.0 / d, 0.0)


def _triangular_eliminator(l_inv_t: torch.Tensor, inverse: torch.Tensor):
    """eliminate(C) = (C L^-T, C L^-T diag(1/d)), whose product is C block^-1 C^T for block = L
    diag(d) L^T: L^-T formed once per block and applied to the tall C by one GEMM (H100, against
    a batched triangular solve per C: 3.34 against 3.53 ms per 4096 x 4096 count, 0.210 against
    0.236 ms per 1536 x 1536, bench/probes/inertia_routes_h100_4227733-solve-vs-inverse.log)."""

    def eliminate(c: torch.Tensor):
        x = c @ l_inv_t
        return x, x * inverse.unsqueeze(-2)

    return eliminate


def _split_pivot_block_kernel(block: torch.Tensor, scale: torch.Tensor):
    """(d, eliminate) from the compiled pivot-block LDL^T (csrc/ldlt_unpivoted.cu)."""
    d, l_inv_t = _extension.cuda_ops().ldlt_unpivoted(block)
    return d, _triangular_eliminator(l_inv_t, _inverse_pivots(d, scale))


def _split_pivot_block_lu(block: torch.Tensor, scale: torch.Tensor):
    """(d, eliminate) for block = L diag(d) L^T by LU without pivoting (U = diag(d) L^T). The same
    factorization gives the inertia and the elimination, so the count is that of one congruence
    of a nearby matrix (inverting the block by pivoted LU instead, 4 of 64 DeepSeek-V2-shaped
    Grams were miscounted on the H100 at ce3fedb: the unpivoted pivots' signs and the pivoted
    inverse then describe two different factorizations)."""
    lu, _, _ = torch.linalg.lu_factor_ex(block, pivot=False)
    d = lu.diagonal(dim1=-2, dim2=-1)
    # L^-T: L^T is the upper triangle of LU^T with a unit diagonal.
    eye = torch.eye(block.shape[-1], dtype=block.dtype, device=block.device).expand_as(block)
    l_inv_t = torch.linalg.solve_triangular(lu.mT, eye, upper=True, unitriangular=True)
    return d, _triangular_eliminator(l_inv_t, _inverse_pivots(d, scale))


def _split_pivot_block_eigh(block: torch.Tensor, scale: torch.Tensor):
    """(d, eliminate) for block = V diag(d) V^T (its eigendecomposition): eliminate(C) = (C V,
    C V diag(1/d)), whose product is C block^-1 C^T."""
    evals, evecs = torch.linalg.eigh(torch.nan_to_num(block))
    inverse = _inverse_pivots(evals, scale)

    def eliminate(c: torch.Tensor):
        x = c @ evecs
        return x, x * inverse.unsqueeze(-2)

    return evals, eliminate


_SPLITS = {"kernel": _split_pivot_block_kernel, "lu": _split_pivot_block_lu, "eigh": _split_pivot_block_eigh}
