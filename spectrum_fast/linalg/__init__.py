"""Numerical linear algebra on GPUs (and CPUs) beyond what the Spectrum scan itself needs.

truncated_svd -> the top-k singular triplets of a matrix or a batch of same-shape matrices
(randomized Halko-Martinsson-Tropp, or Golub-Kahan-Lanczos); linalg/truncated_svd.py says how.
"""

from .truncated_svd import truncated_svd

__all__ = ["truncated_svd"]
