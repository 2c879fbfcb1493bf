"""The report's figures (matplotlib, Agg backend: no display needed), each returned as a Figure
for ``png`` to encode."""

from __future__ import annotations

import io
import math

import numpy as np

from ..errors import SpectrumFastError
from ..ops.mp_law import mp_density, mp_support
from ..results import MatrixRow
from .data import Grid

DPI = 100


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SpectrumFastError("the report needs matplotlib: pip install matplotlib "
                                "(or pip install 'spectrum-fast[report]')") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    """The figure as PNG bytes (and closed: figures are not kept by pyplot)."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _grid_size(grid: Grid) -> tuple[float, float]:
    return min(16.0, max(6.0, 2.5 + 0.18 * len(grid.layers))), min(14.0, max(2.5, 1.2 + 0.32 * len(grid.types)))


def snr_heatmap(grid: Grid, title: str):
    """SNR by type (rows) and layer (columns), on a log colour scale (SNRs span decades)."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    fig, ax = plt.subplots(figsize=_grid_size(grid), constrained_layout=True)
    positive = grid.values[np.isfinite(grid.values) & (grid.values > 0)]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size and positive.min() < positive.max() else None
    values = np.where(grid.values > 0, grid.values, np.nan)
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="viridis", norm=norm, interpolation="nearest")
    _grid_axes(ax, grid)
    fig.colorbar(image, ax=ax, label="SNR (median over experts)" if any("*" in t for t in grid.types) else "SNR")
    ax.set_title(title)
    return fig


def selection_map(grid: Grid, title: str):
    """Selected (1) and frozen (0) by type and layer; for experts, the share selected."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=_grid_size(grid), constrained_layout=True)
    image = ax.imshow(np.ma.masked_invalid(grid.values), aspect="auto", cmap="RdYlGn", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
    _grid_axes(ax, grid)
    fig.colorbar(image, ax=ax, label="selected (1) / frozen (0)")
    ax.set_title(title)
    return fig


def _grid_axes(ax, grid: Grid) -> None:
    ax.set_yticks(range(len(grid.types)), grid.types, fontsize=8)
    step = max(1, len(grid.layers) // 32)
    ticks = list(range(0, len(grid.layers), step))
    ax.set_xticks(ticks, [str(grid.layers[j]) for j in ticks], fontsize=8)
    ax.set_xlabel("layer")


def mp_sigma_density(s: np.ndarray, sigma: float, beta: float) -> np.ndarray:
    """Density of a singular value s = sigma sqrt(x), x ~ Marchenko-Pastur(beta): the law a pure
    noise matrix's singular values follow in Spectrum's units (ops/mp_law.py)."""
    x = (np.asarray(s, dtype=np.float64) / sigma) ** 2
    return mp_density(x, beta).numpy() * 2.0 * np.asarray(s, dtype=np.float64) / sigma**2


def spectrum_histogram(row: MatrixRow, values: np.ndarray):
    """A matrix's singular values, the MP law for its estimated sigma, and the threshold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), constrained_layout=True)
    finite = values[np.isfinite(values)]
    ax.hist(finite, bins=min(120, max(20, finite.size // 8)), density=True, color="#4c72b0", alpha=0.75,
            label=f"singular values ({finite.size})")
    n, m = row.shape if row.shape else (finite.size, finite.size)
    beta = min(n, m) / max(n, m)
    if row.sigma and row.sigma > 0 and math.isfinite(row.sigma):
        lo, hi = mp_support(beta)
        s = np.linspace(row.sigma * math.sqrt(lo), row.sigma * math.sqrt(hi), 400)[1:-1]
        ax.plot(s, mp_sigma_density(s, row.sigma, beta), color="#dd8452", lw=2,
                label=f"Marchenko-Pastur, sigma = {row.sigma:.3g}")
    if row.threshold is not None and math.isfinite(row.threshold):
        ax.axvline(row.threshold, color="#c44e52", ls="--", lw=1.5, label=f"threshold {row.threshold:.3g}")
    ax.set_xlabel("singular value")
    ax.set_ylabel("density")
    ax.set_title(f"{row.name}  (SNR {row.snr:.4g}, {n}x{m})", fontsize=9)
    ax.legend(fontsize=8)
    return fig


def parameter_share_plot(shares: list[tuple[float, int, int]]):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), constrained_layout=True)
    ax.plot([p for p, _, _ in shares], [100.0 * t / total for _, t, total in shares], marker="o")
    ax.set_xlabel("top percent per type")
    ax.set_ylabel("trainable share of scanned parameters (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title("Trainable parameters by percentage")
    return fig


def snr_scatter(a: np.ndarray, b: np.ndarray, types: list[str], a_label: str, b_label: str):
    """SNR of the same matrices in two results, coloured by type, log-log with the diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 6.0), constrained_layout=True)
    ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    names = sorted(set(types))
    colours = plt.get_cmap("tab20", max(1, len(names)))
    type_array = np.asarray(types)
    for i, t in enumerate(names):
        sel = ok & (type_array == t)
        ax.scatter(a[sel], b[sel], s=10, color=colours(i), label=t if len(names) <= 20 else None)
    if ok.any():
        lo, hi = min(a[ok].min(), b[ok].min()), max(a[ok].max(), b[ok].max())
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(f"SNR: {a_label}")
    ax.set_ylabel(f"SNR: {b_label}")
    if len(names) <= 20:
        ax.legend(fontsize=7, markerscale=1.5)
    ax.set_title("SNR of the matrices in both results")
    return fig
