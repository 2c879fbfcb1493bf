"""A faithful re-implementation of spectrum.py's per-matrix computation (cognitivecomputations/
spectrum, Apache-2.0), for timing and accuracy comparisons only: float32 weights on the device,
torch.linalg.svdvals (default driver), IQR sigma, MP threshold, signal/noise/max, .item().

``driver`` and ``snr_from_singular_values`` exist so that bench/shapes.py can time other SVD drivers
and the full SVD with Spectrum's own statistics; the defaults are spectrum.py's computation.
"""

from __future__ import annotations

import numpy as np
import torch


def spectrum_snr(weights: torch.Tensor, driver: str | None = None) -> float:
    if weights.ndim < 2:
        weights = weights.unsqueeze(0)
    s = torch.linalg.svdvals(weights, driver=driver)
    n, m = weights.shape[-2:]
    return snr_from_singular_values(s, n, m)


def snr_from_singular_values(s: torch.Tensor, n: int, m: int) -> float:
    """spectrum.py's statistics from the singular values ``s`` (descending) of an n x m matrix."""
    max_singular_value = s[0]
    q75 = torch.quantile(s, 0.75)
    q25 = torch.quantile(s, 0.25)
    sigma_estimated = (q75 - q25) / 1.349
    beta = n / m if n < m else m / n
    mp_threshold = sigma_estimated * np.sqrt((1 + np.sqrt(beta)) ** 2)
    signal = s[s > mp_threshold].sum()
    below = s[s <= mp_threshold]
    noise = below.sum() if below.numel() > 0 else 1.0  # newer spectrum.py; older wrote Infinity
    snr = signal / noise
    return (snr / max_singular_value).item()
