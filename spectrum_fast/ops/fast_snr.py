"""Spectrum's statistics without a full eigen solve (scan(method="fast")), for a batch of matrices.

Per matrix (n x m, k = min, M = max, beta = k / M), in Spectrum's units (ops.mp_law):
1. The t largest singular values by truncated SVD (linalg.truncated_svd), t from START_VALUES,
   doubled for the matrices whose every found value is still a spike, until one falls below the
   edge or t = k.
2. sigma by "mp-moments" (ops.noise_edge.deflated_moments): the mean squared non-spike singular
   value, from ||W||_F^2 less the spikes' squares; the spikes are the found values above the edge
   sigma (1 + sqrt beta) by a few Tracy-Widom scales, by its fixed point. The same sigma as the
   exact mode's "mp-moments" whenever the spikes are found (t > r).
3. signal = the sum of the found values above the edge tau = sigma (1 + sqrt beta); noise = the MP
   law's expectation for the other k - s values (s of them above tau): the bulk's lowest k - s,
   sigma k times the integral of sqrt(x) f(x) up to the MP quantile (k - s) / k. Not the found
   values below tau: the randomized SVD gives values inside the bulk a few % low (their gaps to
   the next are small), which made the noise sum ~1-2% low against the exact mode.
4. SNR = signal / noise / largest value, as Spectrum.
Matrices with k <= FULL_SPECTRUM_MAX_K, and those that would need more than FULL_SPECTRUM_FRACTION
of their values, take all their values from the Gram, so their rows are the exact mode's
"mp-moments" rows.
"""

from __future__ import annotations

import math

import torch

from ..linalg import truncated_svd
from . import mp_law, noise_edge
from .eigen import eigvalsh
from .gram import gram
from .stats import threshold_factor

# Values found first per matrix; doubled where all are spikes. The randomized SVD's accuracy on the
# values just above the edge sets the fast mode's: trained-looking weights (bench/workloads.py)
# carry a dense run of weak outliers there (768 x 2560: 23 values above the edge, 10 of them within
# 10% of it), which a small sketch finds low and so below the edge. On 3 such matrices (CPU,
# bench/probes/fast_settings_cpu.log): 32 values, oversampling 10, 2 iterations gave SNRs 22-25%
# low (15-16 of the 23 counted); 64, 64 and 6 iterations -1.9% to +1.2%; 96, 96, 3 -5.0% to +1.0%.
START_VALUES = 64
OVERSAMPLE = 64
POWER_ITERS = 6
# At or below this k every value comes from the float64 Gram's eigenvalues.
FULL_SPECTRUM_MAX_K = 64
# Matrices that would need more than this fraction of their values (rank-deficient ones: their
# zero singular values pull sigma down, so hundreds of values clear the edge) get all of them from
# the Gram instead: a truncated SVD that wide costs more than the exact route, and its host-side
# l x l eigen solve grows as l^3 (H100 profile: 134 truncated SVDs for 29 batches, 6 s of host eigh,
# bench/probes/fast_profile_deepseek_h100_4bcf65c.log).
FULL_SPECTRUM_FRACTION = 0.125


def _unfound_noise_per_sigma(k: int, above: torch.Tensor, beta: float) -> torch.Tensor:
    """Expected sum of the k - s smallest singular values of an MP bulk, in units of sigma, for
    s = ``above`` (a tensor of counts): k * int_a^{q((k - s) / k)} sqrt(x) f(x) dx."""
    p = (k - above).to(torch.float64) / k
    x_hi = mp_law.mp_quantile(p.cpu(), beta)
    return (k * mp_law.mp_partial_mean_sqrt(x_hi, beta)).to(above.device)


def _spikes(frob2: torch.Tensor, top: torch.Tensor, k: int, big: int) -> noise_edge.DeflatedMoments:
    """mp-moments from ||W||_F^2 and the top values alone (||W^T W||_F^2 is not formed: NaN)."""
    return noise_edge.deflated_moments(frob2, torch.full_like(frob2, math.nan), top, k, big)


def _table(top: torch.Tensor, found: torch.Tensor, sigma: torch.Tensor, k: int, big: int) -> torch.Tensor:
    """[B, 7] table (ops.SpectrumStats.FIELDS) from the top values (descending, padded with NaN past
    each matrix's ``found``), their counts and sigma (mp-moments, from those values)."""
    beta = k / big
    valid = torch.arange(top.shape[-1], device=top.device) < found.unsqueeze(-1)
    values = torch.where(valid, top, 0.0)
    tau = sigma * threshold_factor(k, big)
    above = valid & (values > tau.unsqueeze(-1))
    signal = torch.where(above, values, 0.0).sum(-1)
    n_above = above.sum(-1)
    n_signal = n_above.to(torch.float64)
    exact = found == k  # every value found: the noise sum is theirs, as in the exact mode
    noise = torch.where(exact, torch.where(valid & ~above, values, 0.0).sum(-1),
                        sigma * _unfound_noise_per_sigma(k, n_above, beta))
    noise = torch.where(n_signal < k, noise, 1.0)  # Spectrum's rule when no value is below the edge
    sigma_max = values[:, 0]
    snr = torch.where(sigma_max > 0, signal / noise / sigma_max, 0.0)
    return torch.stack([sigma_max, sigma, tau, signal, noise, n_signal, snr], dim=-1)


def _full_spectrum(w: torch.Tensor) -> torch.Tensor:
    """All singular values, descending, float64, from the float64 Gram (the exact mode's eigen routes)."""
    eig = eigvalsh(gram(w, "float64"))
    return eig.to(device=w.device, dtype=torch.float64).clamp_min(0).sqrt().flip(-1)


def fast_snr_statistics(w: torch.Tensor, start_values: int | None = None, seed: int | None = None) -> torch.Tensor:
    """[B, n, m] matrices (any float dtype; finite) -> [B, 7] float64 table (ops.SpectrumStats.FIELDS)."""
    b, n, m = w.shape
    k, big = min(n, m), max(n, m)
    frob2 = torch.linalg.vector_norm(w.reshape(b, -1), dim=-1, dtype=torch.float64).square()
    if k <= FULL_SPECTRUM_MAX_K:
        top = _full_spectrum(w)
        return _table(top, torch.full((b,), k, device=w.device), _spikes(frob2, top, k, big).sigma, k, big)
    t = min(k, start_values or START_VALUES)
    top = torch.full((b, k), math.nan, dtype=torch.float64, device=w.device)
    found = torch.zeros(b, dtype=torch.int64, device=w.device)
    sigma = torch.empty_like(frob2)
    todo = torch.arange(b, device=w.device)
    while todo.numel():
        if t > FULL_SPECTRUM_FRACTION * k:
            top[todo] = _full_spectrum(w[todo])
            found[todo] = k
            sigma[todo] = _spikes(frob2[todo], top[todo], k, big).sigma
            break
        _, s, _ = truncated_svd(w[todo], t, method="randomized", oversample=OVERSAMPLE,
                                power_iters=POWER_ITERS, seed=seed)
        top[todo, :t] = s.to(torch.float64)
        found[todo] = t
        spikes = _spikes(frob2[todo], top[todo, :t], k, big)
        sigma[todo] = spikes.sigma  # final for the matrices that leave the loop here
        todo = todo[spikes.saturated]
        t = 2 * t
    return _table(top, found, sigma, k, big)
