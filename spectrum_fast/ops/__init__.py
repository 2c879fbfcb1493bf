"""One function per operation; backends (torch, Triton, csrc) sit behind each.

gram        -> ops.gram.gram
eigenvalues -> ops.eigen.eigvalsh
statistics  -> ops.stats.snr_statistics
"""

from .eigen import eigvalsh
from .gram import gram
from .stats import SpectrumStats, snr_statistics

__all__ = ["gram", "eigvalsh", "snr_statistics", "SpectrumStats"]
