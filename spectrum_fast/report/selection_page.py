"""The page of one Selection (any strategy's answer) on its model: what trains, by layer and type,
and the summary a comparison needs (strategy, trainable parameters, share, how it was chosen).

The model is needed because a Selection lists what trains, not what stays frozen: the map's frozen
cells, and the parameters outside the numbered blocks, come from the model's own parameters,
matched by freeze()'s rule (the model is not changed).
"""

from __future__ import annotations

import json

import torch

from ..errors import SelectionError
from ..strategies.selection import Selection
from . import data, figures
from .html import Section, page

HOW_CHARS = 400  # a long ``how`` value (a components allocation's per-layer directions) is cut in the table


def build_selection_report(selection: Selection, model: torch.nn.Module,
                           title: str | None = None) -> tuple[str, list[tuple[str, bytes]]]:
    """-> (the HTML page, [(png file name, png bytes)]) for ``selection`` applied to ``model``."""
    if not isinstance(selection, Selection):
        raise SelectionError(f"the selection report takes a spectrum_fast.strategies.Selection, got a "
                             f"{type(selection).__name__}: build one with strategies.snr(), trainable_selection(), ...")
    if not isinstance(model, torch.nn.Module):
        raise SelectionError(f"the selection report needs the model the selection is for (an nn.Module), got a "
                             f"{type(model).__name__}")
    rows, preview = data.trained_tensors(model, selection)
    pngs: list[tuple[str, bytes]] = []

    summary = Section("summary", "What trains")
    summary.table(["strategy", "trainable parameters", "of", "share", "modules", "patterns"],
                  [[selection.strategy, f"{selection.trainable_params:,}", f"{selection.total_params:,}",
                    f"{100 * selection.fraction:.2f}%", len(selection.modules), len(selection.patterns)]],
                  numeric={1, 2, 3, 4, 5})
    if (preview.trainable, preview.total) != (selection.trainable_params, selection.total_params):
        summary.text(f"On this model freeze() trains {preview.trainable:,} of {preview.total:,} parameters by these "
                     f"patterns, not the selection's count: it was made for another model, or for this one in "
                     f"another state (decomposed, wrapped).", note=True)
    if preview.unmatched:
        shown = ", ".join(preview.unmatched[:3]) + (" ..." if len(preview.unmatched) > 3 else "")
        summary.text(f"{len(preview.unmatched)} patterns match no parameter of this model: {shown}", note=True)

    how = Section("how", "How it was chosen")
    if selection.how:
        how.table(["", "value"], [[key, _short(value)] for key, value in selection.how.items()])
    else:
        how.text("the selection records nothing on how it was chosen", note=True)

    grid = data.trained_grid(rows)
    trained = Section("map", "Trained and frozen by layer and type")
    if grid.layers:
        name = f"{selection.strategy}_trained_map.png"
        title_map = f"{selection.strategy}: trained (green), frozen (red)"
        pngs.append((name, figures.png(figures.selection_map(grid, title_map))))
        trained.image(pngs[-1][1], "trained map")
        trained.text("Each cell is one type of parameter in one numbered block: 1 when it trains, 0 when frozen; "
                     "for several tensors in a cell (experts) or a fused expert tensor trained in part, the share.")
    else:
        trained.text("no parameters in numbered blocks: nothing to lay out by layer", note=True)

    outside = Section("outside", "Outside the numbered blocks")
    rest = [r for r in rows if data.layer_index(r.name) is None]
    outside.table(["parameter", "elements", "trains"],
                  [[r.name, f"{r.elements:,}", "yes" if r.trained == r.elements else
                    f"{r.trained / r.elements:.0%}" if r.trained else "no"] for r in rest], numeric={1})

    intro = [str(selection)]
    return page(title or f"Selection report: {selection.strategy}", intro, [summary, how, trained, outside]), pngs


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= HOW_CHARS else text[:HOW_CHARS] + " ..."
