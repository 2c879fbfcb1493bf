"""``snr``: Spectrum's rule (the top percent of each type by signal-to-noise ratio) as a Selection.

Its patterns are exactly those freeze(model, result, top_percent) applies: the selected modules plus
the embedding and the head (``^<name>$``; spectrum.py's fixed Llama lines for a result JSON), so
freezing by the Selection trains what freezing by the result trains.

The trainable count needs the model itself: a result's rows hold the scanned matrices only (and
rows read from a JSON not even their shapes), while a module name also trains its bias, and the
embedding and head are not rows of a default scan. So a count is never guessed from the rows; the
model is scanned, or given as ``model=``.
"""

from __future__ import annotations

import os

import torch

from ..errors import SelectionError
from ..freeze import preview_freeze, unfrozen_patterns
from ..results import ScanResult, load_results
from ..scan import scan
from ..selection import check_top_percent
from .selection import Selection


def snr(source, top_percent: float, *, model: torch.nn.Module | None = None, **scan_options) -> Selection:
    """Spectrum's selection at ``top_percent`` as a Selection.

    source: a ScanResult, a result JSON path (``snr_results_*.json``), or what scan() takes (an
        nn.Module, a model folder, a weights file), which is scanned with ``scan_options``.
    model: the nn.Module the selection is for, to count its parameters; default ``source`` when it
        is a module. Required otherwise.
    how: ``top_percent``, ``per_type`` ({type: {"selected": k, "matrices": n}}) and the scanned
        ``model_name``; modules: the selected ones, by type, best first within a type.
    """
    top_percent = check_top_percent(top_percent)
    if model is None and isinstance(source, torch.nn.Module):
        model = source
    if not isinstance(model, torch.nn.Module):
        got = "none" if model is None else f"a {type(model).__name__}"
        raise SelectionError(f"strategies.snr: the trainable count needs the model the selection is for: pass "
                             f"model= (an nn.Module), got {got}")
    is_json = isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(".json")
    if scan_options and (isinstance(source, ScanResult) or is_json):
        raise SelectionError(f"strategies.snr: scan options {sorted(scan_options)} apply only when it scans (a "
                             f"module, a folder or a weights file), not to a result")
    if isinstance(source, ScanResult):
        result = rule_source = source
    elif is_json:
        # Given to freeze's rule as the path: it adds spectrum.py's fixed lines, as freeze(model, path) does.
        result, rule_source = load_results(source), source
    else:
        result = rule_source = scan(source, **scan_options)

    patterns = unfrozen_patterns(rule_source, top_percent)
    counted = preview_freeze(model, patterns)
    chosen = result.select_by_type(top_percent)
    per_type: dict[str, dict[str, int]] = {}
    for row in result.rows:
        per_type.setdefault(row.type, {"selected": len(chosen.get(row.type, [])), "matrices": 0})["matrices"] += 1
    how = {"top_percent": top_percent, "per_type": per_type, "model_name": result.model_name}
    return Selection("snr", patterns, counted.trainable, counted.total,
                     [name for names in chosen.values() for name in names], how)
