"""Triton kernels, one kernel family per file; each has a plain-torch reference that its tests
compare it with (tests/test_kernels_<family>.py).

gram        -> gram_fp32_triton (reference: float64 A @ A^T)
stats       -> snr_statistics_triton (reference: ops.stats.snr_statistics_torch)
bulge       -> band_to_tridiagonal (reference: tests/bulge_chasing_reference.py, LAPACK)
tridiagonal -> tridiagonal_eigvalsh (reference: LAPACK's tridiagonal solver)
sketch      -> sketch, A @ Omega with Omega drawn inside the kernel (reference: float64 A @ Omega
               from gaussian_test_matrix; tests/test_truncated_svd.py)
runtime: how stats, bulge, tridiagonal and sketch are built and launched, compiled or interpreted.

Triton is optional: importing these modules never needs it; ``available(device)`` says whether a
kernel can run (CUDA, or the CPU under TRITON_INTERPRET=1).
"""

from __future__ import annotations
