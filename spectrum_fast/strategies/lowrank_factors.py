"""``lowrank_selection``: after decompose(), the LowRankLinear factors as a Selection.

What trains: the factor weights A (``first``) and B (``second``) of every LowRankLinear, or, with a
SequentialFreezing schedule, only the factor it trains at its current step; plus every other
parameter that requires grad now (decompose leaves the rest of the model as it was, so what the
caller left trainable, biases, norms, the embedding, trains too).
"""

from __future__ import annotations

from collections import Counter

import torch

from ..errors import SelectionError
from ..lowrank import FACTORS, DecompositionReport, LowRankLinear, SequentialFreezing
from .selection import Selection
from .trainable import parameter_selection


def lowrank_selection(model: torch.nn.Module, report: DecompositionReport | None = None,
                      sequential: SequentialFreezing | None = None) -> Selection:
    """The Selection of a decomposed ``model``: its factors (see the module's docstring).

    report: what decompose() returned for this model, checked against it and described in ``how``
        (kept energy, parameter counts). Either way, every LowRankLinear of the model counts.
    sequential: a SequentialFreezing of this model: only its current factor (``trained_factor``)
        counts among the factors; the other is left out even where it still requires grad.
    how: ``layers``, ``ranks`` ({rank: layers}), with a report ``dense_params``, ``lowrank_params``
        and ``kept_energy_min``, with a schedule ``sequential`` (steps, start, trained_factor).
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LowRankLinear)}
    if not layers:
        raise SelectionError("lowrank_selection: the model has no LowRankLinear layer: call "
                             "spectrum_fast.decompose(model, ...) first")
    ranks = Counter(m.rank for m in layers.values())
    how: dict = {"layers": len(layers), "ranks": {str(r): ranks[r] for r in sorted(ranks)}}
    if report is not None:
        for d in report.modules:
            layer = layers.get(d.name)
            if layer is None or layer.rank != d.rank:
                raise SelectionError(f"lowrank_selection: {d.name} is not a LowRankLinear of rank {d.rank} in this "
                                     f"model: pass the report decompose() returned for this model")
        how |= {"dense_params": report.dense_params, "lowrank_params": report.lowrank_params,
                "kept_energy_min": min((d.kept_energy for d in report.modules), default=1.0)}
    factors = FACTORS
    if sequential is not None:
        if {id(m) for m in sequential.layers} != {id(m) for m in layers.values()}:
            raise SelectionError("lowrank_selection: the SequentialFreezing was made for another model (its layers "
                                 "are not this model's LowRankLinear layers): pass the one built on this model")
        factors = (sequential.trained_factor,)
        how["sequential"] = {"steps": sequential.steps, "start": sequential.start,
                             "trained_factor": sequential.trained_factor}

    chosen = [getattr(m, f).weight for m in layers.values() for f in factors]
    # Everything else that requires grad trains too; a factor the schedule leaves out does not.
    all_factors = {id(getattr(m, f).weight) for m in layers.values() for f in FACTORS}
    chosen += [p for p in model.parameters() if p.requires_grad and id(p) not in all_factors]
    return parameter_selection(model, chosen, "lowrank", how, modules=list(layers))
