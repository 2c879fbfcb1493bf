"""Kept spectra (scan(keep_spectra=True), spectra.py), the report and the comparison
(spectrum_fast/report/): the singular values against a float64 SVD, the file round trip, and the
HTML and PNG files: real images of the expected size with content, every part of the page there."""

from __future__ import annotations

import base64
import io
import math
import random
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
import matplotlib.image  # noqa: E402

import spectrum_fast  # noqa: E402
from spectrum_fast.errors import SelectionError  # noqa: E402
from spectrum_fast.ops.mp_law import mp_support  # noqa: E402
from spectrum_fast.report import build_comparison, build_report, figures, load_for_report  # noqa: E402
from spectrum_fast.report.data import parameter_shares, snr_grid  # noqa: E402
from spectrum_fast.results import load_results  # noqa: E402
from spectrum_fast.spectra import read_spectra, spectra_beside  # noqa: E402

BUNDLED = Path(__file__).resolve().parent / "data" / "spectrum_reference"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("snr", "selection", "spectra", "extremes", "shares")


def random_weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    out = {}
    for layer in range(3):
        for kind, (n, m) in {"attn.q": (48, 48), "mlp.up": (rng.choice([64, 80]), 48), "mlp.down": (48, 72)}.items():
            w = torch.randn(n, m, generator=g) / math.sqrt(m)
            r = rng.randrange(1, 6)
            w += (torch.randn(n, r, generator=g) @ torch.randn(r, m, generator=g)) * rng.uniform(0.05, 0.5)
            out[f"model.layers.{layer}.{kind}.weight"] = w
    return out


def check_png(data: bytes, size: tuple[int, int] | None = None) -> None:
    """A decodable PNG of ``size`` (width, height) with content: not one colour, not nearly all
    white, and some coloured pixels (axes and text are grey; data are drawn in colour)."""
    assert data[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    if size is not None:
        assert (pixels.shape[1], pixels.shape[0]) == size
    rgb = pixels[..., :3]
    assert rgb.std() > 0.02, "a blank image"
    not_white = (rgb < 0.95).any(axis=-1).mean()
    assert not_white > 0.01, f"only {not_white:.1%} of the pixels are drawn on"
    coloured = (rgb.max(axis=-1) - rgb.min(axis=-1) > 0.25).mean()
    assert coloured > 0.0003, f"only {coloured:.2%} of the pixels are coloured: no data drawn"  # empty axes: 0
    assert len(np.unique(rgb.reshape(-1, 3).round(2), axis=0)) > 8, "too few colours for a plot"


# -- kept spectra ---------------------------------------------------------------------------------
def test_kept_spectra_are_the_singular_values(seed):
    weights = random_weights(seed)
    result = spectrum_fast.scan(weights, device="cpu", progress=False, keep_spectra=True)
    assert set(result.spectra) == {r.name for r in result.rows}
    for row in result.rows:
        w = weights[row.name + ".weight"].double().numpy()
        want = np.linalg.svd(w, compute_uv=False)  # float64, descending
        got = result.spectra[row.name]
        assert got.dtype == np.float64 and got.shape == want.shape
        # The Gram route: values near zero carry sqrt(eps) * sigma_max of absolute error.
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-7 * want[0], err_msg=f"seed={seed} {row.name}")
        assert int((got > row.threshold).sum()) == row.n_signal, (seed, row.name)


def test_the_spectra_file_round_trips(seed, tmp_path):
    result = spectrum_fast.scan(random_weights(seed), device="cpu", progress=False, keep_spectra=True,
                                model_name="toy")
    result.to_spectrum_json(tmp_path)
    path = result.to_spectra(tmp_path)
    assert spectra_beside(tmp_path / f"{result.json_base}.json") == path
    assert spectra_beside(tmp_path / f"{result.json_base}_sorted.json") == path
    back = read_spectra(path)
    assert [(r.name, r.type, r.snr, r.shape, r.sigma, r.threshold, r.n_signal) for r in back.rows] == \
        [(r.name, r.type, r.snr, r.shape, r.sigma, r.threshold, r.n_signal) for r in result.rows]
    for name, values in result.spectra.items():
        assert np.array_equal(back.spectra[name], values)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SelectionError, match="unreadable spectra file"):
        read_spectra(path)


