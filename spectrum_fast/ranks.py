"""Rank arithmetic of low-rank decomposition (lowrank.py): which ranks save parameters, rank
quantization, the rank that keeps an energy fraction, and ranks that fit a parameter budget.

A rank-r factorization of an n x m weight stores r (n + m) numbers instead of n m, so it saves
parameters only while r (n + m) < n m; the largest such r is ``max_saving_rank(n, m)``.
"Energy" is the fraction of the squared Frobenius norm kept: sum of the r largest S^2 / sum of all
S^2 (Eckart-Young: the rest is exactly ||W - W_r||_F^2).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

import torch


def max_saving_rank(n: int, m: int) -> int:
    """The largest r with r (n + m) < n m (0 when no rank saves parameters, e.g. a 1 x m weight)."""
    return (n * m - 1) // (n + m)


def quantize_rank(rank: int, quantize: int | None, cap: int) -> int:
    """``rank`` rounded up to a multiple of ``quantize`` (matrix units work in tiles: multiples of 8, 16
    or 64 leave none partly idle), but never above ``cap`` (the largest rank that still saves
    parameters) and never below ``rank`` itself: rounding only ever adds singular values."""
    if quantize is None or quantize <= 1:
        return rank
    return max(rank, min(math.ceil(rank / quantize) * quantize, cap))


def energy_fractions(s: torch.Tensor) -> torch.Tensor:
    """Each singular value's share of the squared Frobenius norm (float64; all 0 for a zero matrix)."""
    s2 = s.double() ** 2
    total = s2.sum()
    return s2 / total if total > 0 else torch.zeros_like(s2)


def kept_energy(s: torch.Tensor, rank: int) -> float:
    """Fraction of the squared Frobenius norm the top ``rank`` singular values keep (1.0 for a zero matrix)."""
    shares = energy_fractions(s)
    return float(shares[:rank].sum()) if shares.sum() > 0 else 1.0


def energy_rank(s: torch.Tensor, energy: float) -> int:
    """The smallest r >= 1 whose top r singular values keep at least ``energy`` of the squared norm."""
    cumulative = torch.cumsum(energy_fractions(s), 0)
    if cumulative.numel() == 0 or cumulative[-1] == 0:
        return 1
    # Compare with the last cumulative value, not 1: float rounding can leave it a hair below 1, and
    # energy=1 must then still find the full rank rather than none.
    target = min(energy, float(cumulative[-1]))
    return int(torch.searchsorted(cumulative, torch.tensor(target, dtype=cumulative.dtype)).item()) + 1


def budget_ranks(spectra: Sequence[torch.Tensor], shapes: Sequence[tuple[int, int]], budget: int,
                 quantize: int | None) -> list[int] | None:
    """Ranks, one per matrix, whose factors total at most ``budget`` parameters, chosen by one global
    threshold t on the singular values' energy shares: matrix j keeps every singular value whose
    share of its own squared norm is >= t (at least one, at most its largest saving rank), then
    quantized. One threshold for all equalizes the marginal energy a matrix gives up, so no matrix
    is cut far deeper than another. t is the smallest share (most parameters) that fits the budget;
    None when even rank 1 everywhere, quantized, does not fit.
    """
    shares = [energy_fractions(s) for s in spectra]
    caps = [max_saving_rank(n, m) for n, m in shapes]

    def ranks_at(threshold: float) -> list[int]:
        ranks = []
        for share, cap in zip(shares, caps):
            count = int((share >= threshold).sum()) if threshold <= 1 else 0
            ranks.append(quantize_rank(min(max(count, 1), cap), quantize, cap))
        return ranks

    def params(ranks: list[int]) -> int:
        return sum(r * (n + m) for r, (n, m) in zip(ranks, shapes))

    if params(ranks_at(math.inf)) > budget:
        return None
    # Candidate thresholds: every share, ascending; params(ranks_at(t)) falls as t grows.
    candidates = sorted({float(v) for share in shares for v in share.tolist()})
    fits: Callable[[int], bool] = lambda i: params(ranks_at(candidates[i])) <= budget  # noqa: E731
    first_fit = bisect.bisect_left(range(len(candidates)), True, key=fits)
    return ranks_at(candidates[first_fit] if first_fit < len(candidates) else math.inf)
