"""Group lasso by proximal block coordinate descent.

Minimizes f(delta) + lam * sum_g ||delta_g||_2 over a vector delta split into disjoint groups: f
is smooth (here the model's loss as a function of the component scales), the penalty is the l2,1
group norm, which sets whole groups exactly to zero. One group (block) at a time, cycling: a
gradient step on f for that group's entries only, then the group norm's proximal step (group
soft-thresholding). Each group update asks for a fresh gradient, so it sees every earlier update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def group_soft_threshold(v: torch.Tensor, threshold: float) -> torch.Tensor:
    """The proximal map of threshold * ||.||_2: max(0, 1 - threshold / ||v||) v.

    A vector no longer than ``threshold`` becomes exactly zero; a longer one keeps its direction
    and becomes exactly ``threshold`` shorter."""
    norm = float(torch.linalg.vector_norm(v))
    if norm <= threshold:
        return torch.zeros_like(v)
    return v * (1 - threshold / norm)


def block_coordinate_descent(gradient: Callable[[torch.Tensor, int], torch.Tensor], groups: Sequence[torch.Tensor],
                             size: int, *, lr: float, penalty: float, cycles: int,
                             start: torch.Tensor | None = None) -> torch.Tensor:
    """-> delta after ``cycles`` passes over ``groups``, each group updated once per pass:

        delta_g <- group_soft_threshold(delta_g - lr * grad_g f(delta), lr * penalty)

    gradient(delta, update): the gradient of f at delta (a float64 vector of ``size``), where
        ``update`` counts the group updates so far (0, 1, ...), e.g. to take a different batch each.
    groups: disjoint index tensors into delta; entries in no group are never updated.
    start: the initial delta (default zeros).
    """
    delta = torch.zeros(size, dtype=torch.float64) if start is None else start.detach().double().clone()
    update = 0
    for _ in range(cycles):
        for index in groups:
            grad = gradient(delta, update)
            update += 1
            delta[index] = group_soft_threshold(delta[index] - lr * grad[index], lr * penalty)
    return delta
