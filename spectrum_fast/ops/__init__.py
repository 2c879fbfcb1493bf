"""One function per operation; backends (torch, Triton, csrc) sit behind each.

gram        -> ops.gram.gram
eigenvalues -> ops.eigen.eigvalsh / eigvalsh_deferred (routes: syevd, two_stage)
statistics  -> ops.stats.snr_statistics
"""

from . import band_eigen
from .eigen import ROUTES, PendingEigenvalues, eigvalsh, eigvalsh_deferred
from .gram import gram
from .stats import SpectrumStats, singular_values_from_eigenvalues, snr_statistics

__all__ = ["ROUTES", "gram", "eigvalsh", "eigvalsh_deferred", "PendingEigenvalues", "band_eigen", "snr_statistics", "SpectrumStats",
           "singular_values_from_eigenvalues"]