def test_keep_spectra_needs_the_exact_method_and_computes_what_the_cache_holds(seed, cache_dir):
    weights = random_weights(seed)
    with pytest.raises(SelectionError, match="keep_spectra"):
        spectrum_fast.scan(weights, device="cpu", progress=False, keep_spectra=True, method="fast")
    spectrum_fast.scan(weights, device="cpu", progress=False)  # fills the cache
    again = spectrum_fast.scan(weights, device="cpu", progress=False, keep_spectra=True)
    assert again.cached_rows == 0 and len(again.spectra) == len(again.rows)


def test_the_mp_curve_is_a_density(seed):
    rng = random.Random(seed)
    for beta in (rng.uniform(0.05, 0.95), 1.0 / 3.0, 0.25):
        sigma = rng.uniform(0.1, 3.0)
        lo, hi = mp_support(beta)
        s = np.linspace(sigma * math.sqrt(lo), sigma * math.sqrt(hi), 200001)[1:-1]
        trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it
        area = trapezoid(figures.mp_sigma_density(s, sigma, beta), s)
        assert area == pytest.approx(1.0, abs=2e-3), (seed, beta, sigma)


# -- figures and the report -------------------------------------------------------------------------
def test_figures_are_real_images(seed):
    result = spectrum_fast.scan(random_weights(seed), device="cpu", progress=False, keep_spectra=True)
    grid = snr_grid(result)
    width, height = figures._grid_size(grid)
    check_png(figures.png(figures.snr_heatmap(grid, "t")), (round(width * figures.DPI), round(height * figures.DPI)))
    row = result.rows[0]
    check_png(figures.png(figures.spectrum_histogram(row, result.spectra[row.name])), (640, 360))
    check_png(figures.png(figures.parameter_share_plot(parameter_shares(result))), (640, 360))
    snr = np.array([r.snr for r in result.rows])
    check_png(figures.png(figures.snr_scatter(snr, snr * 1.1, [r.type for r in result.rows], "a", "b")), (640, 600))


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self.current = None
        self.links: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.current = attrs["id"]
            self.sections[self.current] = []
        elif tag == "img":
            self.sections[self.current].append(attrs["src"])
        elif tag == "table":
            self.tables += 1
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])


def parse_page(text: str) -> _Page:
    parsed = _Page()
    parsed.feed(text)
    return parsed


def images_of(srcs: list[str]) -> list[bytes]:
    prefix = "data:image/png;base64,"
    assert all(s.startswith(prefix) for s in srcs)
    return [base64.b64decode(s[len(prefix):]) for s in srcs]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spectrum_fast", *args], capture_output=True, text=True, timeout=300)


def test_the_demo_models_report_has_every_part(tmp_path):
    """The README's demo model: scan with --keep-spectra, then report (HTML and PNGs)."""
    scanned = run_cli("scan", "--demo", "--device", "cpu", "--keep-spectra", "--no-progress", "--out", str(tmp_path))
    assert scanned.returncode == 0, scanned.stderr
    (json_path,) = [p for p in tmp_path.glob("snr_results_*.json") if not p.name.endswith("_sorted.json")]
    out, png_dir = tmp_path / "report.html", tmp_path / "png"
    report = run_cli("report", str(json_path), "--out", str(out), "--png", str(png_dir), "--top-percent", "25")
    assert report.returncode == 0, report.stderr
    page = parse_page(out.read_text(encoding="utf-8"))
    assert set(SECTIONS) <= set(page.sections), page.sections.keys()
    assert all(link.startswith(("data:", "#")) for link in page.links), "self-contained: nothing fetched"
    assert len(page.sections["snr"]) == 1 and len(page.sections["selection"]) == 1
    assert len(page.sections["spectra"]) == 12, "6 types: the highest and lowest SNR matrix of each"
    assert len(page.sections["shares"]) == 1 and page.tables == 2
    for data in images_of([src for srcs in page.sections.values() for src in srcs]):
        check_png(data)
    pngs = sorted(png_dir.glob("*.png"))
    assert len(pngs) == 15 and (png_dir / "selection_25percent.png").exists()
    for p in pngs:
        check_png(p.read_bytes())
    assert "36 matrices in 6 types" in out.read_text(encoding="utf-8")


