"""Noise-scale estimators for Spectrum's threshold: sigma from a matrix's singular values.

Spectrum thresholds the singular values S of an n x m weight at tau = sigma (1 + sqrt beta),
k = min(n, m), M = max(n, m), beta = k/M. Read as a Marchenko-Pastur (MP) edge, sigma is in
singular-value units: a pure-noise matrix of i.i.d. entries of std s has S_i = sigma sqrt(x_i) with
x ~ MP(beta) (ops.mp_law) and sigma = s sqrt(M), so tau is the bulk's upper edge s (sqrt M + sqrt k).
Every estimator here returns sigma in those units, so snr_statistics keeps its tau formula.

- "spectrum": Spectrum's (q75 - q25) / 1.349 (ops.stats.iqr_sigma, bit for bit). It takes the
  spread of the singular values for their scale, so it comes out low, the more so the narrower the
  MP bulk: 35% of sigma at beta = 1, 79% at beta = 1/8 (bench/noise_estimators.py); pure noise then
  shows signal (a quarter of the values of a square matrix, all of a 1024 x 4096 one).
- "gavish-donoho": median(S) / sqrt(mu_beta), mu_beta the MP median (Gavish & Donoho 2014, "The
  optimal hard threshold for singular values is 4/sqrt(3)": their sigma_hat = y_med / sqrt(M mu_beta),
  times sqrt(M) for these units). Spikes move the median by at most r/2 ranks.
- "mp-fit": the sigma whose MP law is closest, in Kolmogorov-Smirnov distance, to the empirical CDF of
  the lower half of the spectrum (see mp_fit_sigma).
- "mp-moments": sigma^2 = the mean of S^2 over the non-spike values, the spikes (values above the
  edge by a Tracy-Widom margin) found by a fixed point (see deflated_moments). Needs only ||W||_F^2
  and the top singular values (||W^T W||_F^2 too for the bulk's shape check), which a fast mode can
  get without a full spectrum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .mp_law import mp_cdf, mp_median
from .stats import _quantile_sorted, iqr_sigma, threshold_factor

ESTIMATORS = ("spectrum", "gavish-donoho", "mp-fit", "mp-moments")

# mp-fit: the share of the spectrum (from the bottom) that the KS distance looks at. Spikes sit at
# the top, and in trained weights a heavy tail reaches down into the upper half. The CDF's
# sensitivity to sigma, 2 x f(x), peaks at the support's centre 1 + beta, above the median, so a
# larger share is a little more precise on pure noise (0.75: std 0.48% against 0.63% at beta = 1,
# k = 256) but follows the spikes more (bias +0.49% against +0.29% with 3 spikes): the lower half,
# the same part of the spectrum that Gavish-Donoho's median summarizes.
FIT_FRACTION = 0.5
# The fit's search bracket, a factor either side of the Gavish-Donoho estimate (which matches the
# MP median at the top of the fitted range, so the fit lands close to it), and bisection steps on
# log sigma: log(4) 2^-48 ~ 5e-15, float64 resolution.
FIT_BRACKET = 2.0
FIT_STEPS = 48
# mp-moments: a value counts as a spike when it clears the MP edge by TW_MARGIN Tracy-Widom scales
# (spike_edge_factor). At the plain edge, the largest value of pure Gaussian noise is above it in
# about 15% of matrices (P(TW1 > 0); measured 12-17% for k = 128..512): such a value is noise, not
# structure. P(TW1 > 5) is of order 1e-5. The margin is 0.4% of the edge at k = 4096, beta = 1/4.
TW_MARGIN = 5.0
# mp-moments: the spike count only grows along the fixed point (see deflated_moments), so it stops
# after at most (number of top values + 1) steps; the cap only bounds a pathological input.
MAX_MOMENT_ITERATIONS = 64


def check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown noise estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")


def _shape(n: int, m: int) -> tuple[int, int, float]:
    k, big = min(n, m), max(n, m)
    return k, big, k / big


def estimate_sigma(s: torch.Tensor, n: int, m: int, estimator: str) -> torch.Tensor:
    """sigma [B] in Spectrum's units from ascending singular values s [B, k] (k = min(n, m)) of
    n x m matrices; float64, on s's device."""
    check_estimator(estimator)
    k, _, _ = _shape(n, m)
    if s.shape[-1] != k:
        raise ValueError(f"estimate_sigma: {s.shape[-1]} singular values for {n} x {m} matrices (need min(n, m) = {k})")
    s = s.to(torch.float64).reshape(-1, k)
    if estimator == "spectrum":
        return iqr_sigma(s)
    if estimator == "gavish-donoho":
        return gavish_donoho_sigma(s, n, m)
    if estimator == "mp-fit":
        return mp_fit_sigma(s, n, m)
    return sigma_from_moments(*spectrum_moments(s), k, max(n, m))


