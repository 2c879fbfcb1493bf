"""The Marchenko-Pastur law (ops.mp_law) and the noise-scale estimators (ops.noise_edge), on fresh
random inputs every run (the seed is in every assertion message).

Truths used: the MP law's closed-form facts (CDF(b) = 1, E x = 1, E x^2 = 1 + beta,
E x^3 = 1 + 3 beta + beta^2; at beta = 1 the CDF is (theta + sin theta)/pi and E sqrt(x) = 8/(3 pi)),
independent fine-grid integrals, and Gaussian random matrices of known entry std s, whose sigma in
Spectrum's units is s sqrt(M).

Estimator bounds, from a spread measurement at the test's sizes (k = 256, M = 256/beta; 120
matrices per beta, pure noise and with 3 spikes of strength 4..10 sigma, float64 svdvals): the
relative error's std was at most 0.63% (gavish-donoho and mp-fit at beta = 1), the largest seen
2.0%, the largest mean 0.6% (mp-moments with spikes at beta = 1); SIGMA_RTOL = 4% is over 5 stds
out. The bulk's normalized second moment had std at most 0.008 (beta = 1): SECOND_MOMENT_ATOL 0.05.
"""

from __future__ import annotations

import math

import pytest
import torch

from spectrum_fast.ops import noise_edge
from spectrum_fast.ops.mp_law import (mp_cdf, mp_density, mp_integral, mp_mean_sqrt, mp_median,
                                      mp_partial_mean_sqrt, mp_quantile, mp_support)
from spectrum_fast.ops.noise_edge import (ESTIMATORS, deflated_moments, estimate_sigma, mp_second_moment,
                                          sigma_from_moments, spectrum_moments)
from spectrum_fast.ops.stats import (SpectrumStats, iqr_sigma, singular_values_from_eigenvalues,
                                     snr_statistics, snr_statistics_torch, snr_table_from_sigma)

BETAS = (1 / 8, 1 / 4, 1 / 2, 1.0)
LAW_BETAS = (1e-3, 1 / 8, 1 / 4, 1 / 2, 0.9, 0.999, 1.0)
K = 256
SIGMA_RTOL = 0.04
SECOND_MOMENT_ATOL = 0.05
MP_ESTIMATORS = ("gavish-donoho", "mp-fit", "mp-moments")


def table_of(stats: SpectrumStats) -> torch.Tensor:
    return torch.stack([getattr(stats, f) for f in SpectrumStats.FIELDS], dim=-1)


# -- the MP law ------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", LAW_BETAS)
def test_mp_law_known_values(beta, seed):
    a, b = mp_support(beta)
    ctx = f"[beta={beta} seed={seed}]"
    assert mp_cdf(a, beta).item() == 0.0 and abs(mp_cdf(b, beta).item() - 1) < 1e-15, ctx
    assert mp_cdf(a - 1, beta).item() == 0.0 and mp_cdf(b + 1, beta).item() == 1.0, ctx

    def moment(p):
        return mp_integral(lambda x: x**p, b, beta).item()

    assert abs(moment(0) - 1) < 1e-13, ctx
    assert abs(moment(1) - 1) < 1e-13, ctx
    assert abs(moment(2) - (1 + beta)) < 1e-13, ctx
    assert abs(moment(3) - (1 + 3 * beta + beta**2)) < 1e-13, ctx


@pytest.mark.parametrize("beta", LAW_BETAS)
def test_mp_cdf_against_quadrature_and_density(beta, seed):
    """The closed-form CDF against the quadrature of the density, and its derivative against it."""
    g = torch.Generator().manual_seed(seed)
    a, b = mp_support(beta)
    x = a + (b - a) * torch.rand(64, generator=g, dtype=torch.float64)
    closed = mp_cdf(x, beta)
    quad = mp_integral(torch.ones_like, x, beta)
    ctx = f"[beta={beta} seed={seed}]"
    # ~1e-16 / sqrt(beta) from the closed form's cancellation
    assert (closed - quad).abs().max().item() < 1e-14 / math.sqrt(beta), ctx
    xs = x.sort().values
    assert bool((mp_cdf(xs, beta).diff() >= 0).all()), f"{ctx} CDF not monotone"
    inner = xs[(xs > a + 1e-3 * (b - a)) & (xs < b - 1e-3 * (b - a))]
    h = 1e-6 * (b - a)
    slope = (mp_cdf(inner + h, beta) - mp_cdf(inner - h, beta)) / (2 * h)
    torch.testing.assert_close(slope, mp_density(inner, beta), rtol=1e-5, atol=0, msg=ctx)


