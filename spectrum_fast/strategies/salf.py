"""SALF, semantic-aware layer freezing: train the blocks from the one where the logit lens says the
model's prediction settles, up to the top.

After Gu et al., "A Semantic-Aware Layer-Freezing Approach to Computation-Efficient Fine-Tuning of
Language Models" (arXiv 2406.11753), in a small form:

1. Calibration batches run forward (no gradients); every block's hidden state is read through the
   logit lens (logit_lens.py) as a next-token distribution p_l.
2. Per block l and token, the *transition* still to make is JS(p_l, p_final), the Jensen-Shannon
   divergence to the last block's distribution. Jensen-Shannon, not KL(p_final || p_l): early
   blocks' lens distributions put almost no mass on the tokens the final one predicts, so KL there
   is dominated by a few tokens' log(1/p) and its mean and spread measure those outliers; JS is
   symmetric, bounded by ln 2 and finite for disjoint supports. The per-block change
   JS(p_{l-1}, p_l) is reported too.
3. Its *deviation* is the (population) standard deviation of that transition over every real
   token of every batch: how unevenly the block's tokens stand from their final prediction.
4. The end-of-freezing block is the block with the smallest deviation, among all blocks but the
   last (the last block's distribution *is* p_final: its transition and deviation are 0 by
   definition, and it always trains). Blocks below it are frozen; it and every block above train.

With a budget, the end-of-freezing block is still reported, but the budget decides: whole blocks
are unfrozen from the deepest toward shallower ones while they fit; in the first block that does
not fit whole, its modules are taken in model order where each still fits, and the walk stops
there. The budget is never exceeded. Budget kinds:

- ``"params"``: elements that train (freeze()'s count of the chosen modules);
- ``"flops"``: an estimate of backward FLOPs per token over the candidate modules:
  2 x (elements that train) for the weight gradients, plus 2 x (elements of every candidate above
  the lowest block that trains) for the activation gradients that must flow back through them
  to reach it. Attention's score products, norms and the head are left out of the estimate.

Candidates are chosen as a scan chooses matrices (candidates.py, ``types``). A candidate inside a
numbered block belongs to that block; outside the blocks (``types="all"``) an embedding
(nn.Embedding) counts as below block 0, and anything else (the head, the final norm) as above the
last block. The budget is checked before the calibration passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn

from ..budget import budget_limit
from ..errors import SelectionError
from ..naming import module_name
from .candidates import Candidate, Coverage, find_candidates
from .logit_lens import lens_modules, lens_profile
from .selection import Selection

BUDGET_KINDS = ("params", "flops")


def salf(model: nn.Module, batches: Iterable, *, budget: int | float | None = None, budget_kind: str = "params",
         types="auto") -> Selection:
    """Choose the blocks to train by SALF (see the module's docstring); the model is not changed.

    batches: calibration batches, dicts with ``input_ids`` and optionally ``attention_mask``.
    budget: None (train from the end-of-freezing block up), or a fraction in (0, 1] of the
        candidates' total (elements, or estimated backward FLOPs per token), or an int count of it.
    budget_kind: "params" or "flops". types: which modules are candidates, as scan()'s.
    """
    if budget_kind not in BUDGET_KINDS:
        raise SelectionError(f"salf: budget_kind must be one of {BUDGET_KINDS}, got {budget_kind!r}")
    head, norm = lens_modules(model, "salf")
    candidates = find_candidates(model, types, "salf")
    position = _positions(model, candidates)
    costs = None if budget is None else _BudgetCosts(candidates, position, budget_kind)
    limit = None if costs is None else budget_limit(budget, costs.full, "salf", costs.unit)  # before the passes
    batches = list(batches)
    if not batches:
        raise SelectionError("salf: no calibration batches: give at least one dict with 'input_ids'")
    profile = lens_profile(model, batches, head, norm, "salf")
    _check_blocks(model, candidates, len(profile.transition))
    end = end_of_freezing_layer(profile.deviation)

    if costs is None:
        chosen = sorted((c for c in candidates if position[c.name] >= end), key=lambda c: -position[c.name])
        coverage = Coverage()
        for c in chosen:
            coverage.add(c.parts)
        budget_how = None
    else:
        chosen, coverage = costs.fill(limit, budget)
        lowest = min(position[c.name] for c in chosen)
        budget_how = {"kind": budget_kind, "budget": budget, "limit": limit,
                      "used": costs.cost(coverage.elements, lowest), "full": costs.full}

    names = {c.name for c in chosen}
    how = {"distance": "Jensen-Shannon divergence of logit-lens distributions, nats",
           "transition": profile.transition, "deviation": profile.deviation, "change": profile.change,
           "end_of_freezing_layer": end, "tokens": profile.tokens, "budget": budget_how}
    return Selection("salf", [c.name for c in candidates if c.name in names], coverage.elements,
                     sum(p.numel() for p in model.parameters()), [c.name for c in chosen], how)


def end_of_freezing_layer(deviation: list[float]) -> int:
    """The block with the smallest deviation among all but the last (the shallowest on a tie)."""
    if len(deviation) == 1:
        return 0
    return min(range(len(deviation) - 1), key=lambda block: (deviation[block], block))


def _positions(model: nn.Module, candidates: list[Candidate]) -> dict[str, float]:
    """Candidate -> the block it counts in: its own; -1 for an embedding outside the blocks, +inf for
    anything else outside them (above every block)."""
    modules = dict(model.named_modules())
    position = {}
    for c in candidates:
        if c.layer is not None:
            position[c.name] = c.layer
        else:
            position[c.name] = -1 if isinstance(modules.get(module_name(c.weight)), nn.Embedding) else math.inf
    return position


def _check_blocks(model: nn.Module, candidates: list[Candidate], blocks: int) -> None:
    for c in candidates:
        if c.layer is not None and c.layer >= blocks:
            raise SelectionError(f"salf: {c.name} is in block {c.layer}, but {type(model).__name__} returned hidden "
                                 f"states for {blocks} blocks: choose the decoder blocks' modules with types=")


class _BudgetCosts:
    """What a selection costs under a budget kind, and the walk that fills the budget (see the module's docstring)."""

    def __init__(self, candidates: list[Candidate], position: dict[str, float], kind: str):
        self.kind = kind
        self.unit = "parameters" if kind == "params" else "backward FLOPs per token (estimate)"
        self.by_block: dict[float, list[Candidate]] = {}
        for c in candidates:
            self.by_block.setdefault(position[c.name], []).append(c)
        self.order = sorted(self.by_block, reverse=True)  # deepest first
        # above[b]: elements of the candidates in blocks above b, whose activation gradients a block-b module needs.
        self.above, seen = {}, Coverage()
        for block in self.order:
            self.above[block] = seen.elements
            for c in self.by_block[block]:
                seen.add(c.parts)
        self.full = self.cost(seen.elements, self.order[-1])

    def cost(self, trained: int, lowest: float) -> int:
        return trained if self.kind == "params" else 2 * (trained + self.above[lowest])

    def fill(self, limit: float, budget) -> tuple[list[Candidate], Coverage]:
        """Whole blocks from the deepest down while they fit; then the modules of the first block that
        does not fit whole, in model order where each still fits; then stop."""
        chosen, coverage = [], Coverage()
        for block in self.order:
            group = self.by_block[block]
            parts = [part for c in group for part in c.parts]
            if self.cost(coverage.elements + coverage.added(parts), block) <= limit:
                chosen += group
                coverage.add(parts)
                continue
            for c in group:
                if self.cost(coverage.elements + coverage.added(c.parts), block) <= limit:
                    chosen.append(c)
                    coverage.add(c.parts)
            break
        if not chosen:
            deepest = self.order[0]
            smallest = min(self.cost(Coverage().added(c.parts), deepest) for c in self.by_block[deepest])
            raise SelectionError(f"salf: budget {budget!r} ({limit:,.0f} {self.unit}) is below the smallest module of "
                                 f"the deepest block ({smallest:,}): give a larger budget")
        return chosen, coverage
