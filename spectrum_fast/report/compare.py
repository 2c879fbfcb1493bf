"""Two results side by side (two models, exact against fast, spectrum_fast against a published
Spectrum JSON): per type, how alike the SNR rankings are and how much the selections share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..results import ScanResult

COMPARE_PERCENTS = (10, 25, 50, 75)


@dataclass
class TypeComparison:
    type: str
    matrices: int  # in both results
    spearman: float  # rank correlation of the SNRs (NaN under 2 matrices)
    shared: dict[float, float]  # percent -> share of A's selection (of this type) that B selects too


@dataclass
class Comparison:
    a_label: str
    b_label: str
    common: int
    only_a: list[str]
    only_b: list[str]
    types: list[TypeComparison]
    shared: dict[float, float]  # percent -> over all types
    a_snr: np.ndarray = field(repr=False)  # the common matrices' SNRs, for the scatter plot
    b_snr: np.ndarray = field(repr=False)
    common_types: list[str] = field(repr=False)

    def table(self) -> str:
        percents = list(self.shared)
        head = f"{'type':<40} {'matrices':>8} {'spearman':>9}  " + "  ".join(f"{'@' + format(p, 'g') + '%':>6}"
                                                                       for p in percents)
        lines = [f"A: {self.a_label}", f"B: {self.b_label}",
                 f"{self.common} matrices in both; {len(self.only_a)} only in A, {len(self.only_b)} only in B",
                 "", "spearman: rank correlation of the SNRs; @P%: share of A's top P% that B selects too", "",
                 head]
        for t in self.types:
            cells = "  ".join(f"{t.shared[p]:>6.2f}" if not math.isnan(t.shared[p]) else f"{'-':>6}" for p in percents)
            lines.append(f"{t.type:<40} {t.matrices:>8} {t.spearman:>9.4f}  {cells}")
        cells = "  ".join(f"{self.shared[p]:>6.2f}" if not math.isnan(self.shared[p]) else f"{'-':>6}" for p in percents)
        lines.append(f"{'all types':<40} {self.common:>8} {'':>9}  {cells}")
        return "\n".join(lines)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    from scipy.stats import spearmanr

    value = spearmanr(x[ok], y[ok]).statistic
    return float(value)


def compare_results(a: ScanResult, b: ScanResult, percents=COMPARE_PERCENTS, a_label: str | None = None,
                    b_label: str | None = None) -> Comparison:
    """Compare on the matrices both results hold, by A's types. Selections are each result's own
    (Spectrum's per-type rule on all its rows), then compared on the common matrices."""
    b_rows = {r.name: r for r in b.rows}
    common = [r for r in a.rows if r.name in b_rows]
    a_names = {r.name for r in a.rows}
    selections = {p: (set(a.select(p)), set(b.select(p))) for p in percents}
    by_type: dict[str, list] = {}
    for r in common:
        by_type.setdefault(r.type, []).append(r)
    types = []
    for type_name, rows in sorted(by_type.items()):
        x = np.array([r.snr for r in rows], dtype=np.float64)
        y = np.array([b_rows[r.name].snr for r in rows], dtype=np.float64)
        shared = {}
        for p, (sel_a, sel_b) in selections.items():
            chosen = [r.name for r in rows if r.name in sel_a]
            shared[p] = sum(n in sel_b for n in chosen) / len(chosen) if chosen else float("nan")
        types.append(TypeComparison(type_name, len(rows), _spearman(x, y), shared))
    overall = {}
    for p, (sel_a, sel_b) in selections.items():
        chosen = [r.name for r in common if r.name in sel_a]
        overall[p] = sum(n in sel_b for n in chosen) / len(chosen) if chosen else float("nan")
    return Comparison(
        a_label=a_label or a.model_name, b_label=b_label or b.model_name, common=len(common),
        only_a=[r.name for r in a.rows if r.name not in b_rows], only_b=[n for n in b_rows if n not in a_names],
        types=types, shared=overall,
        a_snr=np.array([r.snr for r in common], dtype=np.float64),
        b_snr=np.array([b_rows[r.name].snr for r in common], dtype=np.float64),
        common_types=[r.type for r in common],
    )
