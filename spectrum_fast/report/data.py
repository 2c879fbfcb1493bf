"""What the report shows, computed from a scan's rows (no plotting here): SNR and selection by
layer and type, the top and bottom modules of each type, the trainable share of the parameters at
each percentage, and which matrices get a spectrum plot; and, for a Selection, what trains in each
parameter of a model."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ..freeze import FreezeReport, preview_freeze
from ..naming import layer_type, module_name, pooled_type
from ..results import MatrixRow, ScanResult
from ..selection import group_by_type, select_by_type

SHARE_PERCENTS = (5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 100)


def layer_index(name: str) -> int | None:
    """The block a module sits in: its first all-digit part (``model.layers.12.mlp`` -> 12)."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


@dataclass
class Grid:
    """Values by (type, layer): ``values[i, j]`` for ``types[i]`` in block ``layers[j]`` (NaN: none)."""

    types: list[str]
    layers: list[int]
    values: np.ndarray


def _grid(rows: list, value_of, reduce) -> Grid:
    """Rows (anything with a ``name`` and a ``type``: MatrixRow, TrainedTensor) grouped by (type with expert indices pooled, layer), each cell ``reduce`` of the values."""
    cells: dict[tuple[str, int], list[float]] = defaultdict(list)
    for row in rows:
        layer = layer_index(row.name)
        if layer is not None:
            cells[(pooled_type(row.type), layer)].append(value_of(row))
    types = sorted({t for t, _ in cells})
    layers = sorted({layer for _, layer in cells})
    values = np.full((len(types), len(layers)), np.nan)
    t_index, l_index = {t: i for i, t in enumerate(types)}, {layer: j for j, layer in enumerate(layers)}
    for (t, layer), vals in cells.items():
        finite = [v for v in vals if not math.isnan(v)]
        if finite:
            values[t_index[t], l_index[layer]] = reduce(finite)
    return Grid(types, layers, values)


def snr_grid(result: ScanResult) -> Grid:
    """Median SNR per type and layer (the median over a layer's experts for a MoE)."""
    return _grid(result.rows, lambda r: r.snr, lambda v: float(np.median(v)))


def selection_grid(result: ScanResult, top_percent: float) -> Grid:
    """Share of each cell's matrices selected at ``top_percent`` (0 or 1 without experts)."""
    chosen = set(result.select(top_percent))
    return _grid(result.rows, lambda r: 1.0 if r.name in chosen else 0.0, lambda v: float(np.mean(v)))


@dataclass
class TrainedTensor:
    """One parameter of a model under a Selection: the elements that receive gradients."""

    name: str
    type: str  # its module's type, as a scan names types (``self_attn.q_proj.first`` for a factor)
    elements: int
    trained: int  # all, none, or a fused expert tensor's trained experts


def trained_tensors(model, selection) -> tuple[list[TrainedTensor], FreezeReport]:
    """Every parameter of ``model`` (a tied one once) and what of it trains under ``selection`` by
    freeze()'s rule, without changing the model; with freeze()'s report."""
    report = preview_freeze(model, selection)
    whole = set(report.trainable_tensors) - set(report.trained_experts)
    rows = []
    for name, param in model.named_parameters():
        n = param.numel()
        experts = report.trained_experts.get(name)
        trained = n if name in whole else n // param.shape[0] * len(experts) if experts else 0
        rows.append(TrainedTensor(name, layer_type(module_name(name)), n, trained))
    return rows, report


def trained_grid(rows: list[TrainedTensor]) -> Grid:
    """Share of each cell's elements that train, by (type, layer) (parameters in numbered blocks)."""
    return _grid(rows, lambda r: r.trained / r.elements if r.elements else 0.0, lambda v: float(np.mean(v)))


def top_and_bottom(result: ScanResult, count: int = 5) -> dict[str, tuple[list[MatrixRow], list[MatrixRow]]]:
    """Per type: its ``count`` highest-SNR and lowest-SNR rows (NaN rows last, in neither list)."""
    by_type: dict[str, list[MatrixRow]] = defaultdict(list)
    for row in result.rows:
        by_type[row.type].append(row)
    out = {}
    for type_name, rows in sorted(by_type.items()):
        ranked = sorted((r for r in rows if not math.isnan(r.snr)), key=lambda r: r.snr, reverse=True)
        out[type_name] = (ranked[:count], ranked[::-1][:count])
    return out


def parameter_shares(result: ScanResult, percents=SHARE_PERCENTS) -> list[tuple[float, int, int]] | None:
    """(percent, trainable parameters, scanned parameters) per percentage: the scanned matrices'
    elements selected by Spectrum's rule. None for rows without shapes (a result read from JSON)."""
    if any(r.shape is None for r in result.rows):
        return None
    size = {r.name: r.shape[0] * r.shape[1] for r in result.rows}
    total = sum(size.values())
    groups = group_by_type((r.name, r.type, r.snr) for r in result.rows)
    return [(p, sum(size[n] for names in select_by_type(groups, p).values() for n in names), total)
            for p in percents]


def matrices_to_plot(result: ScanResult, names: list[str] | None = None, limit: int = 12) -> list[MatrixRow]:
    """The rows whose spectra are drawn: ``names`` if given, else each type's highest- and
    lowest-SNR matrix, at most ``limit`` in all."""
    by_name = {r.name: r for r in result.rows}
    if names:
        return [by_name[n] for n in names]
    picked: list[MatrixRow] = []
    for top, bottom in top_and_bottom(result, 1).values():
        for row in top + bottom:
            if row not in picked:
                picked.append(row)
    return picked[:limit]
