"""Spectrum's selection rule: per type, sort by SNR descending, keep the first int(len * p / 100).

The sort is stable, so ties keep their order of appearance, as in spectrum.py. Rows whose SNR is
NaN (non-finite weights, meta tensors in old result files) sort last and are never selected;
spectrum.py's ordering of NaN is undefined, ours is documented.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .errors import SelectionError


def check_top_percent(top_percent: float) -> float:
    try:
        p = float(top_percent)
    except (TypeError, ValueError):
        raise SelectionError(f"top percent {top_percent!r} is not a number: give a value in (0, 100]") from None
    if not (0 < p <= 100):
        raise SelectionError(f"top percent {top_percent!r} is outside (0, 100]: give e.g. 25 or 50")
    return p


def _rank_key(snr: float) -> float:
    return -math.inf if math.isnan(snr) else snr


def group_by_type(entries: Iterable[tuple[str, str, float]]) -> dict[str, list[tuple[str, float]]]:
    """(name, type, snr) -> {type: [(name, snr), ...]} in order of first appearance."""
    groups: dict[str, list[tuple[str, float]]] = {}
    for name, type_name, snr in entries:
        groups.setdefault(type_name, []).append((name, snr))
    return groups


def select_by_type(groups: dict[str, list[tuple[str, float]]], top_percent: float) -> dict[str, list[str]]:
    """{type: [(name, snr)]} -> {type: [selected names, best first]} (every type kept, maybe empty)."""
    p = check_top_percent(top_percent)
    chosen: dict[str, list[str]] = {}
    for type_name, members in groups.items():
        ranked = sorted(members, key=lambda item: _rank_key(item[1]), reverse=True)
        keep = int(len(members) * p / 100)
        chosen[type_name] = [name for name, snr in ranked[:keep] if not math.isnan(snr)]
    return chosen
