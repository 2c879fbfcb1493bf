"""``trainable_selection``: the Selection of whatever requires_grad says now (LoRA/peft adapters, full
fine-tuning, a hand-made freeze), so such runs sit in a comparison beside the scored strategies.

``parameter_selection`` is the shared step for every strategy that ends with chosen tensors rather
than chosen names (the low-rank factors, the component scales): one ``^name$`` pattern per tensor,
one ``<module>.<e>`` pattern per trained expert of a fused tensor that freeze() masked, and the
count of elements that receive gradients (of a masked tensor, its trained experts only).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..errors import SelectionError
from ..expert_masks import expert_mask_of
from ..freeze import expert_module
from ..naming import module_name
from .selection import Selection


def parameter_selection(model: torch.nn.Module, chosen: Iterable[torch.nn.Parameter], strategy: str,
                        how: dict | None = None, modules: list[str] | None = None) -> Selection:
    """The Selection that trains exactly ``chosen`` (parameters of ``model``; gradient masks respected).

    modules: the strategy's own list, most important first; default: the chosen tensors' modules in
    model order.
    """
    wanted = {id(p) for p in chosen}
    patterns, names, trainable, total, seen, expert_patterns = [], [], 0, 0, set(), set()
    for name, param in model.named_parameters():  # a tied tensor once, under its first name
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if id(param) not in wanted:
            continue
        wanted.discard(id(param))
        names.append(name)
        mask = expert_mask_of(param)
        module = expert_module(name, param) if mask is not None else None
        if module is None:
            patterns.append(f"^{name}$")
            trainable += param.numel()
        else:
            # freeze() trains part of a fused tensor only through ``<module>.<e>`` patterns.
            # A per-expert bias (``<module>_bias``) shares its weight's patterns.
            new = [f"{module}.{e}" for e in mask.experts if f"{module}.{e}" not in expert_patterns]
            patterns += new
            expert_patterns.update(new)
            trainable += param.numel() // param.shape[0] * len(mask.experts)
    if wanted:
        raise SelectionError(f"{strategy}: {len(wanted)} of the tensors to train are not parameters of this model: "
                             f"pass the model they belong to")
    if modules is None:
        modules = list(dict.fromkeys(module_name(n) for n in names))
    return Selection(strategy, patterns, trainable, total, modules, dict(how or {}))


def trainable_selection(model: torch.nn.Module, strategy: str = "custom", how: dict | None = None) -> Selection:
    """What trains in ``model`` now: every parameter with requires_grad=True (of a fused expert
    tensor freeze() masked, its trained experts). ``strategy`` names it ("lora", "full", ...);
    ``how`` (JSON-able) is kept as given, with the count of trainable tensors added."""
    chosen = [p for p in model.parameters() if p.requires_grad]
    return parameter_selection(model, chosen, strategy, {"rule": "requires_grad as set on the model",
                                                         "tensors": len(chosen), **(how or {})})
