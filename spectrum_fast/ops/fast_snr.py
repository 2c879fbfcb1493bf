"""Spectrum's statistics without a full eigen solve (scan(method="fast")), for a batch of matrices.

Per matrix (n x m, k = min, M = max, beta = k / M), in Spectrum's units (ops.mp_law), from the fp32
Gram G (k x k, one bf16 tensor-core product with fp32 accumulation on a GPU):
1. The t largest eigenvalues of G by subspace iteration (ITERATIONS products with G rounded to
   bf16 on tensor cores, Cholesky QR in float64 after each), then Rayleigh-Ritz
   with the fp32 G; singular values are their square roots. t from START_VALUES, doubled for the
   matrices whose every found value is still a spike or that have more values above the edge
   than were found.
2. sigma by "mp-moments" (ops.noise_edge.deflated_moments): the mean squared non-spike singular
   value, from ||W||_F^2 less the spikes' squares; the spikes are the found values above the edge
   sigma (1 + sqrt beta) by a few Tracy-Widom scales, by its fixed point; where a found value lies
   within SPIKE_EDGE_BAND of that edge, the number of spikes comes from an exact count there
   (_settle_spike_count). The same sigma as the exact mode's "mp-moments" whenever the spikes are
   found (t > r).
3. The count s of singular values above the edge tau = sigma (1 + sqrt beta) exactly, from the
   inertia of G - tau^2 I (linalg.inertia: a block LDL^T in float64, no eigenvalue computed),
   not from the found values: trained-looking weights carry a dense run of weak outliers just
   above the edge, a few 1e-4 apart, and a value found 1e-3 low drops out of the count, which
   Spectrum's ratio hinges on (bench/probes/fast_noise_model_cpu_61ab227.log: exact values with
   the MP noise model give SNRs 0.25-0.95% from the exact mode's and rank them identically;
   values up to 1e-3 low, Spearman 0.93-0.99; up to 3e-3 low, 0.86-0.94).
4. signal = the sum of the s largest found values (their errors, ~1e-3 of a value near the
   edge, move the sum little); noise = the MP law's expectation for the other k - s values: the
   bulk's lowest k - s, sigma k times the integral of sqrt(x) f(x) up to the MP quantile
   (k - s) / k.
5. SNR = signal / noise / largest value, as Spectrum.
Matrices with k <= FULL_SPECTRUM_MAX_K, those that would need more than FULL_SPECTRUM_FRACTION of
their values, and those whose inertia count is not reliable (a nearly singular pivot block) or
whose iteration broke down (a Gram of rank below the sketch's width) take all their values from
the float64 Gram, so their rows are the exact mode's "mp-moments" rows. Matrices with more than
MAX_VALUES spikes or values above the edge (far from the model: rank-deficient ones, whose zero
singular values pull sigma down) keep MAX_VALUES values, sigma deflated by those, the exact count,
and an estimate of the unfound values above the edge (_unfound_signal): estimates further off.
"""

from __future__ import annotations

import math

import torch

from ..host_threads import one_torch_thread
from ..linalg import split_products
from ..linalg.inertia import count_above
from ..linalg.orthonormalize import cholesky_qr
from . import mp_law, noise_edge
from .eigen import eigvalsh
from .gram import _full_fp32_matmul, gram
from .stats import threshold_factor

# Values found first per matrix, the sketch's extra columns and the products with G. Their accuracy
# only needs to serve the sum of the values above the edge and sigma's spikes (the count is exact).
START_VALUES = 32
OVERSAMPLE = 16
ITERATIONS = 16
# At or below this k every value comes from the float64 Gram's eigenvalues.
FULL_SPECTRUM_MAX_K = 64
# Matrices that would need more than this fraction of their values (rank-deficient ones: their
# zero singular values pull sigma down, so hundreds of values clear the edge) get all of them from
# the Gram instead: a sketch that wide costs more than the exact route.
FULL_SPECTRUM_FRACTION = 0.125
# Values found at most (START_VALUES doubled up to this). Matrices with more spikes than this, or
# more values above the edge, keep the values found and the exact count: sigma is then deflated by
# these spikes only and the unfound values above the edge are estimated (_unfound_signal).
MAX_VALUES = 128
# Found values this close (relative) to sigma's spike edge have r checked by an exact count
# (_settle_spike_count); at most SPIKE_CHECKS counts.
SPIKE_EDGE_BAND = 1e-2
SPIKE_CHECKS = 2


