"""The computations bench/shapes.py times, each from the same bf16 weights to one SNR per matrix.

A method prepares its inputs untimed (fp32 copies for the SVDs: the reference script holds its
model in fp32) and then runs timed over all matrices of one shape. The SVD and fp32 Gram methods
go one matrix at a time, as Spectrum's script does; spectrum_fast takes them all in one scan call,
as a user would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import spectrum_fast
from spectrum_fast import ops
from spectrum_reference import snr_from_singular_values, spectrum_snr

SPECTRUM = "svdvals_fp32"  # Spectrum's computation: the reference every speedup is measured against


@dataclass(frozen=True)
class Method:
    name: str
    what: str
    prepare: Callable[[list[torch.Tensor]], Any]
    run: Callable[[Any], list[float]]
    cuda_only: bool = False


def _as_model_dict(weights: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    # Module-like names put every matrix under one type, so the scan batches them as one group.
    return {f"model.layers.{i}.mlp.w.weight": w for i, w in enumerate(weights)}


def _spectrum_fast(state: dict[str, torch.Tensor]) -> list[float]:
    device = next(iter(state.values())).device
    return [row.snr for row in spectrum_fast.scan(state, device=device, progress=False, cache=False).rows]


def _fp32(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    return [w.float() for w in weights]


def _svdvals(driver: str | None) -> Callable[[list[torch.Tensor]], list[float]]:
    return lambda ws: [spectrum_snr(w, driver=driver) for w in ws]


def _svd_full(ws: list[torch.Tensor]) -> list[float]:
    return [snr_from_singular_values(torch.linalg.svd(w, full_matrices=True).S, *w.shape) for w in ws]


def _gram_eigvalsh_fp32(ws: list[torch.Tensor]) -> list[float]:
    out = []
    for w in ws:
        eigenvalues = torch.linalg.eigvalsh(ops.gram(w, "float32"))  # fp32 Gram, TF32 off (ops.gram)
        out.append(ops.snr_statistics(eigenvalues.unsqueeze(0), *w.shape).snr[0].item())
    return out


METHODS = {m.name: m for m in [
    Method("spectrum_fast", "spectrum_fast.scan, exact (float64 Gram, eigen route auto)", _as_model_dict, _spectrum_fast),
    Method(SPECTRUM, "Spectrum's computation: fp32 svdvals, default driver", _fp32, _svdvals(None)),
    Method("svdvals_fp32_gesvd", "fp32 svdvals, driver gesvd", _fp32, _svdvals("gesvd"), cuda_only=True),
    Method("svdvals_fp32_gesvda", "fp32 svdvals, driver gesvda", _fp32, _svdvals("gesvda"), cuda_only=True),
    Method("svd_full_fp32", "fp32 torch.linalg.svd, full_matrices=True", _fp32, _svd_full),
    Method("gram_eigvalsh_fp32", "fp32 Gram (TF32 off) + fp32 eigvalsh", list, _gram_eigvalsh_fp32),
]}
