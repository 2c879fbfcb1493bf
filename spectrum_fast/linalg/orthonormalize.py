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
        chol, info = torch.linalg.cholesky_ex(q.mT @ q)
        failed |= info != 0
        # Failed matrices get an identity factor: Q stays finite (= Y) until the caller redoes them.
        chol = torch.where((info != 0)[:, None, None], eye, chol)
        q = q @ torch.linalg.solve_triangular(chol.mT, eye, upper=True)  # Y R^-1 with R = L^T
    return q.to(torch.float32), failed
