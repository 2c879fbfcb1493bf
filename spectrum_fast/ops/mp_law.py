"""The Marchenko-Pastur (MP) law: the limit distribution of the eigenvalues x of (1/M) X X^T for a
k x M matrix X of unit-variance i.i.d. entries, ratio beta = k/M in (0, 1].

Support [a, b] = [(1 - sqrt beta)^2, (1 + sqrt beta)^2], density f(x) = sqrt((b - x)(x - a)) / (2 pi beta x),
mean 1, second moment 1 + beta. The noise-edge estimators (ops.noise_edge) read a weight's
singular values S as S = sigma sqrt(x), sigma in Spectrum's units (the entry std times sqrt(M)).

Everything is computed through the substitution x(theta) = (1 + beta) - 2 sqrt(beta) cos(theta),
theta in [0, pi], under which sqrt((b - x)(x - a)) dx = 4 beta sin^2(theta) dtheta and
    f(x) dx = (2 / pi) sin^2(theta) / x(theta) dtheta,
a smooth integrand (at beta = 1, where a = 0 and f has a 1/sqrt(x) pole, it is (1 + cos theta) / pi).
- The CDF has a closed form in theta (derived below), exact to about 1e-16 / sqrt(beta).
- Other integrals (mp_integral, mp_partial_mean_sqrt) use composite Gauss-Legendre in theta. The
  integrand's only singularities are at theta = +-i eps, eps = -ln(beta) / 2 (where x(theta) = 0),
  which come close to theta = 0 as beta -> 1; panels halving towards 0 down to eps / 2 keep every
  panel at least its own length away from them, so 20 nodes a panel reach float64 accuracy.
Inputs are numbers, numpy arrays or tensors; results are float64 tensors (on the input's device).
No scipy: it stays an optional route elsewhere in the package.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
import torch

NODES_PER_PANEL = 20
MAX_PANELS_TOWARDS_ZERO = 52  # pi 2^-52 ~ 7e-16: finer panels would change nothing in float64
BISECTION_STEPS = 64  # on theta in [0, pi]: pi 2^-64 is below float64 resolution there


def _beta(beta: float) -> float:
    beta = float(beta)
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"the MP ratio beta must lie in (0, 1], got {beta!r}")
    return beta


def _as_float64(x, device: torch.device | None = None) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64, device=device)


def mp_support(beta: float) -> tuple[float, float]:
    """(a, b) = ((1 - sqrt beta)^2, (1 + sqrt beta)^2)."""
    r = math.sqrt(_beta(beta))
    return (1.0 - r) ** 2, (1.0 + r) ** 2


def mp_density(x, beta: float) -> torch.Tensor:
    """f(x); 0 outside [a, b] (and at x = 0 for beta = 1, where it is infinite)."""
    a, b = mp_support(beta)
    x = _as_float64(x)
    inside = (x > a) & (x < b)
    safe = torch.where(inside, x, torch.ones_like(x))
    f = torch.sqrt((b - safe) * (safe - a)) / (2 * math.pi * beta * safe)
    return torch.where(inside, f, torch.zeros_like(x))


def _theta_of_x(x: torch.Tensor, beta: float) -> torch.Tensor:
    """The inverse of x(theta) on [0, pi]; x below a gives 0, above b gives pi.

    x - a = 4 r sin^2(theta/2) and b - x = 4 r cos^2(theta/2) (r = sqrt beta), so theta/2 is the
    angle of (sqrt(b - x), sqrt(x - a)): accurate at both edges, unlike acos((1 + beta - x) / 2r).
    """
    a, b = mp_support(beta)
    return 2.0 * torch.atan2((x - a).clamp_min(0).sqrt(), (b - x).clamp_min(0).sqrt())


def _x_of_theta(theta: torch.Tensor, beta: float) -> torch.Tensor:
    """a + 4 r sin^2(theta/2): the same as 1 + beta - 2 r cos(theta) without its cancellation near a
    when beta -> 1 (where a is tiny and 1/x is what the integrals weigh)."""
    r = math.sqrt(beta)
    return (1.0 - r) ** 2 + 4.0 * r * torch.sin(0.5 * theta) ** 2


def _cdf_of_theta(theta: torch.Tensor, beta: float) -> torch.Tensor:
    """P(x <= x(theta)) in closed form.

    (2/pi) int_0^theta sin^2 t / (A - B cos t) dt with A = 1 + beta, B = 2 sqrt(beta): dividing
    1 - cos^2 t by A - B cos t leaves cos t / B + A / B^2 and a remainder -(1 - beta)^2 / B^2 over
    A - B cos t, whose integral is an arctangent. Written with r = sqrt(beta):
        CDF = theta / pi + sin(theta) / (pi r) - (1 - r^2) psi / (pi r^2),
        psi = atan2(r sin theta, 1 - r cos theta)   (= arg of 1 - r e^{-i theta}, in [0, pi/2]).
    The middle and last terms are O(1/r) and cancel to O(1): absolute error ~ 1e-16 / r.
    At beta = 1 the last term vanishes: CDF = (theta + sin theta) / pi.
    """
    r = math.sqrt(beta)
    sin_t = torch.sin(theta)
    psi = torch.atan2(r * sin_t, 1.0 - r * torch.cos(theta))
    cdf = theta / math.pi + sin_t / (math.pi * r) - (1.0 - beta) / (math.pi * beta) * psi
    return cdf.clamp(0.0, 1.0)


def mp_cdf(x, beta: float) -> torch.Tensor:
    """P(X <= x) for X ~ MP(beta), elementwise."""
    beta = _beta(beta)
    x = _as_float64(x)
    cdf = _cdf_of_theta(_theta_of_x(x, beta), beta)
    # Exactly 0 and 1 outside the support (the formula's rounding leaves 1 - 1e-16 at theta = pi).
    a, b = mp_support(beta)
    return torch.where(x >= b, 1.0, torch.where(x <= a, 0.0, cdf))


def mp_quantile(p, beta: float) -> torch.Tensor:
    """The x with CDF(x) = p, elementwise (p in [0, 1]): bisection on theta, where the CDF is smooth
    and strictly increasing (vectorized, a fixed number of steps)."""
    beta = _beta(beta)
    p = _as_float64(p)
    if bool(((p < 0) | (p > 1) | p.isnan()).any()):
        raise ValueError("mp_quantile: probabilities must lie in [0, 1]")
    lo = torch.zeros_like(p)
    hi = torch.full_like(p, math.pi)
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        below = _cdf_of_theta(mid, beta) < p
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    # The CDF is flat to third order at both edges: a CDF within rounding of 0 or 1 leaves theta
    # short of 0 or pi (x off by ~1e-10 there). p = 0 and 1 are the edges exactly.
    theta = torch.where(p == 0, 0.0, torch.where(p == 1, math.pi, 0.5 * (lo + hi)))
    return _x_of_theta(theta, beta)


@functools.lru_cache(maxsize=4096)
def mp_median(beta: float) -> float:
    """The MP median mu_beta (Gavish & Donoho's; about 0.6528 at beta = 1). Cached: one per shape."""
    return float(mp_quantile(0.5, beta))


@functools.lru_cache(maxsize=64)
def _panels(beta: float) -> tuple[np.ndarray, ...]:
    """Breakpoints in theta, pi, pi/2, ..., down to below eps/2, then 0 (descending), and the
    Gauss-Legendre rule. eps = -ln(beta)/2 is how far the integrand's singularities sit off the real
    axis; the halving keeps each of them at least a panel length from every panel."""
    if beta == 1.0:
        halvings = 0  # the integrand (1 + cos theta)/pi g(x) is smooth for smooth g: one panel
    else:
        eps = -0.5 * math.log(beta)
        halvings = min(max(math.ceil(math.log2(2 * math.pi / eps)), 0), MAX_PANELS_TOWARDS_ZERO)
    breaks = np.array([math.pi * 2.0**-j for j in range(halvings + 1)] + [0.0])
    nodes, weights = np.polynomial.legendre.leggauss(NODES_PER_PANEL)
    return breaks, nodes, weights


def mp_integral(g: Callable[[torch.Tensor], torch.Tensor], x_hi, beta: float) -> torch.Tensor:
    """int_a^{x_hi} g(x) f(x) dx, elementwise in x_hi (x_hi >= b gives the full expectation E[g(X)]).

    g must be smooth on [a, b] (analytic near it), as the moments and sqrt are. Composite
    Gauss-Legendre in theta on the panels of _panels, each clipped to [0, theta(x_hi)].
    """
    beta = _beta(beta)
    x_hi = _as_float64(x_hi)
    breaks, nodes, weights = _panels(beta)
    dev = x_hi.device
    theta_hi = _theta_of_x(x_hi, beta).unsqueeze(-1)  # [..., 1]
    upper = torch.minimum(_as_float64(breaks[:-1], dev), theta_hi)  # [..., P]
    lower = torch.minimum(_as_float64(breaks[1:], dev), theta_hi)
    half = (0.5 * (upper - lower)).unsqueeze(-1)  # [..., P, 1]; empty panels have zero weight
    mid = (0.5 * (upper + lower)).unsqueeze(-1)
    theta = mid + half * _as_float64(nodes, dev)  # [..., P, N]
    x = _x_of_theta(theta, beta)
    integrand = (2.0 / math.pi) * torch.sin(theta) ** 2 / x * g(x)
    # An empty panel (clipped away) puts its nodes at theta(x_hi), which is x = 0 when beta = 1 and
    # x_hi <= 0: 0/0 there, weighted by 0. Nodes of non-empty panels are interior, where x > 0.
    integrand = torch.where(half > 0, integrand, 0.0)
    return (integrand * half * _as_float64(weights, dev)).sum(dim=(-2, -1))


def mp_partial_mean_sqrt(x_hi, beta: float) -> torch.Tensor:
    """int_a^{x_hi} sqrt(x) f(x) dx: the expected sum of the singular values below sigma sqrt(x_hi),
    per singular value, in units of sigma (the noise part of Spectrum's ratio for a pure-noise
    matrix when the spectrum is cut at x_hi)."""
    return mp_integral(torch.sqrt, x_hi, beta)


@functools.lru_cache(maxsize=4096)
def mp_mean_sqrt(beta: float) -> float:
    """E[sqrt(X)]: the mean singular value in units of sigma (8 / (3 pi) at beta = 1). Cached."""
    return float(mp_partial_mean_sqrt(mp_support(beta)[1], beta))