def test_mp_median_at_beta_one(seed):
    """At beta = 1 the CDF is (theta + sin theta)/pi with x = 2 - 2 cos theta: the median solves
    theta + sin theta = pi/2 (solved here by plain float bisection). It is 0.65278 (the task brief's
    "about 0.6494" is off in the third digit); Gavish-Donoho's omega(1) ~ 2.858 = (4/sqrt 3)/sqrt(mu)
    gives 0.6528 too."""
    lo, hi = 0.0, math.pi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mid + math.sin(mid) < math.pi / 2 else (lo, mid)
    want = 2 - 2 * math.cos(lo)
    assert abs(mp_median(1.0) - want) < 1e-14, f"[seed={seed}] {mp_median(1.0)} vs {want}"
    assert abs(mp_median(1.0) - 0.65278) < 1e-5


@pytest.mark.parametrize("beta", LAW_BETAS)
def test_mp_quantile_inverts_the_cdf(beta, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(100, generator=g, dtype=torch.float64)
    ctx = f"[beta={beta} seed={seed}]"
    assert (mp_cdf(mp_quantile(p, beta), beta) - p).abs().max().item() < 1e-14, ctx
    a, b = mp_support(beta)
    assert mp_quantile(0.0, beta).item() == pytest.approx(a, abs=1e-15), ctx
    assert mp_quantile(1.0, beta).item() == pytest.approx(b, rel=1e-15), ctx
    assert mp_median(beta) == mp_quantile(0.5, beta).item(), ctx
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mp_quantile(1.5, beta)


@pytest.mark.parametrize("beta", LAW_BETAS)
def test_mp_partial_mean_sqrt(beta, seed):
    """Against a fine composite Simpson rule in theta (independent of the Gauss-Legendre panels) and
    the beta = 1 closed form 8/(3 pi) (1 - cos^3(theta/2))."""
    g = torch.Generator().manual_seed(seed)
    a, b = mp_support(beta)
    x_hi = a + (b - a) * torch.rand(5, generator=g, dtype=torch.float64)
    got = mp_partial_mean_sqrt(x_hi, beta)
    r = math.sqrt(beta)
    theta_hi = 2 * torch.atan2((x_hi - a).sqrt(), (b - x_hi).sqrt())
    u = torch.linspace(0, 1, 400_001, dtype=torch.float64)
    w = torch.ones_like(u)
    w[1:-1:2], w[2:-1:2] = 4, 2
    theta = theta_hi.unsqueeze(-1) * u
    x = (1 - r) ** 2 + 4 * r * torch.sin(theta / 2) ** 2
    # sin^2/x * sqrt(x) = sin^2 / sqrt(x), fine at theta = 0 also when beta = 1 (x ~ theta^2)
    f = torch.where(theta > 0, (2 / math.pi) * torch.sin(theta) ** 2 / x.sqrt(), 0.0)
    simpson = (f * w).sum(-1) * theta_hi / (3 * (len(u) - 1))
    ctx = f"[beta={beta} seed={seed}]"
    torch.testing.assert_close(got, simpson, rtol=1e-9, atol=1e-12, msg=ctx)
    if beta == 1.0:
        closed = 8 / (3 * math.pi) * (1 - torch.cos(theta_hi / 2) ** 3)
        torch.testing.assert_close(got, closed, rtol=1e-13, atol=1e-15, msg=ctx)
        assert mp_mean_sqrt(1.0) == pytest.approx(8 / (3 * math.pi), rel=1e-14)
    assert mp_partial_mean_sqrt(a, beta).item() == 0.0, ctx
    assert mp_partial_mean_sqrt(b + 1, beta).item() == pytest.approx(mp_mean_sqrt(beta), rel=1e-15), ctx
    assert mp_mean_sqrt(beta) < 1.0, ctx  # Jensen: E sqrt(x) < sqrt(E x) = 1


@pytest.mark.parametrize("beta", BETAS)
def test_mp_law_matches_random_matrices(beta, seed):
    """Monte-Carlo: eigenvalues of (1/M) X X^T, X 200 x 200/beta Gaussian, 4 matrices, against the law.
    Loose bounds, over 5 stds out of a 60-run measurement (largest std at beta = 1: median 0.93%,
    mean sqrt 0.20%, partial sum 0.63%; the KS distance 0.007 +- 0.0012)."""
    g = torch.Generator().manual_seed(seed)
    k = 200
    big = round(k / beta)
    x = torch.linalg.eigvalsh(
        (lambda X: X @ X.mT / big)(torch.randn(4, k, big, generator=g, dtype=torch.float64))).flatten().sort().values
    ctx = f"[beta={beta} seed={seed}]"
    ecdf = torch.arange(1, x.numel() + 1, dtype=torch.float64) / x.numel()
    assert (mp_cdf(x, beta) - ecdf).abs().max().item() < 0.02, ctx
    assert x.median().item() == pytest.approx(mp_median(beta), rel=0.05), ctx
    assert x.clamp_min(0).sqrt().mean().item() == pytest.approx(mp_mean_sqrt(beta), rel=0.012), ctx
    half = mp_quantile(0.5, beta).item()
    below = x[x <= half].clamp_min(0).sqrt().sum().item() / x.numel()
    assert below == pytest.approx(mp_partial_mean_sqrt(half, beta).item(), rel=0.04), ctx


@pytest.mark.parametrize("beta", (0.0, -0.5, 1.5, math.nan))
def test_mp_law_rejects_bad_ratios(beta):
    with pytest.raises(ValueError, match="beta"):
        mp_cdf(0.5, beta)


# -- the estimators on Gaussian matrices -------------------------------------------------------------
def noise_matrices(beta: float, count: int, g: torch.Generator, spikes: int = 0):
    """count matrices K x K/beta: Gaussian noise of a random entry std, plus `spikes` rank-one terms
    theta sigma u v^T (unit u, v; theta in [4, 10], far above the BBP threshold beta^(1/4)).
    Returns the ascending singular values [count, K], the shape and the true sigma [count]."""
    big = round(K / beta)
    std = 10 ** (4 * torch.rand(count, 1, 1, generator=g, dtype=torch.float64) - 3)
    w = std * torch.randn(count, K, big, generator=g, dtype=torch.float64)
    sigma = std.flatten() * math.sqrt(big)
    for _ in range(spikes):
        u = torch.randn(count, K, 1, generator=g, dtype=torch.float64)
        v = torch.randn(count, 1, big, generator=g, dtype=torch.float64)
        theta = 4 + 6 * torch.rand(count, 1, 1, generator=g, dtype=torch.float64)
        w += theta * sigma.view(-1, 1, 1) * (u / u.norm(dim=1, keepdim=True)) * (v / v.norm(dim=2, keepdim=True))
    if torch.rand((), generator=g) < 0.5:  # either orientation: the estimators take n x m or m x n
        w = w.mT
    n, m = w.shape[-2:]
    return torch.linalg.svdvals(w).flip(-1), n, m, sigma


@pytest.mark.parametrize("spikes", (0, 3))
@pytest.mark.parametrize("beta", BETAS)
def test_mp_estimators_find_the_noise_scale(beta, spikes, seed):
    g = torch.Generator().manual_seed(seed)
    s, n, m, sigma = noise_matrices(beta, 3, g, spikes)
    for est in MP_ESTIMATORS:
        rel = estimate_sigma(s, n, m, est) / sigma - 1
        assert rel.abs().max().item() < SIGMA_RTOL, \
            f"[{est} beta={beta} spikes={spikes} seed={seed}] relative errors {rel.tolist()}"
    moments = deflated_moments(*spectrum_moments(s), n, m)
    ctx = f"[beta={beta} spikes={spikes} seed={seed}]"
    assert moments.n_spikes.tolist() == [spikes] * 3, f"{ctx} spikes found {moments.n_spikes.tolist()}"
    assert not moments.saturated.any(), ctx
    second = moments.second_moment - mp_second_moment(n, m)
    assert second.abs().max().item() < SECOND_MOMENT_ATOL, f"{ctx} bulk second moment off by {second.tolist()}"
    # deflated_sigma at the fixed point's r is the fixed point's sigma (the fast mode's entry).
    frob2, _, desc = spectrum_moments(s)
    again = noise_edge.deflated_sigma(frob2, desc, moments.n_spikes, n, m)
    assert torch.allclose(again, moments.sigma, rtol=1e-14, atol=0), ctx


@pytest.mark.parametrize("beta", BETAS)
def test_spectrum_estimator_is_biased_low(beta, seed):
    """The known flaw: the IQR rule under-estimates sigma (by 35% at beta = 1 to 79% at 1/8 for
    these sizes), so pure noise shows signal; at beta = 1/4 (a 256 x 1024 noise matrix) the largest
    singular value is far above its threshold."""
    g = torch.Generator().manual_seed(seed)
    s, n, m, sigma = noise_matrices(beta, 3, g)
    rel = estimate_sigma(s, n, m, "spectrum") / sigma - 1
    assert rel.max().item() < -0.25, f"[beta={beta} seed={seed}] {rel.tolist()}"
    tau = estimate_sigma(s, n, m, "spectrum") * (1 + math.sqrt(beta))
    if beta == 1 / 4:
        assert bool((s[:, -1] > tau).all()), f"[seed={seed}] the IQR rule's tau is above sigma_max"
        stats = snr_statistics(s**2, n, m)
        assert bool((stats.n_signal > K / 4).all()), f"[seed={seed}] {stats.n_signal.tolist()}"
        for est in MP_ESTIMATORS:  # at the MP edge: at most a few Tracy-Widom stragglers
            stats = snr_statistics(s**2, n, m, estimator=est)
            assert stats.n_signal.max().item() <= 3, f"[{est} seed={seed}] {stats.n_signal.tolist()}"


def test_mp_fit_minimizes_the_ks_distance(seed):
    """The bisection's sigma against a fine grid of the KS distance around it."""
    g = torch.Generator().manual_seed(seed)
    s, n, m, _ = noise_matrices(1 / 4, 2, g, spikes=2)
    fit = noise_edge.mp_fit_sigma(s, n, m)
    grid = fit.unsqueeze(-1) * torch.linspace(0.97, 1.03, 601, dtype=torch.float64)
    for i in range(s.shape[0]):
        dist = torch.maximum(*noise_edge.ks_lower(s[i:i + 1].expand(601, -1), grid[i], n, m))
        best = torch.maximum(*noise_edge.ks_lower(s[i:i + 1], fit[i:i + 1], n, m)).item()
        assert best <= dist.min().item() + 1e-12, f"[seed={seed}] KS {best} at the fit, {dist.min()} on the grid"


def test_moments_from_the_top_values_agree_with_the_full_spectrum(seed):
    """The fast mode's inputs (||W||_F^2, ||W^T W||_F^2 from W, a few top values) give the full
    spectrum's sigma bit for bit when they hold every spike, and say so when they might not."""
    g = torch.Generator().manual_seed(seed)
    s, n, m, _ = noise_matrices(1 / 2, 3, g, spikes=3)
    frob2, gram2, desc = spectrum_moments(s)
    full = estimate_sigma(s, n, m, "mp-moments")
    assert torch.equal(sigma_from_moments(frob2, gram2, desc[:, :8], n, m), full), f"[seed={seed}]"
    few = deflated_moments(frob2, gram2, desc[:, :2], n, m)
    assert few.n_spikes.tolist() == [2] * 3 and bool(few.saturated.all()), f"[seed={seed}]"
    # From W itself (another summation order): equal to rounding.
    big = max(n, m)
    w = torch.randn(K, big, generator=g, dtype=torch.float64) * 0.1
    sv = torch.linalg.svdvals(w)
    from_w = sigma_from_moments(w.square().sum().reshape(1), (w @ w.T).square().sum().reshape(1), sv[:4].reshape(1, -1),
                                K, big)
    torch.testing.assert_close(from_w, estimate_sigma(sv.flip(-1).reshape(1, -1), K, big, "mp-moments"),
                               rtol=1e-12, atol=0, msg=f"[seed={seed}]")


def test_moment_fixed_point_is_self_consistent(seed):
    """r = #{S > sigma(r) e} at the fixed point, and the plain MP edge (tw_margin = 0) counts at least
    as many spikes as the Tracy-Widom margin."""
    g = torch.Generator().manual_seed(seed)
    s, n, m, _ = noise_matrices(1.0, 4, g, spikes=2)
    for margin in (0.0, noise_edge.TW_MARGIN):
        got = deflated_moments(*spectrum_moments(s), n, m, tw_margin=margin)
        edge = got.sigma * noise_edge.spike_edge_factor(n, m, margin)
        assert torch.equal((s > edge.unsqueeze(-1)).sum(-1), got.n_spikes), f"[margin={margin} seed={seed}]"
        assert got.iterations <= 4, f"[seed={seed}] {got.iterations} fixed-point steps"
    plain = deflated_moments(*spectrum_moments(s), n, m, tw_margin=0.0).n_spikes
    assert bool((plain >= got.n_spikes).all()), f"[seed={seed}]"


def test_zero_matrices_give_zero_sigma():
    s = torch.zeros(2, 8, dtype=torch.float64)
    for est in ESTIMATORS:
        assert estimate_sigma(s, 8, 20, est).tolist() == [0.0, 0.0], est
    moments = deflated_moments(*spectrum_moments(s), 8, 20)
    assert moments.n_spikes.tolist() == [0, 0] and bool(moments.second_moment.isnan().all())


# -- snr_statistics ----------------------------------------------------------------------------------
def trained_like_eigenvalues(batch: int, k: int, g: torch.Generator) -> torch.Tensor:
    """[batch, k] ascending eigenvalues: a uniform bulk of random scale plus k/16 decaying spikes."""
    scale = 10 ** (4 * torch.rand(batch, 1, generator=g, dtype=torch.float64) - 2)
    s = scale * (0.5 + torch.rand(batch, k, generator=g, dtype=torch.float64))
    r = max(1, k // 16)
    s[:, :r] += scale * 20 * torch.arange(1, r + 1, dtype=torch.float64) ** -0.7
    return (s**2).sort(dim=-1).values


def old_snr_statistics_torch(eigvals: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """ops.stats.snr_statistics_torch as it read before the estimators (frozen copy)."""
    s = eigvals.to(torch.float64).clamp_min(0).sqrt()
    k = s.shape[-1]

    def quantile(q):
        rank = torch.tensor(q, dtype=s.dtype) * (k - 1)
        below, above = int(torch.floor(rank)), int(torch.ceil(rank))
        return torch.lerp(s[..., below], s[..., above], (rank - below).to(s.device))

    sigma = (quantile(0.75) - quantile(0.25)) / 1.349
    tau = sigma * (1.0 + math.sqrt(min(n, m) / max(n, m)))
    above = s > tau.unsqueeze(-1)
    signal = torch.where(above, s, 0.0).sum(-1)
    n_signal = above.sum(-1).to(torch.float64)
    noise = torch.where(k - n_signal > 0, torch.where(above, 0.0, s).sum(-1), 1.0)
    sigma_max = s[..., -1]
    snr = torch.where(sigma_max > 0, signal / noise / sigma_max, 0.0)
    return torch.stack([sigma_max, sigma, tau, signal, noise, n_signal, snr], dim=-1)


@pytest.mark.parametrize("k,n,m", [(1, 1, 7), (2, 2, 2), (5, 9, 5), (64, 64, 256), (300, 1200, 300)])
def test_spectrum_estimator_is_unchanged(k, n, m, seed):
    g = torch.Generator().manual_seed(seed)
    eig = trained_like_eigenvalues(6, k, g)
    ctx = f"[{n}x{m} seed={seed}]"
    assert torch.equal(snr_statistics_torch(eig, n, m), old_snr_statistics_torch(eig, n, m)), ctx
    default = table_of(snr_statistics(eig, n, m))  # C++ extension when built, else torch
    assert torch.equal(table_of(snr_statistics(eig, n, m, estimator="spectrum")), default), ctx
    s = singular_values_from_eigenvalues(eig)
    assert torch.equal(estimate_sigma(s, n, m, "spectrum"), snr_statistics_torch(eig, n, m)[:, 1]), ctx
    assert torch.equal(estimate_sigma(s, n, m, "spectrum"), iqr_sigma(s)), ctx


@pytest.mark.parametrize("estimator", MP_ESTIMATORS)
def test_other_estimators_use_the_same_formulas(estimator, seed):
    g = torch.Generator().manual_seed(seed)
    eig = trained_like_eigenvalues(5, 48, g)
    n, m = 48, 200
    got = table_of(snr_statistics(eig.reshape(1, 5, 48), n, m, estimator=estimator))
    s = singular_values_from_eigenvalues(eig)
    sigma = estimate_sigma(s, n, m, estimator)
    ctx = f"[{estimator} seed={seed}]"
    assert torch.equal(got, snr_table_from_sigma(s, sigma, n, m)), ctx
    assert torch.equal(got[:, 2], sigma * (1 + math.sqrt(n / m))), ctx
    # With the IQR sigma, the same function gives the default table bit for bit.
    assert torch.equal(snr_table_from_sigma(s, iqr_sigma(s), n, m), snr_statistics_torch(eig, n, m)), ctx


def test_unknown_estimator_is_refused():
    s = torch.ones(1, 4, dtype=torch.float64)
    for call in (lambda: estimate_sigma(s, 4, 8, "mp"), lambda: snr_statistics(s**2, 4, 8, estimator="iqr")):
        with pytest.raises(ValueError, match="spectrum, gavish-donoho, mp-fit, mp-moments"):
            call()
    with pytest.raises(ValueError, match="min"):
        estimate_sigma(s, 5, 8, "mp-fit")
