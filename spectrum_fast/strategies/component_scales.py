"""``components_selection``: after components.apply(), the allocated scales as a Selection.

apply() gives each wrapped layer a ``delta`` holding only the allocated scales (one element per kept
direction, nothing masked within it), so the trainable count is the allocation's kept node count.
Anything else the caller has set to require grad since apply() froze it trains too, and counts.
"""

from __future__ import annotations

import torch

from ..components import Allocation, ComponentLinear
from ..errors import SelectionError
from .selection import Selection
from .trainable import parameter_selection


def components_selection(model: torch.nn.Module, allocation: Allocation) -> Selection:
    """The Selection of ``model`` after ``components.apply(model, allocation)``: every ``<layer>.delta``.

    how: ``budget`` (scales kept), ``candidate_scales``, ``groups`` (how many), ``order`` (the groups
    in the order they were taken), ``edges`` (of the dependency graph), ``penalty`` (lambda) and
    ``kept`` ({layer: directions}); modules: the layers that keep scales, in the order taken.
    """
    wrapped = {name: m for name, m in model.named_modules() if isinstance(m, ComponentLinear)}
    kept = allocation.kept
    if not kept:
        raise SelectionError("components_selection: the allocation keeps no component scale: pass the Allocation "
                             "components.allocate() returned")
    for name, directions in kept.items():
        layer = wrapped.get(name)
        if layer is None or layer.directions.tolist() != directions:
            raise SelectionError(f"components_selection: {name} is not wrapped with the allocation's directions "
                                 f"{directions}: call spectrum_fast.components.apply(model, allocation) first")
    extra = sorted(set(wrapped) - set(kept))
    if extra:
        raise SelectionError(f"components_selection: {extra[0]} is wrapped but keeps no scale in this allocation: "
                             f"the model was applied another allocation; pass that one")

    deltas = [wrapped[name].delta for name in kept]
    own = {id(d) for d in deltas}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
    how = {"budget": allocation.kept_nodes, "candidate_scales": allocation.total_nodes,
           "groups": len(allocation.groups), "order": list(allocation.order), "edges": len(allocation.edges),
           "penalty": allocation.penalty, "kept": kept}
    # A group is a layer or a block ``<layer>[a:b]`` of one (module names never end in "]").
    taken = dict.fromkeys(g.rpartition("[")[0] if g.endswith("]") else g for g in allocation.order)
    modules = [m for m in taken if m in kept] + [m for m in kept if m not in taken]
    return parameter_selection(model, deltas + others, "components", how, modules)
