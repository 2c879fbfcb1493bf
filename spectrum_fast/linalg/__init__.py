"""Numerical linear algebra on GPUs (and CPUs) beyond what the Spectrum scan itself needs.

truncated_svd -> the top-k singular triplets of a matrix or a batch of same-shape matrices
(randomized Halko-Martinsson-Tropp, or Golub-Kahan-Lanczos); linalg/truncated_svd.py says how.
release_graphs -> frees the CUDA graphs truncated_svd keeps for repeated shapes (each holds its
intermediates, and a copy of A where A came at new addresses; linalg/graphs.py), e.g. before
training starts. graphs.ENABLED = False turns them off.
"""

import sys

from .truncated_svd import truncated_svd


def release_graphs() -> None:
    """Drop every CUDA graph truncated_svd holds, and the memory they hold (on the next empty_cache)."""
    sys.modules[f"{__name__}.truncated_svd"]._GRAPHS.clear()  # the module: the attribute is the function


__all__ = ["truncated_svd", "release_graphs"]
