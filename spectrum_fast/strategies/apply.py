"""``apply_masks``: make a model train exactly what a Selection chose, rows and columns included."""

from __future__ import annotations

from torch import nn

from ..errors import SelectionError
from ..freeze import FreezeReport, PatternMatcher, freeze
from ..slice_masks import install_slice_mask
from .selection import Selection

_SLICE_KEYS = {"rows": 0, "columns": 1}  # how[...] key -> the weight's dim it indexes


def apply_masks(model: nn.Module, selection: Selection) -> FreezeReport:
    """freeze() the model to ``selection.patterns``, then give each weight listed in
    ``selection.how["rows"]`` / ``["columns"]`` a gradient mask (slice_masks.py) so that only those
    output rows / input columns receive gradients; the others get exact zeros. Returns freeze()'s
    report with ``trainable`` counting the selected rows / columns only. Nothing is changed when the
    selection names a weight or an index this model does not have.

    As with fused experts, weight decay still shrinks the masked rows: call
    ``spectrum_fast.mask_weight_decay(optimizer)``, which spares them. Axolotl reads only the
    patterns, so it would train those weights whole.
    """
    params = dict(model.named_parameters())
    patterns = list(selection.patterns)
    matcher = PatternMatcher(patterns)
    masks = []  # (parameter, dim, indices), all checked before the model is touched
    for key, dim in _SLICE_KEYS.items():
        for name, indices in (selection.how.get(key) or {}).items():
            p = params.get(name)
            if p is None or p.dim() != 2:
                raise SelectionError(f"apply_masks: the selection's how[{key!r}] names {name}, which is not a 2-D "
                                     f"parameter of this {type(model).__name__}: apply it to the model it was made for")
            if (not indices or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices)
                    or min(indices) < 0 or max(indices) >= p.shape[dim]):
                raise SelectionError(f"apply_masks: how[{key!r}][{name!r}] must list indices from 0 to "
                                     f"{p.shape[dim] - 1} ({name} has shape {tuple(p.shape)}): the selection was made "
                                     f"for another model")
            if not matcher.matches(name):
                raise SelectionError(f"apply_masks: {name} has {key} selected but no pattern unfreezes it: add "
                                     f"'^{name}$' to the selection's patterns")
            masks.append((name, p, dim, indices))
    if len({name for name, *_ in masks}) != len(masks):
        raise SelectionError("apply_masks: a weight is listed under both how['rows'] and how['columns']: give one")
    report = freeze(model, patterns)
    for name, p, dim, indices in masks:
        selected = len(set(indices))
        if selected < p.shape[dim]:
            install_slice_mask(p, dim, indices)
        report.trainable -= p.numel() // p.shape[dim] * (p.shape[dim] - selected)
    return report
