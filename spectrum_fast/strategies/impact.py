"""Gradient impact: train the modules (or rows, or columns) whose weights the calibration loss is
most sensitive to, within a parameter budget.

Scores, per element i of a candidate's parameters, summed over the elements of a unit (a module,
an output row or an input column) and over the calibration batches b:

- ``score="taylor"``: sum_b |g_bi * w_i|, first-order Taylor importance (the loss change the
  linear term predicts for moving w_i to 0), g_b the gradient of batch b's loss.
- ``score="fisher"``: sum_b g_bi^2, the empirical Fisher information's diagonal, built from
  per-batch gradients (per-sample Fisher needs batches of one sample).

The sum of per-batch |g w| rather than |sum_b g_b| |w|: each batch's gradient can then be reduced
to the unit scores the moment it arrives and dropped, so no gradient of the whole model is ever
held (the latter needs every gradient summed over all batches first, a full copy of the weights'
size); and a weight that matters on every batch but in different directions is not cancelled
out. With one batch the two are the same.

Memory: one forward and backward pass per batch with only the candidates' parameters requiring
grad; a post-accumulate-grad hook on each reduces its gradient to a score (a scalar, or a vector
per expert / row / column) in float64 and sets ``.grad`` to None at once, so each gradient lives
only until its hook has run and the model's gradients never pile up. Afterwards the hooks are
removed and every parameter gets back its ``requires_grad`` and ``.grad`` (and the model its
train/eval mode: the passes run in eval mode).

Selection: units are taken greedily by score per parameter (score / elements, the knapsack
greedy), each one only if it still fits the budget, skipping those that do not and going on with
smaller ones; the budget is never exceeded. Ties go to the earlier unit in model order.

Granularity ``"module"``: units are the candidates (candidates.py), patterns their names.
``"row"`` / ``"column"``: units are the output rows / input columns of each candidate's 2-D weight
(biases stay frozen; fused expert tensors and 1-D weights are skipped, listed in how["skipped"]);
rows and columns are dims 0 and 1 of the weight tensor (output and input for nn.Linear's [out, in];
GPT-2's Conv1D stores [in, out], so there they swap). The selection lists ``how["rows"]`` /
``how["columns"]`` = {weight: [indices]} and the patterns ``^<weight>$`` of the weights with any;
``apply_masks(model, selection)`` (apply.py) freezes by the patterns and installs the gradient
masks that keep the other rows or columns still.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..budget import budget_limit
from ..components import calibration_loss
from ..errors import SelectionError
from .candidates import Candidate, Coverage, find_candidates
from .selection import Selection

GRANULARITIES = ("module", "row", "column")
SCORES = ("taylor", "fisher")


def impact(model: nn.Module, batches: Iterable, *, budget: int | float, granularity: str = "module",
           score: str = "taylor", types="auto", loss_fn: Callable | None = None) -> Selection:
    """Choose what to train by gradient impact (see the module's docstring); the model is left as it was.

    batches: calibration batches; a dict with ``labels`` runs as ``model(**batch).loss``, anything
        else needs ``loss_fn(model, batch) -> scalar loss``.
    budget: elements that may train: an int count, or a fraction in (0, 1] of the candidates' elements
        (at "row"/"column" granularity: of their 2-D weights' elements).
    """
    if granularity not in GRANULARITIES:
        raise SelectionError(f"impact: granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if score not in SCORES:
        raise SelectionError(f"impact: score must be one of {SCORES}, got {score!r}")
    candidates = find_candidates(model, types, "impact")
    skipped: list[tuple[str, str]] = []
    if granularity != "module":
        candidates, skipped = _matrix_weights(model, candidates, granularity)
    dim = {"row": 0, "column": 1}.get(granularity)
    params = dict(model.named_parameters())
    if dim is None:
        everything = Coverage()
        for c in candidates:
            everything.add(c.parts)
        available = everything.elements
    else:
        available = sum(params[w].numel() for w in dict.fromkeys(c.weight for c in candidates))
    limit = budget_limit(budget, available, "impact")  # checked before the passes, which cost a backward each
    batches = list(batches)
    if not batches:
        raise SelectionError("impact: no calibration batches: give at least one")

    wanted: dict[str, set[int | None]] = {}  # parameter -> the dims its gradient is reduced to (None: a scalar)
    for c in candidates:
        if dim is not None:
            wanted.setdefault(c.weight, set()).add(dim)
            continue
        for name, expert, _ in c.parts:
            wanted.setdefault(name, set()).add(None if expert is None else 0)  # an expert: one sum per slice of dim 0
    sums = score_gradients(model, batches, wanted, score, loss_fn)
    if all(float(s.abs().sum()) == 0 for s in sums.values()):
        raise SelectionError("impact: the loss has zero gradient for every candidate on the calibration batches: check "
                             "that the loss depends on the chosen modules (types=)")

    total = sum(p.numel() for p in model.parameters())
    how = {"score": score, "granularity": granularity,
           "budget": {"budget": budget, "limit": limit, "used": 0, "candidates": available}}
    if dim is None:
        return _select_modules(candidates, sums, limit, total, how)
    return _select_slices(params, candidates, sums, dim, limit, total, how | {"skipped": skipped})


def score_gradients(model: nn.Module, batches: list, wanted: dict[str, set[int | None]], score: str,
                    loss_fn: Callable | None) -> dict[tuple[str, int | None], torch.Tensor]:
    """{(parameter, kept dim): float64 scores on the CPU}: per batch, |g * w| (taylor) or g^2 (fisher)
    summed over every dim but the kept one (all dims for None), then summed over the batches."""
    params = dict(model.named_parameters())
    saved = [(p, p.requires_grad, p.grad) for p in params.values()]
    sums: dict[tuple[str, int | None], torch.Tensor] = {}

    def reducer(name: str, dims: set[int | None]):
        def reduce_and_drop(p: torch.Tensor) -> None:
            dtype = torch.promote_types(p.dtype, torch.float32)
            g = p.grad.to(dtype)
            elementwise = (g * p.detach().to(dtype)).abs_() if score == "taylor" else g.square()
            for keep in dims:
                if keep is None:
                    value = elementwise.sum(dtype=torch.float64)
                else:
                    others = [d for d in range(elementwise.dim()) if d != keep]
                    value = elementwise.sum(others, dtype=torch.float64) if others else elementwise.double()
                sums[name, keep] = value if (name, keep) not in sums else sums[name, keep] + value
            p.grad = None  # the gradient is reduced: drop it before the next one arrives

        return reduce_and_drop

    handles = []
    training = model.training
    try:
        for p, _, _ in saved:
            p.requires_grad_(False)
            p.grad = None
        for name, dims in wanted.items():
            params[name].requires_grad_(True)
            handles.append(params[name].register_post_accumulate_grad_hook(reducer(name, dims)))
        model.eval()
        for batch in batches:
            calibration_loss(model, batch, loss_fn, "impact").backward()
    finally:
        for h in handles:
            h.remove()
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad
        model.train(training)
    # A parameter the loss does not reach got no gradient: its score is 0.
    for name, dims in wanted.items():
        for keep in dims:
            if (name, keep) not in sums:
                shape = params[name].shape
                sums[name, keep] = torch.zeros(() if keep is None else shape[keep], dtype=torch.float64)
    return {key: value.cpu() for key, value in sums.items()}


def _matrix_weights(model: nn.Module, candidates: list[Candidate], granularity: str):
    """The candidates whose weight is a 2-D tensor (row and column units need one), and the others with why."""
    params = dict(model.named_parameters())
    kept, skipped = [], []
    for c in candidates:
        if c.expert is not None:
            skipped.append((c.name, f"an expert of a fused tensor: {granularity}s are chosen in 2-D weights only"))
        elif params[c.weight].dim() != 2:
            skipped.append((c.name, f"a {params[c.weight].dim()}-D tensor: {granularity}s need a 2-D weight"))
        else:
            kept.append(c)
    if not kept:
        raise SelectionError(f"impact: granularity={granularity!r} needs candidates with 2-D weights and none of the "
                             f"{len(candidates)} has one ({skipped[0][0]}: {skipped[0][1]}): use granularity='module'")
    return kept, skipped


def _select_modules(candidates: list[Candidate], sums, limit: float, total: int, how: dict) -> Selection:
    scores = []
    for c in candidates:
        s = 0.0
        for name, expert, _ in c.parts:
            s += float(sums[name, None]) if expert is None else float(sums[name, 0][expert])
        scores.append(s)
    sizes = [c.size for c in candidates]
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i] / sizes[i] if sizes[i] else 0.0, i))
    chosen, coverage = [], Coverage()
    for i in order:
        if coverage.elements + coverage.added(candidates[i].parts) <= limit:
            coverage.add(candidates[i].parts)
            chosen.append(i)
    if not chosen:
        raise SelectionError(f"impact: budget {how['budget']['budget']!r} ({limit:,.0f} parameters) is below the "
                             f"smallest candidate ({min(sizes):,}): give a larger budget")
    taken = set(chosen)
    how["budget"]["used"] = coverage.elements
    how["scores"] = {c.name: s for c, s in zip(candidates, scores)}
    return Selection("impact", [c.name for i, c in enumerate(candidates) if i in taken], coverage.elements, total,
                     [candidates[i].name for i in chosen], how)


def _select_slices(params: dict, candidates: list[Candidate], sums, dim: int, limit: float, total: int,
                   how: dict) -> Selection:
    weights = list(dict.fromkeys(c.weight for c in candidates))  # a tied weight once
    unit_size = [params[w].numel() // params[w].shape[dim] for w in weights]  # elements of one row / column
    scores = torch.cat([sums[w, dim] for w in weights])
    sizes = torch.cat([torch.full((params[w].shape[dim],), s, dtype=torch.float64) for w, s in zip(weights, unit_size)])
    owner = torch.cat([torch.full((params[w].shape[dim],), k) for k, w in enumerate(weights)]).tolist()
    index = torch.cat([torch.arange(params[w].shape[dim]) for w in weights]).tolist()
    order = torch.argsort(-(scores / sizes), stable=True).tolist()  # ties: model order

    picked: dict[int, list[int]] = {}  # weight -> its rows / columns, in the order taken
    used = 0
    size_of = sizes.tolist()
    for u in order:
        if used + size_of[u] <= limit:
            used += int(size_of[u])
            picked.setdefault(owner[u], []).append(index[u])
    if not picked:
        raise SelectionError(f"impact: budget {how['budget']['budget']!r} ({limit:,.0f} parameters) is below the "
                             f"smallest {'row' if dim == 0 else 'column'} ({min(unit_size):,} elements): give a "
                             f"larger budget")
    how["budget"]["used"] = used
    how["weight_scores"] = {w: float(sums[w, dim].sum()) for w in weights}
    how["rows" if dim == 0 else "columns"] = {weights[k]: sorted(picked[k]) for k in sorted(picked)}
    return Selection("impact", [f"^{weights[k]}$" for k in sorted(picked)], used, total,
                     [weights[k] for k in picked], how)