# (k, s, beta) -> the MP bulk's expected sums below its quantile (k - s) / k (_bulk_below).
_BULK_BELOW: dict[tuple[int, int, float], tuple[float, float]] = {}


def _bulk_below(k: int, counts: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For each count s: (k int_a^{q} sqrt(x) f(x) dx, k int_a^{q} x f(x) dx) with q the MP quantile
    (k - s) / k: the expected sum of the k - s smallest singular values of an MP bulk, in units of
    sigma, and of their squares, in sigma^2. Cached per (k, s, beta): the quantile's bisection cost
    ~4 ms a call on the H100's host (bench/probes/fast_profile at 689b352), and a shape's counts
    repeat from batch to batch; the missing ones are computed in one vectorized call."""
    wanted = [int(c) for c in counts.tolist()]
    missing = sorted({c for c in wanted if (k, c, beta) not in _BULK_BELOW})
    if missing:
        x_hi = mp_law.mp_quantile(torch.tensor([(k - c) / k for c in missing], dtype=torch.float64), beta)
        sqrt_sums = k * mp_law.mp_partial_mean_sqrt(x_hi, beta)
        square_sums = k * mp_law.mp_integral(lambda x: x, x_hi, beta)
        for c, a, b in zip(missing, sqrt_sums.tolist(), square_sums.tolist()):
            _BULK_BELOW[(k, c, beta)] = (a, b)
    pairs = torch.tensor([_BULK_BELOW[(k, c, beta)] for c in wanted], dtype=torch.float64).reshape(-1, 2)
    return pairs[:, 0].to(counts.device), pairs[:, 1].to(counts.device)


def _unfound_signal(values: torch.Tensor, found: torch.Tensor, n_above: torch.Tensor, sigma: torch.Tensor,
                    tau: torch.Tensor, frob2: torch.Tensor, bulk_squares: torch.Tensor) -> torch.Tensor:
    """Estimated sum of the values above the edge that were not found (more than MAX_VALUES above
    it: matrices far from the model, e.g. rank-deficient ones, whose zero singular values pull sigma
    down), 0 elsewhere. Their energy is ||W||_F^2 less the found values' and the bulk's expectation
    below the edge (sigma^2 times ``bulk_squares``, _bulk_below's second part); each is taken at the
    root of their mean square, kept between tau and the smallest found value."""
    middle = (n_above - found).clamp_min(0)
    if not bool((middle > 0).any()):
        return torch.zeros_like(sigma)
    below = sigma * sigma * bulk_squares
    energy = frob2 - (values * values).sum(-1) - below
    smallest_found = values.gather(-1, (found - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1)
    mean_square = (energy / middle.clamp_min(1)).clamp_min(0)
    each = torch.minimum(torch.maximum(mean_square.sqrt(), tau), smallest_found.clamp_min(tau))
    return torch.where(middle > 0, middle * each, 0.0)


def _spikes(frob2: torch.Tensor, top: torch.Tensor, k: int, big: int) -> noise_edge.DeflatedMoments:
    """mp-moments from ||W||_F^2 and the top values alone (||W^T W||_F^2 is not formed: NaN)."""
    return noise_edge.deflated_moments(frob2, torch.full_like(frob2, math.nan), top, k, big)


def _table(top: torch.Tensor, found: torch.Tensor, n_above: torch.Tensor, sigma: torch.Tensor, k: int,
           big: int, frob2: torch.Tensor) -> torch.Tensor:
    """[B, 7] table (ops.SpectrumStats.FIELDS) from the top values (descending, padded with NaN past
    each matrix's ``found``), the count of values above the edge, sigma and ||W||_F^2."""
    beta = k / big
    index = torch.arange(top.shape[-1], device=top.device)
    valid = index < found.unsqueeze(-1)
    values = torch.where(valid, top, 0.0)
    tau = sigma * threshold_factor(k, big)
    above = index < n_above.unsqueeze(-1)
    bulk_values, bulk_squares = _bulk_below(k, n_above, beta)
    signal = torch.where(above, values, 0.0).sum(-1) + _unfound_signal(values, found, n_above, sigma, tau, frob2,
                                                                       bulk_squares)
    n_signal = n_above.to(torch.float64)
    exact = found == k  # every value found: the noise sum is theirs, as in the exact mode
    noise = torch.where(exact, torch.where(valid & ~above, values, 0.0).sum(-1), sigma * bulk_values)
    noise = torch.where(n_signal < k, noise, 1.0)  # Spectrum's rule when no value is below the edge
    sigma_max = values[:, 0]
    snr = torch.where(sigma_max > 0, signal / noise / sigma_max, 0.0)
    return torch.stack([sigma_max, sigma, tau, signal, noise, n_signal, snr], dim=-1)


def _full_spectrum(w: torch.Tensor) -> torch.Tensor:
    """All singular values, descending, float64, from the float64 Gram (the exact mode's eigen routes)."""
    eig = eigvalsh(gram(w, "float64"))
    return eig.to(device=w.device, dtype=torch.float64).clamp_min(0).sqrt().flip(-1)


def top_eigenvalues(g: torch.Tensor, t: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [B, t] float64 descending, failed [B] bool): the t largest eigenvalues of the
    symmetric positive semi-definite fp32 ``g`` [B, k, k] by subspace iteration (module docstring,
    step 1). ``failed`` marks matrices whose iterate lost rank (their values are not to be used)."""
    b, k, _ = g.shape
    width = min(k, t + OVERSAMPLE)
    generator = torch.Generator(device=g.device)
    generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
    q = torch.randn(b, k, width, generator=generator, device=g.device, dtype=torch.float32)
    # The products with G rounded to bf16, on tensor cores, q rounded too (one part): they only
    # steer the subspace; the Rayleigh-Ritz step below uses the fp32 G (CPU, a 1536 x 5120 workload
    # matrix, 16 iterations: G in 1, 2 or 3 bf16 parts gave the top 32 values to the same relative
    # errors, 1e-8 to 2e-2 down the list).
    g16 = g.to(torch.bfloat16)
    failed = torch.zeros(b, dtype=torch.bool, device=g.device)
    for i in range(ITERATIONS):
        # One Cholesky QR pass between products, two for the Rayleigh-Ritz basis.
        q, bad = cholesky_qr(split_products.split_bmm(g16, q, 1), passes=2 if i + 1 == ITERATIONS else 1)
        failed |= bad
    with _full_fp32_matmul():
        gq = torch.bmm(g, q)
    small = (q.to(torch.float64).mT @ gq.to(torch.float64)).cpu()
    small = (small + small.mT) / 2
    with one_torch_thread():  # 48 x 48 problems: one host thread beats all (host_threads says by how much)
        values = torch.linalg.eigvalsh(small)
    return values.flip(-1)[:, :t].to(g.device), failed


def _settle_spike_count(g: torch.Tensor, frob2: torch.Tensor, s: torch.Tensor, spikes: noise_edge.DeflatedMoments,
                        k: int, big: int) -> torch.Tensor:
    """sigma, with the number of spikes r taken from an exact count where a found value lies within
    SPIKE_EDGE_BAND of the spike edge (sigma's edge, a few Tracy-Widom scales above the MP edge): a
    value found a little low there changes r, sigma by ~1e-4 and the count above the MP edge by
    one (bench/probes/fast_noise_model_cpu_04bb809_4096x14336.log, 2 of 10 matrices). The count
    at the edge sigma(r) sets r again (at most SPIKE_CHECKS times): the same fixed point as
    deflated_moments', with exact counts."""
    factor = noise_edge.spike_edge_factor(k, big)
    r, sigma = spikes.n_spikes.clone(), spikes.sigma.clone()
    for _ in range(SPIKE_CHECKS):
        cut = (sigma * factor).unsqueeze(-1)
        near = ((s - cut).abs() <= SPIKE_EDGE_BAND * cut).any(-1) & ~spikes.saturated
        which = near.nonzero().squeeze(-1)
        if not which.numel():
            break
        counts, reliable = count_above(g[which], cut[which, 0] ** 2)
        moved = reliable & (counts != r[which]) & (counts < s.shape[-1])
        if not bool(moved.any()):
            break
        which = which[moved]
        r[which] = counts[moved]
        sigma[which] = noise_edge.deflated_sigma(frob2[which], s[which], r[which], k, big)
    return sigma


def fast_snr_statistics(w: torch.Tensor, start_values: int | None = None, seed: int | None = None) -> torch.Tensor:
    """[B, n, m] matrices (any float dtype; finite) -> [B, 7] float64 table (ops.SpectrumStats.FIELDS)."""
    b, n, m = w.shape
    k, big = min(n, m), max(n, m)
    frob2 = torch.linalg.vector_norm(w.reshape(b, -1), dim=-1, dtype=torch.float64).square()
    if k <= FULL_SPECTRUM_MAX_K:
        return _exact_rows(w, frob2)
    g = gram(w, "float32")
    t = min(k, start_values or START_VALUES)
    top = torch.full((b, k), math.nan, dtype=torch.float64, device=w.device)
    found = torch.zeros(b, dtype=torch.int64, device=w.device)
    n_above = torch.zeros(b, dtype=torch.int64, device=w.device)
    sigma = torch.empty_like(frob2)
    todo = torch.arange(b, device=w.device)
    exact_route = torch.zeros(b, dtype=torch.bool, device=w.device)
    while todo.numel():
        if t > FULL_SPECTRUM_FRACTION * k:
            exact_route[todo] = True
            break
        g_todo = g if todo.numel() == b else g[todo]
        values, failed = top_eigenvalues(g_todo, t, seed)
        s = values.clamp_min(0).sqrt()
        spikes = _spikes(frob2[todo], s, k, big)
        settled = _settle_spike_count(g_todo, frob2[todo], s, spikes, k, big)
        tau = settled * threshold_factor(k, big)
        counts, reliable = count_above(g_todo, tau * tau)
        del g_todo
        top[todo, :t] = s
        found[todo] = t
        n_above[todo] = counts
        sigma[todo] = settled
        # Done: sigma's spikes all found (one found value is not a spike) and every value above the
        # edge among the found ones. Unreliable counts and broken iterations take the exact route.
        trouble = failed | ~reliable
        exact_route[todo[trouble]] = True
        # Another round (twice the values) where sigma's spikes or the values above the edge were not
        # all found, unless more than MAX_VALUES are above it: those keep this round's values now
        # (rounds on a few matrices cost as much as on a full batch; H100, fast_components at 3e68912).
        todo = todo[~trouble & (spikes.saturated | (counts > t)) & (counts <= MAX_VALUES)]
        if 2 * t > MAX_VALUES:
            break  # the rest keep this round's values; _table estimates the unfound ones above the edge
        t = 2 * t
    table = _table(top, found, n_above, sigma, k, big, frob2)
    rest = exact_route.nonzero().squeeze(-1)
    if rest.numel():
        table[rest] = _exact_rows(w[rest], frob2[rest])
    return table


def _exact_rows(w: torch.Tensor, frob2: torch.Tensor) -> torch.Tensor:
    """The exact mode's "mp-moments" table of [B, n, m] ``w``: every value from the float64 Gram."""
    k, big = min(w.shape[-2:]), max(w.shape[-2:])
    top = _full_spectrum(w)
    sigma = _spikes(frob2, top, k, big).sigma
    n_above = (top > (sigma * threshold_factor(k, big)).unsqueeze(-1)).sum(-1)
    return _table(top, torch.full_like(n_above, k), n_above, sigma, k, big, frob2)
