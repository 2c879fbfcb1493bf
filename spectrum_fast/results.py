"""Scan results: rows, Spectrum's selection, and the reference's file formats.

Formats (spectrum.py, cognitivecomputations/spectrum):
- ``snr_results_<slug>.json``: {module: {"snr": float, "type": str}} (json.dump, indent=4);
- ``snr_results_<slug>_sorted.json``: {type: {module: snr}} sorted by SNR, descending;
- ``snr_results_<slug>_unfrozenparameters_<p>percent.yaml``: ``unfrozen_parameters:``, the
  embedding and head patterns, then per type a ``# <type> layers`` comment and ``- <module>`` lines.

Axolotl's Spectrum plugin (axolotl.integrations.spectrum.SpectrumPlugin, ``pre_model_load``) reads
``./model_snr_results/snr_results_<slug>.json`` from the folder Axolotl runs in, with ``<slug>``
from ``spectrum_model_name`` (else ``base_model``) by spectrum.py's rule, in the name -> {snr, type}
layout only, and builds ``unfrozen_parameters`` from it with Spectrum's rule at
``spectrum_top_fraction``; without that file it downloads the published one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import SelectionError
from .files import atomic_write_text, names_directory, read_json_file
from .naming import model_slug, percent_label
from .selection import group_by_type, select_by_type

# spectrum.py always writes these two lines; they are the Llama names.
REFERENCE_HEAD_PATTERN = "^lm_head.weight$"
REFERENCE_EMBEDDING_PATTERN = "^model.embed_tokens.weight$"
AXOLOTL_FOLDER = "model_snr_results"  # Axolotl's Spectrum plugin reads it in its working directory


@dataclass
class MatrixRow:
    """One scanned matrix. Fields other than name/type/snr are None for rows read from JSON."""

    name: str
    type: str
    snr: float
    shape: tuple[int, int] | None = None
    dtype: str | None = None
    sigma_max: float | None = None
    sigma: float | None = None
    threshold: float | None = None
    n_signal: int | None = None
    n_noise: int | None = None
    status: str = "ok"  # "ok" | "nonfinite" | "zero"
    seconds: float | None = None
    estimate: bool = False  # the fast mode's: sigma and the noise sum estimated, not all values solved


@dataclass
class ScanResult:
    rows: list[MatrixRow]
    model_name: str
    embedding_name: str | None = None  # parameter name of the input embedding, when known
    head_name: str | None = None  # parameter name of the output head, when known
    device: str | None = None
    precision: str | None = None
    method: str = "exact"  # "exact" (every singular value) or "fast" (scan(method="fast"))
    estimator: str = "spectrum"  # the noise scale's estimator (ops.noise_edge.ESTIMATORS)
    seconds: float | None = None
    read_seconds: float | None = None  # reading + host-to-device copies (overlapped on CUDA)
    compute_seconds: float | None = None  # Gram + eigenvalues + statistics
    read_wait_seconds: float | None = None  # of compute_seconds, spent waiting for the reader
    peak_gpu_bytes: int | None = None
    peak_host_bytes: int | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (tensor, reason)
    file_base: str | None = None  # set when read from a file: spectrum.py names the YAML after it
    from_cache: bool = False  # every row came from the result cache or a resume journal: nothing was computed
    cached_rows: int = 0  # rows taken from the cache's entry of a finished scan
    resumed_rows: int = 0  # rows taken from the journal of an interrupted scan
    # A distributed scan's ranks, one dict each: rank, host, device, matrices, predicted_seconds
    # (partition.py's cost), busy_seconds, read/compute/read_wait seconds, peak_gpu/host_bytes.
    # The fields above are this process's own.
    ranks: list[dict] | None = None
    # scan(keep_spectra=True): each matrix's singular values (float64, descending) by module name;
    # written beside the JSON by to_spectra (spectra.py), read by the report.
    spectra: dict[str, np.ndarray] | None = field(default=None, repr=False)

    # -- selection ---------------------------------------------------------------------------
    def _groups(self) -> dict[str, list[tuple[str, float]]]:
        return group_by_type((r.name, r.type, r.snr) for r in self.rows)

    def select_by_type(self, top_percent: float) -> dict[str, list[str]]:
        """{type: [module names]} chosen by Spectrum's rule, best first."""
        return select_by_type(self._groups(), top_percent)

    def select(self, top_percent: float) -> list[str]:
        """Module names to train at ``top_percent`` (Spectrum's per-type rule)."""
        return [name for names in self.select_by_type(top_percent).values() for name in names]

    # -- files -------------------------------------------------------------------------------
    @property
    def json_base(self) -> str:
        return self.file_base or f"snr_results_{model_slug(self.model_name)}"

    def spectrum_json(self) -> str:
        data = {r.name: {"snr": r.snr, "type": r.type} for r in self.rows}
        return json.dumps(data, indent=4)

    def sorted_json(self) -> str:
        data = {
            t: dict(sorted(members, key=lambda item: -math.inf if math.isnan(item[1]) else item[1], reverse=True))
            for t, members in self._groups().items()
        }
        return json.dumps(data, indent=4)

    def to_spectrum_json(self, directory: str | os.PathLike = ".") -> tuple[Path, Path]:
        """Write ``snr_results_<slug>.json`` and ``..._sorted.json`` into ``directory``."""
        directory = Path(directory)
        main = atomic_write_text(directory / f"{self.json_base}.json", self.spectrum_json())
        srt = atomic_write_text(directory / f"{self.json_base}_sorted.json", self.sorted_json())
        return main, srt

    def yaml_text(self, top_percent: float, *, reference_names: bool = False) -> str:
        """The Axolotl ``unfrozen_parameters:`` file.

        With ``reference_names`` the embedding and head lines are spectrum.py's fixed Llama
        patterns; otherwise the model's own parameter names are used where they are known.
        """
        chosen = self.select_by_type(top_percent)
        head = REFERENCE_HEAD_PATTERN if reference_names or not self.head_name else f"^{self.head_name}$"
        emb = REFERENCE_EMBEDDING_PATTERN if reference_names or not self.embedding_name else f"^{self.embedding_name}$"
        lines = ["unfrozen_parameters:", f"- {head}", f"- {emb}"]
        for type_name, names in chosen.items():
            lines.append(f"# {type_name} layers")
            lines.extend(f"- {name}" for name in names)
        return "\n".join(lines) + "\n"

    def yaml_filename(self, top_percent: float) -> str:
        return f"{self.json_base}_unfrozenparameters_{percent_label(top_percent)}percent.yaml"

    def to_yaml(self, path: str | os.PathLike, top_percent: float, *, reference_names: bool = False) -> Path:
        """Write the YAML to ``path`` (a file, or a directory to get spectrum.py's file name)."""
        if names_directory(path):
            path = Path(path) / self.yaml_filename(top_percent)
        return atomic_write_text(path, self.yaml_text(top_percent, reference_names=reference_names))

    def to_spectra(self, directory: str | os.PathLike = ".") -> Path:
        """Write ``snr_results_<slug>_spectra.safetensors`` (the singular values and every row's
        details) into ``directory``; needs a scan with keep_spectra=True."""
        from .spectra import write_spectra

        return write_spectra(self, directory)

    def axolotl_json(self) -> str:
        """The plugin's layout, name -> {snr, type}. A NaN SNR (non-finite weights) is written as
        -Infinity: the plugin ranks with Python's sorted(), where a NaN can land anywhere (it compares
        false with everything); -Infinity ranks it last, as select() does."""
        data = {r.name: {"snr": -math.inf if math.isnan(r.snr) else r.snr, "type": r.type} for r in self.rows}
        return json.dumps(data, indent=4)

    def to_axolotl(self, directory: str | os.PathLike = ".", model_name: str | None = None) -> Path:
        """Write ``<directory>/model_snr_results/snr_results_<slug>.json`` for Axolotl's Spectrum plugin.

        ``<slug>`` comes from ``model_name`` (default: the scan's model name) by spectrum.py's rule;
        give Axolotl that name as ``spectrum_model_name`` and run it from ``directory``.
        """
        name = model_slug(model_name or self.model_name)
        return atomic_write_text(Path(directory) / AXOLOTL_FOLDER / f"snr_results_{name}.json", self.axolotl_json())

    # -- display -----------------------------------------------------------------------------
    def summary(self, top_percents: tuple[float, ...] = ()) -> str:
        """A plain-text table: one line per type (count, shape, SNR range, selected counts)."""
        by_type: dict[str, list[MatrixRow]] = {}
        for r in self.rows:
            by_type.setdefault(r.type, []).append(r)
        chosen = {p: self.select_by_type(p) for p in top_percents}
        head = f"{'type':<40} {'count':>6} {'shape':>13} {'snr min':>10} {'snr median':>11} {'snr max':>10}"
        head += "".join(f" {('top ' + percent_label(p) + '%'):>8}" for p in top_percents)
        out = [head, "-" * len(head)]
        for t, rows in by_type.items():
            snrs = sorted(r.snr for r in rows if not math.isnan(r.snr))
            shape = "x".join(map(str, rows[0].shape)) if rows[0].shape else "-"
            mn, med, mx = (snrs[0], snrs[len(snrs) // 2], snrs[-1]) if snrs else (math.nan,) * 3
            line = f"{t[:40]:<40} {len(rows):>6} {shape:>13} {mn:>10.4g} {med:>11.4g} {mx:>10.4g}"
            line += "".join(f" {len(chosen[p][t]):>8}" for p in top_percents)
            out.append(line)
        bad = [r for r in self.rows if r.status != "ok"]
        if bad:
            out.append(f"{len(bad)} matrices not ok: " + ", ".join(f"{r.name} ({r.status})" for r in bad[:5])
                       + (" ..." if len(bad) > 5 else ""))
        return "\n".join(out)

    def to_dict(self) -> dict:
        return asdict(self)


def load_results(path: str | os.PathLike) -> ScanResult:
    """Read a Spectrum result JSON in either published layout.

    - {module: {"snr": x, "type": t}} (most files), or
    - {type: {module: snr}} (the ``_sorted`` layout; the Llama-3.1-8B-Instruct file uses it).
    The YAML written from it is named after the JSON file, as spectrum.py names it.
    """
    path = Path(path)
    data = read_json_file(path, "no such result file: give the path of a snr_results_*.json",
                          "give a Spectrum snr_results file")
    if not isinstance(data, dict) or not data:
        raise SelectionError(f"{path}: expected a non-empty JSON object of Spectrum results")
    rows: list[MatrixRow] = []
    first = next(iter(data.values()))
    try:
        if isinstance(first, dict) and "snr" in first and "type" in first:
            for name, info in data.items():
                rows.append(MatrixRow(name=name, type=str(info["type"]), snr=float(info["snr"])))
        elif isinstance(first, dict):
            for type_name, members in data.items():
                for name, snr in members.items():
                    rows.append(MatrixRow(name=name, type=type_name, snr=float(snr)))
        else:
            raise TypeError
    except (TypeError, KeyError, ValueError, AttributeError):
        raise SelectionError(
            f"{path}: not a Spectrum result layout (expected name -> {{snr, type}} or type -> {{name: snr}})"
        ) from None
    model_name = path.stem[len("snr_results_"):] if path.stem.startswith("snr_results_") else path.stem
    return ScanResult(rows=rows, model_name=model_name, file_base=path.stem)
