"""Which modules a data-driven strategy may train, and exactly which elements each one trains.

Candidates are chosen as a scan chooses matrices (targets.plan_tasks, same ``types``): with
``types="auto"`` the >= 2-D weights inside the numbered blocks. A candidate is named by its
``unfrozen_parameters`` entry: the module name (``model.layers.3.mlp.down_proj``), or
``<parameter>.<e>`` for expert ``e`` of a fused 3-D expert tensor, as the scan names them.

What a candidate trains is what freeze() trains for that entry, so budgets and the reported
trainable count are the counts freeze() will see: a module name unfreezes every parameter whose
name it prefixes (Axolotl's re.match: the weight, its ``.bias``, and anything else it happens to
prefix), and ``<parameter>.<e>`` trains slice ``e`` of the fused tensor and row ``e`` of its
``_bias`` / ``.bias`` tensor [E, k]. These are the candidate's *parts*; two candidates can share a
part (a tied or prefixed tensor), so selections are counted through ``Coverage``, never by adding
sizes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..freeze import PatternMatcher  # freeze()'s own matching: what a candidate trains is what freeze() trains
from ..naming import module_name
from ..sources import ModuleSource
from ..targets import plan_tasks, require_some

# (canonical parameter name, expert index or None for the whole tensor, elements)
Part = tuple[str, "int | None", int]


@dataclass(frozen=True)
class Candidate:
    name: str  # its unfrozen_parameters entry: module name, or <parameter>.<e> for one fused expert
    weight: str  # the parameter holding its weight (the fused tensor for an expert)
    expert: int | None  # index into dim 0 of the fused tensor, else None
    layer: int | None  # the numbered block it sits in (its first all-digit name part), None outside the blocks
    parts: tuple[Part, ...]  # what freeze() trains for it

    @property
    def size(self) -> int:
        return Coverage().added(self.parts)


def block_index(name: str) -> int | None:
    """``model.layers.3.mlp.down_proj`` -> 3: the first all-digit dotted part, the block's number."""
    return next((int(p) for p in name.split(".") if p.isdigit()), None)


def canonical_names(model: nn.Module) -> dict[str, str]:
    """Every parameter name (tied aliases included) -> the name named_parameters() reports it under."""
    first: dict[int, str] = {}
    names = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names[name] = first.setdefault(id(p), name)
    return names


def find_candidates(model: nn.Module, types="auto", label: str = "strategy") -> list[Candidate]:
    """The candidates of ``model`` in model order; SelectionError when ``types`` matches nothing."""
    params = dict(model.named_parameters())
    infos = ModuleSource(model).tensors()  # what a scan of the module lists: tied weights once
    tasks, _ = plan_tasks(infos, types)
    require_some(tasks, infos, types, label)

    canonical = canonical_names(model)
    modules = [t.name for t in tasks if t.expert is None]
    matcher = PatternMatcher(modules)
    prefixed: dict[str, dict[str, int]] = {m: {} for m in modules}  # module candidate -> {parameter: elements}
    for alias, name in canonical.items():
        for i in matcher.matches(alias):
            prefixed[modules[i]][name] = params[name].numel()

    candidates = []
    for task in tasks:
        if task.expert is None:
            parts = tuple((n, None, k) for n, k in prefixed[task.name].items())
        else:
            parts = _expert_parts(task.tensor.name, task.expert, params)
        candidates.append(Candidate(task.name, task.tensor.name, task.expert, block_index(task.name), parts))
    return candidates


def _expert_parts(weight: str, expert: int, params: dict[str, torch.Tensor]) -> tuple[Part, ...]:
    """Slice ``expert`` of a fused [E, n, m] tensor and row ``expert`` of its [E, k] bias, as freeze() trains them."""
    fused = params[weight]
    parts = [(weight, expert, fused.numel() // fused.shape[0])]
    module = module_name(weight)
    for bias in (f"{module}_bias", f"{module}.bias"):
        b = params.get(bias)
        if b is not None and b.dim() == 2 and b.shape[0] == fused.shape[0]:
            parts.append((bias, expert, b.numel() // b.shape[0]))
    return tuple(parts)


class Coverage:
    """The elements a growing set of candidates trains, each counted once however many candidates share it."""

    def __init__(self):
        self.whole: set[str] = set()
        self.slices: dict[str, dict[int, int]] = {}  # parameter -> {expert: elements}
        self.elements = 0

    def added(self, parts: Iterable[Part]) -> int:
        """Elements ``parts`` would add (without adding them)."""
        extra, seen = 0, set()
        for name, expert, elements in sorted(parts, key=lambda part: part[1] is not None):  # whole tensors first
            if name in self.whole or (name, None) in seen or (name, expert) in seen:
                continue
            seen.add((name, expert))
            taken = self.slices.get(name, {})
            if expert is None:
                extra += elements - sum(taken.values())
            elif expert not in taken:
                extra += elements
        return extra

    def add(self, parts: Iterable[Part]) -> None:
        parts = list(parts)
        self.elements += self.added(parts)
        for name, expert, elements in parts:
            if expert is None:
                self.whole.add(name)
                self.slices.pop(name, None)
            elif name not in self.whole:
                self.slices.setdefault(name, {})[expert] = elements