def test_a_published_json_reports_without_spectra(tmp_path):
    result, note = load_for_report(BUNDLED / "snr_results_HuggingFaceTB-SmolLM-135M.json")
    assert result.spectra is None and "--keep-spectra" in note
    text, pngs = build_report(result, 50, note=note)
    page = parse_page(text)
    assert len(page.sections["snr"]) == 1 and len(page.sections["selection"]) == 1
    assert page.sections["spectra"] == [] and page.sections["shares"] == []
    assert "rescan with --keep-spectra" in text
    for _, data in pngs:
        check_png(data)


def test_a_spectra_file_of_another_scan_is_refused(seed, tmp_path):
    a = spectrum_fast.scan(random_weights(seed), device="cpu", progress=False, keep_spectra=True, model_name="toy")
    b = spectrum_fast.scan(random_weights(seed + 1), device="cpu", progress=False, keep_spectra=True, model_name="toy")
    (main, _) = a.to_spectrum_json(tmp_path)
    b.to_spectra(tmp_path)
    with pytest.raises(SelectionError, match="belongs to another scan"):
        load_for_report(main)


# -- comparison ----------------------------------------------------------------------------------
def test_comparison_of_a_result_with_itself_and_with_its_reverse(seed):
    a = spectrum_fast.scan(random_weights(seed), device="cpu", progress=False)
    same, _, pngs = build_comparison(a, a)
    assert all(t.spearman == pytest.approx(1.0) for t in same.types)
    assert all(v == 1.0 for v in same.shared.values() if not math.isnan(v))
    check_png(pngs[0][1], (640, 600))
    reversed_rows = [type(r)(name=r.name, type=r.type, snr=1.0 / r.snr) for r in a.rows]
    flipped = build_comparison(a, type(a)(rows=reversed_rows, model_name="flipped"))[0]
    assert all(t.spearman == pytest.approx(-1.0) for t in flipped.types), seed
    assert flipped.shared[50] == 0.0, "at 50% (1 of 3 per type) A's top is B's bottom"


def test_compare_cli_against_the_published_llama_file(tmp_path):
    """The bundled Llama-3.1-8B result against itself in its other layout: same ranking, same selection."""
    published = BUNDLED / "snr_results_meta-llama-Meta-Llama-3.1-8B-Instruct.json"
    result = load_results(published)
    result.file_base = "copy"
    (copy, _) = result.to_spectrum_json(tmp_path)
    proc = run_cli("compare", str(published), str(copy), "--out", str(tmp_path / "c.html"), "--png", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "all types" in proc.stdout and "1.0000" in proc.stdout
    page = parse_page((tmp_path / "c.html").read_text(encoding="utf-8"))
    check_png(images_of(page.sections["scatter"])[0])
    check_png((tmp_path / "compare_scatter.png").read_bytes())


@pytest.mark.parametrize("args, message", [
    (["report", "missing.json"], "no such result file"),
    (["compare", "missing.json", "missing.json"], "no such result file"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "spectrum_fast", *args], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "compare.html").exists()


def test_report_out_that_is_a_folder_is_refused(tmp_path):
    published = BUNDLED / "snr_results_HuggingFaceTB-SmolLM-135M.json"
    proc = run_cli("report", str(published), "--out", str(tmp_path))
    assert proc.returncode == 2 and "is a folder" in proc.stderr
