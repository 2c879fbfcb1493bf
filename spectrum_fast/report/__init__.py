"""``spectrum-fast report`` and ``spectrum-fast compare``: what a scan found, as one self-contained
HTML page (and PNGs): SNR by layer and type, the selection, spectra against the Marchenko-Pastur
law, the top and bottom modules, the trainable share per percentage; two results compared; and
what any strategy's Selection trains in a model.

data.py computes, figures.py draws (matplotlib, Agg), html.py assembles, compare.py compares,
selection_page.py lays out a Selection's page.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import SelectionError
from ..files import atomic_write_bytes, atomic_write_text
from ..naming import percent_label
from ..results import ScanResult, load_results
from ..spectra import SUFFIX, read_spectra, spectra_beside
from ..strategies.selection import Selection
from . import data, figures
from .compare import COMPARE_PERCENTS, Comparison, compare_results
from .html import Section, page
from .selection_page import build_selection_report

__all__ = ["load_for_report", "build_report", "write_report", "compare_results", "build_comparison",
           "write_comparison", "Comparison", "build_selection_report", "write_selection_report"]


def load_for_report(path: str | os.PathLike) -> tuple[ScanResult, str | None]:
    """A result for the report: a spectra file (full rows and singular values), or a result JSON,
    with the spectra file written beside it when there is one. -> (result, a note on what is missing)."""
    path = Path(path)
    if path.name.endswith(SUFFIX):
        return read_spectra(path), None
    result = load_results(path)
    beside = spectra_beside(path)
    if beside is None:
        return result, (f"no {result.json_base}{SUFFIX} beside {path.name}: rescan with --keep-spectra for the "
                        f"spectra and the parameter shares")
    detailed = read_spectra(beside)
    if {r.name: r.snr for r in detailed.rows} != {r.name: r.snr for r in result.rows}:
        raise SelectionError(f"{beside}: its rows are not those of {path}: it belongs to another scan; "
                             f"move it away or rescan with --keep-spectra")
    detailed.file_base = result.file_base
    return detailed, None


def build_report(result: ScanResult, top_percent: float = 50, matrices: list[str] | None = None,
                 note: str | None = None) -> tuple[str, list[tuple[str, bytes]]]:
    """-> (the HTML page, [(png file name, png bytes)]) for ``result``."""
    unknown = [n for n in (matrices or []) if n not in {r.name for r in result.rows}]
    if unknown:
        raise SelectionError(f"--matrices: {unknown[0]} is not a matrix of this result (names as in its JSON)")
    label = percent_label(top_percent)
    pngs: list[tuple[str, bytes]] = []
    sections = []

    snr = data.snr_grid(result)
    heat = Section("snr", "SNR by layer and type")
    if snr.layers:
        pngs.append(("snr_heatmap.png", figures.png(figures.snr_heatmap(snr, f"{result.model_name}: SNR"))))
        heat.image(pngs[-1][1], "SNR heatmap")
    else:
        heat.text("no matrices in numbered blocks: nothing to lay out by layer", note=True)
    sections.append(heat)

    chosen = data.selection_grid(result, top_percent)
    selected = Section("selection", f"Selected and frozen at {label}%")
    if chosen.layers:
        pngs.append((f"selection_{label}percent.png",
                     figures.png(figures.selection_map(chosen, f"top {label}% per type: trained (green), frozen (red)"))))
        selected.image(pngs[-1][1], "selection map")
    n_chosen = len(result.select(top_percent))
    selected.text(f"{n_chosen} of {len(result.rows)} matrices selected at {label}% (Spectrum's rule: the top "
                  f"{label}% of each type by SNR).")
    sections.append(selected)

    spectra = Section("spectra", "Spectra against the Marchenko-Pastur law")
    if result.spectra is None:
        spectra.text(note or "no singular values in this result: scan with --keep-spectra", note=True)
    else:
        plots = []
        for row in data.matrices_to_plot(result, matrices):
            values = result.spectra.get(row.name)
            if values is None:
                continue
            name = f"spectrum_{row.name.replace('/', '_')}.png"
            pngs.append((name, figures.png(figures.spectrum_histogram(row, values))))
            plots.append((pngs[-1][1], row.name))
        spectra.text("Histogram of each matrix's singular values; the curve is the Marchenko-Pastur law of a "
                     "pure-noise matrix with the estimated sigma, the dashed line the threshold above which values "
                     "count as signal. Shown: each type's highest- and lowest-SNR matrix"
                     + (" (as chosen with --matrices)." if matrices else "."))
        spectra.images(plots)
    sections.append(spectra)

    table = Section("extremes", "Top and bottom modules per type")
    rows = []
    for type_name, (top, bottom) in data.top_and_bottom(result).items():
        rows += [[type_name, "top", r.name, f"{r.snr:.6g}"] for r in top]
        rows += [[type_name, "bottom", r.name, f"{r.snr:.6g}"] for r in bottom]
    table.table(["type", "", "module", "SNR"], rows, numeric={3})
    sections.append(table)

    shares = data.parameter_shares(result)
    share = Section("shares", "Trainable parameters per percentage")
    if shares is None:
        share.text(note or "this result has no matrix shapes: scan with --keep-spectra", note=True)
    else:
        pngs.append(("parameter_shares.png", figures.png(figures.parameter_share_plot(shares))))
        share.image(pngs[-1][1], "trainable share per percentage")
        share.table(["top percent", "trainable parameters", "of scanned", "share"],
                    [[f"{p:g}", f"{t:,}", f"{total:,}", f"{100 * t / total:.1f}%"] for p, t, total in shares],
                    numeric={1, 2, 3})
    sections.append(share)

    bad = [r for r in result.rows if r.status != "ok" or math.isnan(r.snr)]
    intro = [f"{len(result.rows)} matrices in {len({r.type for r in result.rows})} types"
             + (f"; {len(bad)} not ok ({', '.join(r.name for r in bad[:3])})" if bad else "") + "."]
    return page(f"Spectrum report: {result.model_name}", intro, sections), pngs


def _write(html_text: str, pngs: list[tuple[str, bytes]], out: str | os.PathLike,
           png_dir: str | os.PathLike | None) -> list[Path]:
    written = [atomic_write_text(out, html_text)]
    if png_dir is not None:
        written += [atomic_write_bytes(Path(png_dir) / name, data) for name, data in pngs]
    return written


def write_report(results: str | os.PathLike, out: str | os.PathLike = "report.html", top_percent: float = 50,
                 png_dir: str | os.PathLike | None = None, matrices: list[str] | None = None) -> list[Path]:
    """The report of ``results`` (a result JSON or spectra file) into ``out``, PNGs into ``png_dir``."""
    result, note = load_for_report(results)
    html_text, pngs = build_report(result, top_percent, matrices, note)
    return _write(html_text, pngs, out, png_dir)


def write_selection_report(selection: Selection, model, out: str | os.PathLike = "selection.html",
                           png_dir: str | os.PathLike | None = None) -> list[Path]:
    """The page of ``selection`` (a strategies.Selection) on ``model`` (the nn.Module it is for) into
    ``out``, its map as a PNG into ``png_dir``."""
    html_text, pngs = build_selection_report(selection, model)
    return _write(html_text, pngs, out, png_dir)


def build_comparison(a: ScanResult, b: ScanResult, percents=COMPARE_PERCENTS, a_label: str | None = None,
                     b_label: str | None = None) -> tuple[Comparison, str, list[tuple[str, bytes]]]:
    comparison = compare_results(a, b, percents, a_label, b_label)
    if comparison.common == 0:
        raise SelectionError(f"{comparison.a_label} and {comparison.b_label} have no matrix names in common: "
                             f"compare results of the same architecture")
    scatter = figures.png(figures.snr_scatter(comparison.a_snr, comparison.b_snr, comparison.common_types,
                                              comparison.a_label, comparison.b_label))
    stats = Section("types", "Per type")
    header = ["type", "matrices", "Spearman"] + [f"shared @{p:g}%" for p in percents]
    def share(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:.2f}"

    stats.table(header, [[t.type, t.matrices, f"{t.spearman:.4f}"] + [share(t.shared[p]) for p in percents]
                         for t in comparison.types]
                + [["all types", comparison.common, ""] + [share(comparison.shared[p]) for p in percents]],
                numeric=set(range(1, len(header))))
    stats.text("Spearman: rank correlation of the two SNRs of a type's matrices. Shared @P%: the share of A's "
               "selection at P% (each result selects by Spectrum's rule on all its rows) that B selects too.")
    plot = Section("scatter", "SNR against SNR").image(scatter, "SNR scatter")
    intro = [f"A: {comparison.a_label}", f"B: {comparison.b_label}",
             f"{comparison.common} matrices in both; {len(comparison.only_a)} only in A, {len(comparison.only_b)} only in B."]
    return comparison, page("Spectrum results compared", intro, [stats, plot]), [("compare_scatter.png", scatter)]


def write_comparison(a_path: str | os.PathLike, b_path: str | os.PathLike, out: str | os.PathLike = "compare.html",
                     percents=COMPARE_PERCENTS, png_dir: str | os.PathLike | None = None) -> tuple[Comparison, list[Path]]:
    a, b = load_results(a_path), load_results(b_path)
    comparison, html_text, pngs = build_comparison(a, b, percents, str(a_path), str(b_path))
    return comparison, _write(html_text, pngs, out, png_dir)
