"""Spectrum's statistics from the eigenvalues of the Gram, for a batch of matrices at once.

S = sqrt(eigenvalues) (all min(n, m) singular values), then exactly as spectrum.py:
sigma = (q75 - q25) / 1.349 with torch.quantile's linear interpolation, tau = sigma (1 + sqrt(beta)),
beta = min/max, signal = sum S > tau, noise = sum S <= tau (1.0 when empty), snr = signal/noise/max S.
Backends, one chosen per call by snr_statistics: the Triton kernel (spectrum_fast.kernels.stats) for
eigenvalues on a CUDA device when triton is installed, the C++ extension (spectrum_fast._C) on the
CPU when built, plain torch otherwise (any device).

The IQR rule above is the default noise estimator ("spectrum"); snr_statistics(estimator=...) takes
the others of ops.noise_edge (Marchenko-Pastur fits), computed in plain torch float64 on the
eigenvalues' device, with the same tau/signal/noise/snr formulas (snr_table_from_sigma).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from types import ModuleType

import torch

from .. import _extension


@dataclass
class SpectrumStats:
    """Per-matrix statistics; each field is a float64 tensor of shape [B]."""

    sigma_max: torch.Tensor
    sigma: torch.Tensor
    threshold: torch.Tensor
    signal: torch.Tensor
    noise: torch.Tensor
    n_signal: torch.Tensor
    snr: torch.Tensor

    FIELDS = ("sigma_max", "sigma", "threshold", "signal", "noise", "n_signal", "snr")

    @classmethod
    def from_columns(cls, table: torch.Tensor) -> "SpectrumStats":
        return cls(*table.unbind(-1))


def singular_values_from_eigenvalues(eigvals: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues of the Gram -> ascending singular values (float64).

    Tiny negative eigenvalues are rounding of true zeros: clamp them to 0.
    """
    return eigvals.to(torch.float64).clamp_min(0).sqrt()


def _quantile_sorted(s: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(s, q) along the last dim for already ascending ``s`` (same lerp as torch)."""
    k = s.shape[-1]
    rank = torch.tensor(q, dtype=s.dtype) * (k - 1)
    below = int(torch.floor(rank))
    above = int(torch.ceil(rank))
    weight = rank - below
    return torch.lerp(s[..., below], s[..., above], weight.to(s.device))


def threshold_factor(n: int, m: int) -> float:
    """tau / sigma = 1 + sqrt(beta), beta = min(n, m) / max(n, m).

    math.sqrt, not beta**0.5: sqrt is correctly rounded, as in the C++ and Triton backends, while
    libm's pow(beta, 0.5) is one ulp off for about 1 ratio in 1100.
    """
    beta = min(n, m) / max(n, m)
    return 1.0 + math.sqrt(beta)


def iqr_sigma(s: torch.Tensor) -> torch.Tensor:
    """Spectrum's noise scale from ascending singular values [B, k]: (q75 - q25) / 1.349 (the IQR of
    a normal distribution is 1.349 standard deviations)."""
    q25 = _quantile_sorted(s, 0.25)
    q75 = _quantile_sorted(s, 0.75)
    return (q75 - q25) / 1.349


def snr_table_from_sigma(s: torch.Tensor, sigma: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Ascending singular values [B, k] (float64) and a noise scale sigma [B] -> the [B, 7] table
    (columns as SpectrumStats.FIELDS): tau = sigma (1 + sqrt beta) and Spectrum's sums and ratio."""
    tau = sigma * threshold_factor(n, m)
    above = s > tau.unsqueeze(-1)
    signal = torch.where(above, s, 0.0).sum(-1)
    n_signal = above.sum(-1).to(torch.float64)
    n_noise = s.shape[-1] - n_signal
    noise = torch.where(n_noise > 0, torch.where(above, 0.0, s).sum(-1), 1.0)
    sigma_max = s[..., -1]
    snr = torch.where(sigma_max > 0, signal / noise / sigma_max, 0.0)
    return torch.stack([sigma_max, sigma, tau, signal, noise, n_signal, snr], dim=-1)


def snr_statistics_torch(eigvals: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """[B, k] ascending eigenvalues -> [B, 7] float64 table (columns as SpectrumStats.FIELDS)."""
    s = singular_values_from_eigenvalues(eigvals)
    return snr_table_from_sigma(s, iqr_sigma(s), n, m)


@functools.lru_cache(maxsize=None)
def _triton_kernels() -> ModuleType:
    # Imported on first use: the package never needs triton, and this module stays light to import.
    from ..kernels import stats

    return stats


# Set when the Triton kernel failed to build or run here (another triton than the tested 3.6, a
# GPU it cannot compile for): the plain-torch statistics serve from then on, with one warning.
_triton_failed: str | None = None


def snr_statistics(eigvals: torch.Tensor, n: int, m: int, estimator: str = "spectrum") -> SpectrumStats:
    """Statistics of a batch of matrices of shape n x m from their Gram eigenvalues ([B, k], ascending).

    estimator: how sigma is estimated, one of ops.noise_edge.ESTIMATORS. "spectrum" (Spectrum's IQR
    rule) runs the backends below, unchanged; the others run in plain torch float64.
    """
    global _triton_failed
    if estimator != "spectrum":
        return _snr_statistics_other_estimator(eigvals, n, m, estimator)
    eigvals = eigvals.reshape(-1, eigvals.shape[-1])
    device = eigvals.device
    table = None
    if device.type == "cuda" and _triton_failed is None and _triton_kernels().available(device):
        try:
            table = _triton_kernels().snr_statistics_triton(eigvals, n, m)  # one launch, no float64 copy
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any build/launch failure: the torch backend is exact too
            _triton_failed = f"{type(e).__name__}: {e}"
            warnings.warn(f"spectrum_fast: the Triton statistics kernel failed ({_triton_failed.splitlines()[0]}); "
                          f"using plain torch", RuntimeWarning, stacklevel=2)
    if table is None:
        ext = _extension.load() if device.type == "cpu" else None
        if ext is not None:
            table = ext.snr_statistics(eigvals.to(torch.float64).contiguous(), n, m)
        else:
            table = snr_statistics_torch(eigvals, n, m)
    return SpectrumStats.from_columns(table)


def _snr_statistics_other_estimator(eigvals: torch.Tensor, n: int, m: int, estimator: str) -> SpectrumStats:
    # Imported here: noise_edge builds on this module (iqr_sigma, _quantile_sorted, threshold_factor).
    from . import noise_edge

    noise_edge.check_estimator(estimator)
    s = singular_values_from_eigenvalues(eigvals.reshape(-1, eigvals.shape[-1]))
    sigma = noise_edge.estimate_sigma(s, n, m, estimator)
    return SpectrumStats.from_columns(snr_table_from_sigma(s, sigma, n, m))
