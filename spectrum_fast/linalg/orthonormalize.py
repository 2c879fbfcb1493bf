"""Orthonormal bases of the columns of tall, thin fp32 matrices, batched: Cholesky QR twice in
float64, with Householder QR for the matrices where it cannot run.

Cholesky QR forms G = Y^T Y, factors G = R^T R and takes Q = Y R^-1: two GEMM-like passes and a
c x c factorization, where Householder QR (torch.linalg.qr, geqrf) walks the columns one panel
at a time with small kernels. Its loss of orthogonality grows with cond(Y)^2 u, so the Gram is
formed and solved in float64 (u = 1.1e-16) and the step is taken twice ("CholeskyQR2", Fukaya et
al. 2014): the second pass starts from a basis already orthonormal to ~cond(Y)^2 1e-16 and leaves
it orthonormal to rounding. Its limit is cond(Y) of about 1e8, far beyond the sketches of a
randomized SVD that re-orthonormalizes after every product (their condition is sigma_1 / sigma_l
of the matrix, at most a few thousand for trained weights). A matrix whose Gram is not positive
definite in float64 (rank below c: a zero or rank-deficient input) goes to Householder QR instead,
which returns a basis whatever the rank.
"""

from __future__ import annotations

import torch

from .. import _extension


def orthonormalize(y: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis Q [B, p, c] of the columns of fp32 ``y`` [B, p, c], p >= c; fp32."""
    out, failed = cholesky_qr(y, passes=2)
    if bool(failed.any()):  # waits for the device
        out[failed] = torch.linalg.qr(y[failed])[0]
    return out


def cholesky_qr(y: torch.Tensor, passes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, failed): Cholesky QR ``passes`` times in float64, without waiting for the device.
    ``failed`` [B] (bool, on the device) marks the matrices whose Gram was not positive definite;
    their Q is finite but not orthonormal, and the caller redoes them (orthonormalize: Householder
    QR; a chain of products can check once at its end instead of at every step).
    Two passes: orthonormal to rounding (CholeskyQR2). One pass leaves Q orthonormal to about
    cond(Y)^2 1e-16: enough between the steps of an iteration whose next product starts from it
    (cond(Y) ~ sigma_1 / sigma_c there, tens to thousands), not for a final basis. Each pass forms
    R^-1 (c x c) and applies it by one GEMM, no triangular solve with the tall Y (cuBLAS's batched
    trsm was among the slowest kernels of the H100 profiles, bench/probes/fast_components_h100_04bb809.log)."""
    q = y.to(torch.float64)
    failed = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    eye = torch.eye(y.shape[-1], dtype=torch.float64, device=y.device).expand(y.shape[0], -1, -1)
    for _ in range(passes):
        r_inverse, bad = _inverse_factor(q.mT @ q, eye)
        failed |= bad
        q = q @ r_inverse  # Y R^-1
    return q.to(torch.float32), failed


# Up to LDLT_MAX_COLUMNS columns on CUDA (the extension built), R^-1 comes from the compiled small
# LDL^T (csrc/ldlt_unpivoted.cu) in one launch; else from cuSOLVER's Cholesky and a triangular
# solve. H100, one pass replayed from a graph (bench/probes/cholesky_qr_routes_h100_80b2a13.log):
# 52 against 72 us at c = 26, 77 against 84 at 48 (14336 rows), 159 against 181 at 48 (64 x 1536);
# past 64 columns the kernel's 128 tile is the slower (215 against 144 us at c = 74).
LDLT_KERNEL = True
LDLT_MAX_COLUMNS = 64


def _inverse_factor(gram: torch.Tensor, eye: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R^-1, bad) for float64 Grams [B, c, c] = R^T R; ``bad`` marks those not positive definite,
    whose R^-1 is the identity (Q stays finite, = Y, until the caller redoes them)."""
    ext = _extension.cuda_ops() if LDLT_KERNEL and gram.is_cuda else None
    if (ext is not None and hasattr(ext, "ldlt_unpivoted")
            and gram.shape[-1] <= min(LDLT_MAX_COLUMNS, ext.ldlt_unpivoted_max_size())):
        # G = L diag(d) L^T: R = diag(d)^1/2 L^T, R^-1 = L^-T diag(d)^-1/2. d > 0 fails on NaN too.
        d, l_inv_t = ext.ldlt_unpivoted(gram)
        bad = ~(d > 0).all(-1)
        r_inverse = l_inv_t * d.clamp_min(torch.finfo(d.dtype).tiny).rsqrt().unsqueeze(-2)
        return torch.where(bad[:, None, None], eye, r_inverse), bad
    chol, info = torch.linalg.cholesky_ex(gram)
    bad = info != 0
    chol = torch.where(bad[:, None, None], eye, chol)
    return torch.linalg.solve_triangular(chol.mT, eye, upper=True), bad