# -- Gavish-Donoho: the median --------------------------------------------------------------------
def gavish_donoho_sigma(s: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """median(S) / sqrt(mu_beta) for ascending s [B, k]; the median as torch.quantile(0.5) takes it."""
    _, _, beta = _shape(n, m)
    return _quantile_sorted(s, 0.5) / math.sqrt(mp_median(beta))


# -- MP fit: Kolmogorov-Smirnov on the lower part of the spectrum -----------------------------------
def ks_lower(s: torch.Tensor, sigma: torch.Tensor, n: int, m: int,
             fraction: float = FIT_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """The two one-sided KS distances over the lowest round(fraction k) values of ascending s [B, k]
    for a trial sigma [B]: (over, under) = max_i (F(x_i) - (i-1)/k), max_i (i/k - F(x_i)),
    x_i = s_i^2 / sigma^2, F the MP CDF, i = 1.. (the empirical CDF counts all k values, so spikes
    only shift it by r/k). The KS distance is max(over, under)."""
    k, _, beta = _shape(n, m)
    count = max(1, round(fraction * k))
    rank = torch.arange(count, dtype=torch.float64, device=s.device)
    model = mp_cdf(s[:, :count] ** 2 / (sigma**2).unsqueeze(-1), beta)
    over = (model - rank / k).amax(-1)
    under = ((rank + 1) / k - model).amax(-1)
    return over, under


def mp_fit_sigma(s: torch.Tensor, n: int, m: int, fraction: float = FIT_FRACTION) -> torch.Tensor:
    """The sigma minimizing the KS distance of ks_lower, for ascending s [B, k], vectorized over B.

    Each F(s_i^2 / sigma^2) falls as sigma grows, so `over` falls and `under` rises with sigma: the
    KS distance max(over, under) is quasi-convex and least where they cross. Bisection on the sign
    of over - under (on log sigma, within FIT_BRACKET of the Gavish-Donoho estimate) finds that
    crossing, with none of the plateaus (all x outside [a, b]) that would mislead a golden-section
    search on the distance itself. A crossing outside the bracket gives the bracket's end. Matrices
    whose median singular value is 0 (over half the spectrum zero) get sigma = 0, as Gavish-Donoho.
    """
    start = gavish_donoho_sigma(s, n, m)
    usable = start > 0
    start = torch.where(usable, start, 1.0)
    lo = torch.log(start / FIT_BRACKET)
    hi = torch.log(start * FIT_BRACKET)
    for _ in range(FIT_STEPS):
        mid = 0.5 * (lo + hi)
        over, under = ks_lower(s, torch.exp(mid), n, m, fraction)
        too_small = over > under  # the model's CDF sits above the data: x too large, sigma too small
        lo = torch.where(too_small, mid, lo)
        hi = torch.where(too_small, hi, mid)
    return torch.where(usable, torch.exp(0.5 * (lo + hi)), 0.0)


# -- moments with the spikes deflated ---------------------------------------------------------------
@dataclass
class DeflatedMoments:
    """What the fixed point of deflated_moments found, per matrix ([B] tensors, float64 unless said)."""

    sigma: torch.Tensor  # sqrt of the mean S^2 over the non-spike values
    n_spikes: torch.Tensor  # r, int64: top values above sigma spike_edge_factor(k, M, tw_margin)
    second_moment: torch.Tensor  # (k - r) m2_res / m1_res^2; MP: mp_second_moment(k, M); NaN when m1_res = 0
    saturated: torch.Tensor  # bool: every given top value is a spike and fewer than k were given (r may be more)
    iterations: int  # fixed-point steps the batch took


def mp_second_moment(k: int, M: int) -> float:
    """k E[sum x^2] / E[sum x]^2 for (1/M) X X^T, X k x M real Gaussian: 1 + beta + 1/M (Wishart:
    E tr (X X^T)^2 = k M (M + k + 1))."""
    k, big, beta = _shape(k, M)
    return 1.0 + beta + 1.0 / big


def spike_edge_factor(k: int, M: int, tw_margin: float = TW_MARGIN) -> float:
    """Where spikes start, over sigma: (1 + sqrt beta) + tw_margin s_TW, with s_TW the Tracy-Widom
    scale of the largest singular value over sigma, (1/2) M^(-2/3) (1 + beta^(-1/2))^(1/3) (Johnstone
    2001's scale for the largest eigenvalue of X X^T, through the square root)."""
    k, big, beta = _shape(k, M)
    return threshold_factor(k, big) + tw_margin * 0.5 * big ** (-2 / 3) * (1 + beta**-0.5) ** (1 / 3)


def spectrum_moments(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(||W||_F^2, ||W^T W||_F^2, singular values descending) from ascending s [B, k], the inputs of
    deflated_moments that a fast mode would get from W directly."""
    sq = s * s
    return sq.sum(-1), (sq * sq).sum(-1), s.flip(-1)


def deflated_moments(frob2: torch.Tensor, gram_frob2: torch.Tensor, top_s: torch.Tensor, k: int, M: int,
                     tw_margin: float = TW_MARGIN, max_iterations: int = MAX_MOMENT_ITERATIONS) -> DeflatedMoments:
    """Noise scale and bulk shape of k x M matrices (k <= M; the shape's sizes in either order work)
    from m1 = ||W||_F^2 = sum S^2 [B], m2 = ||W^T W||_F^2 = sum S^4 [B] and the largest singular
    values top_s [B, t] (descending, t <= k; t = k for the whole spectrum).

    With r spikes, sigma^2 = (m1 - sum of the r largest S^2) / (k - r (1 + beta)): the MP law has
    mean 1, so in Spectrum's units sigma^2 is the bulk's mean squared singular value, and a spike of
    strength theta shows as S^2 ~ theta^2 + (1 + beta) sigma^2 + beta sigma^4 / theta^2
    (Benaych-Georges & Nadakuditi 2012): taking it out takes (1 + beta) sigma^2 of bulk energy with
    it, not sigma^2. (With k - r instead, sigma came out 0.74% low at k = 160, M = 384 with 6 spikes
    and 0.23% low at 1024 x 4096 with 20; with the correction 0.08% and 0.02% high: a quick check,
    6 matrices each.) The denominator is kept at least (k - r) / 2, where the expansion would not
    hold anyway. r solves
    r = #{top S > sigma(r) e}, iterated from r = 0, with e = spike_edge_factor(k, M, tw_margin): the
    MP edge 1 + sqrt beta plus tw_margin Tracy-Widom scales (tw_margin = 0: the plain edge, where
    pure noise shows a spurious spike in about 15% of matrices). It only grows: a larger r removes
    the largest of the remaining values, so sigma and the edge do not rise, and more values clear it.
    Hence at most t + 1 steps; in practice two or three.
    The bulk's normalized second moment (k - r) m2_res / m1_res^2 is 1 + beta + 1/M for pure
    Gaussian noise (mp_second_moment); far above that, the "bulk" is not MP-like (heavy tails, more
    structure than the top values caught).
    """
    k, big, _ = _shape(k, M)
    top_s = top_s.to(torch.float64).reshape(-1, top_s.shape[-1])
    frob2 = torch.as_tensor(frob2, dtype=torch.float64, device=top_s.device).reshape(-1)
    gram_frob2 = torch.as_tensor(gram_frob2, dtype=torch.float64, device=top_s.device).reshape(-1)
    t = top_s.shape[-1]
    if t > k:
        raise ValueError(f"deflated_moments: {t} top singular values for matrices with k = {k}")
    factor = spike_edge_factor(k, big, tw_margin)
    sq = top_s * top_s
    zero = torch.zeros_like(frob2).unsqueeze(-1)
    head1 = torch.cat([zero, sq.cumsum(-1)], -1)  # [B, t + 1]: sum of the r largest S^2, r = 0..t
    head2 = torch.cat([zero, (sq * sq).cumsum(-1)], -1)
    # r <= k - 1 always (the smallest value never clears an edge above the mean square of a set that
    # holds it); the clamp keeps k - r > 0 also when frob2 and top_s disagree by rounding.
    limit = min(t, k - 1)

    def sigma_for(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m1_res = frob2 - head1.gather(-1, r.unsqueeze(-1)).squeeze(-1)
        return _sigma_of_residual(m1_res, r, k, big), m1_res

    r = torch.zeros(frob2.shape, dtype=torch.int64, device=top_s.device)
    iterations = 0
    while True:
        sigma, m1_res = sigma_for(r)
        if iterations == max_iterations:
            break
        iterations += 1
        r_next = (top_s > (sigma * factor).unsqueeze(-1)).sum(-1).clamp_max(limit)
        if torch.equal(r_next, r):
            break
        r = r_next
    m2_res = gram_frob2 - head2.gather(-1, r.unsqueeze(-1)).squeeze(-1)
    second = torch.where(m1_res > 0, (k - r).to(torch.float64) * m2_res / (m1_res * m1_res), math.nan)
    saturated = (r == t) & (t < k)
    return DeflatedMoments(sigma, r, second, saturated, iterations)


def _sigma_of_residual(m1_res: torch.Tensor, r: torch.Tensor, k: int, big: int) -> torch.Tensor:
    """sigma from the energy left after r spikes: m1_res / (k - r (1 + beta)), the denominator kept
    at least (k - r) / 2 (deflated_moments says why)."""
    count = torch.maximum(k - r.to(torch.float64) * (1.0 + k / big), 0.5 * (k - r).to(torch.float64))
    return torch.sqrt(m1_res.clamp_min(0) / count)


def deflated_sigma(frob2: torch.Tensor, top_s: torch.Tensor, r: torch.Tensor, k: int, M: int) -> torch.Tensor:
    """deflated_moments' sigma for a given number of spikes r [B] (r <= top_s.shape[-1]): the
    fast mode sets r from an exact count (ops.fast_snr) where its values are too close to call."""
    k, big, _ = _shape(k, M)
    sq = top_s.to(torch.float64) ** 2
    head = torch.cat([torch.zeros_like(sq[:, :1]), sq.cumsum(-1)], -1).gather(-1, r.unsqueeze(-1)).squeeze(-1)
    return _sigma_of_residual(torch.as_tensor(frob2, dtype=torch.float64, device=sq.device) - head, r, k, big)


def sigma_from_moments(frob2: torch.Tensor, gram_frob2: torch.Tensor, top_s: torch.Tensor, k: int,
                       M: int, tw_margin: float = TW_MARGIN) -> torch.Tensor:
    """deflated_moments(...).sigma: the "mp-moments" estimate from the moments and the top values
    (the full-spectrum estimator calls this with spectrum_moments(s), so both modes agree)."""
    return deflated_moments(frob2, gram_frob2, top_s, k, M, tw_margin).sigma
