"""Every matrix's singular values, kept beside a scan's results (``scan(keep_spectra=True)``,
``spectrum-fast scan --keep-spectra``), so the report's histograms and other noise estimators read
them instead of scanning again.

The file, ``snr_results_<slug>_spectra.safetensors`` beside the JSON: one float64 tensor per
matrix, its singular values in descending order, named by module (exact, as the scan computed
them: 8 bytes a value, e.g. 6 MB for Llama-3-8B, 350 MB for DeepSeek-V2's 28,320 experts). Its
metadata holds ``model_name``, ``estimator`` and ``rows``: every row's details as JSON (type, SNR,
shape, dtype, sigma, threshold, signal count, status), which the reference's JSON does not carry.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch

from .errors import SelectionError
from .files import atomic_write_bytes
from .results import MatrixRow, ScanResult

SUFFIX = "_spectra.safetensors"
FORMAT = "spectrum_fast spectra 1"


def spectra_path(directory: str | os.PathLike, json_base: str) -> Path:
    return Path(directory) / f"{json_base}{SUFFIX}"


def spectra_beside(results_json: str | os.PathLike) -> Path | None:
    """The spectra file written with ``results_json`` (snr_results_<slug>.json or its _sorted
    twin), if there is one."""
    path = Path(results_json)
    base = path.name[: -len(".json")] if path.name.endswith(".json") else path.stem
    base = base[: -len("_sorted")] if base.endswith("_sorted") else base
    candidate = path.parent / f"{base}{SUFFIX}"
    return candidate if candidate.is_file() else None


def write_spectra(result: ScanResult, directory: str | os.PathLike) -> Path:
    """Write ``result.spectra`` (and its rows' details) next to the result's JSON, atomically."""
    from safetensors.torch import save

    if result.spectra is None:
        raise SelectionError("this result has no spectra: scan with keep_spectra=True (CLI: --keep-spectra)")
    path = spectra_path(directory, result.json_base)
    tensors = {name: torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
               for name, values in result.spectra.items()}
    rows = [dict(dataclasses.asdict(r), shape=list(r.shape) if r.shape else None) for r in result.rows]
    metadata = {"format": FORMAT, "model_name": result.model_name, "estimator": result.estimator,
                "precision": str(result.precision), "rows": json.dumps(rows)}
    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def read_spectra(path: str | os.PathLike) -> ScanResult:
    """A ScanResult with full rows and ``spectra`` from a spectra file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise SelectionError(f"{path}: no such spectra file: scan with --keep-spectra to write one")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise SelectionError(f"{path}: not a spectrum_fast spectra file (no '{FORMAT}' in its metadata)")
            spectra = {name: f.get_tensor(name).numpy() for name in f.keys()}
        rows = [MatrixRow(**dict(r, shape=tuple(r["shape"]) if r["shape"] else None))
                for r in json.loads(metadata["rows"])]
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise SelectionError(f"{path}: unreadable spectra file ({type(e).__name__}: {' '.join(str(e).split())}): "
                             f"scan again with --keep-spectra") from None
    model_name = metadata.get("model_name", "model")
    base = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.stem
    return ScanResult(rows=rows, model_name=model_name, estimator=metadata.get("estimator", "spectrum"),
                      precision=metadata.get("precision"), spectra=spectra, file_base=base)
