"""``spectrum-fast doctor``: what is installed and built here, and what each operation of a scan
will use on a device. The choices come from the checks the operations themselves make (routes,
availability, switches), so the report follows them."""

from __future__ import annotations

import platform

import torch

from . import __version__
from . import _extension
from ._extension import kernels_available

# Matrix sizes (the Gram's side, min(n, m)) the eigen-route lines are given for.
SIZES = (256, 1024, 4096, 8192)

ROUTE_WORDS = {  # ops.eigen's routes, in words
    "syevd": "torch.linalg.eigvalsh",
    "two_stage": "two-stage, bands on the host",
    "two_stage_gpu": "two-stage, all on the GPU",
}


def _triton_line() -> str:
    try:
        import triton
    except ImportError:
        return "triton: not installed (the Triton kernels are off; torch and LAPACK do their work)"
    return f"triton: {triton.__version__}"


def _device_lines() -> list[str]:
    if not torch.cuda.is_available():
        return ["CUDA devices: none (scans run on the CPU)"]
    lines = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        lines.append(f"cuda:{i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
                     f"{p.multi_processor_count} SMs")
    return lines


def _extension_line() -> str:
    k = kernels_available()
    if not k["_C"]:
        return ("extension spectrum_fast._C: not built (build it with `pip install --no-build-isolation -e .` "
                "after torch; the package works without it)")
    if k["_C.cuda"]:
        return "extension spectrum_fast._C: built with its CUDA kernels"
    return "extension spectrum_fast._C: built, C++ part only (torch without CUDA, or no nvcc, at build time)"


def _operation_lines(device: torch.device) -> list[str]:
    from .kernels import stats as stats_kernel
    from .ops import band, band_eigen, eigen

    k = kernels_available()
    lines = [f"operations on {device}:",
             "  Gram: float64 matmul of float64-upcast chunks (exact); float32 option: fp32 accumulate, TF32 off"]
    routes = "; ".join(f"n={n}: {ROUTE_WORDS[eigen.choose_route(n, device, torch.float64)]}" for n in SIZES)
    lines.append(f"  eigenvalues (float64, host threads idle): {routes}")
    routes32 = "; ".join(f"n={n}: {ROUTE_WORDS[eigen.choose_route(n, device, torch.float32)]}" for n in SIZES)
    lines.append(f"  eigenvalues (float32: the float32 option; the GPU route solves them in float64): {routes32}")
    if device.type == "cuda":
        if band.PANEL_KERNEL and k["_C.householder_panels"]:
            panel = ("compiled kernel on a cluster of blocks per panel (_C.householder_panels_)" if band.PANEL_CLUSTER
                     else f"compiled kernel (_C.householder_panels_) where batch x {band.PANEL_KERNEL_ROWS_PER_PANEL} "
                          "rows cover the panel, else torch.geqrf")
            if band.COMPACT_WY_KERNEL and hasattr(_extension.cuda_ops(), "compact_wy"):
                panel += ", V and T in one launch (_C.compact_wy)"
        else:
            panel = "torch.geqrf (one cuSOLVER call per matrix)"
        loop = "C++ (_C.reduce_to_band_)" if band.STAGE1_IN_CPP and k["_C"] else "Python"
        if band.STAGE1_PANELS_PER_UPDATE > 1:
            loop += (f", one trailing update per {band.STAGE1_PANELS_PER_UPDATE} panels for "
                     f"n >= {band.STAGE1_GROUPED_MIN_N}")
        lines.append(f"  two-stage route, stage 1: loop in {loop}, panel QR by {panel}")
        chase = ("compiled pipelined chase (_C.band_to_tridiagonal_)" if band.CHASE_KERNEL and k["_C.bulge_chase"]
                 else "Triton bulge chase")
        gpu_stage2 = f"{chase} + Triton bisection" if eigen.gpu_stage2_available(device) else "unavailable (needs triton)"
        lines.append(f"  two-stage route, stage 2 on the GPU: {gpu_stage2}, n <= {eigen.GPU_STAGE2_MAX_N}")
    host = (f"LAPACK dsbev (scipy) on {band_eigen.host_workers()} host thread(s)" if band_eigen.available()
            else "unavailable (scipy missing)")
    lines.append(f"  two-stage route, band eigenvalues on the host: {host}")
    if device.type == "cuda":
        stats = "Triton kernel, one launch per batch" if stats_kernel.available(device) else "torch"
    else:
        stats = "C++ (_C.snr_statistics)" if k["_C.snr_statistics"] else "torch"
    lines.append(f"  statistics: {stats}")
    return lines


def report(device: str | torch.device | None = None) -> list[str]:
    """The doctor's lines for ``device`` (default: what a scan would pick)."""
    from .scan import resolve_device

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    lines = [f"spectrum-fast {__version__}, Python {platform.python_version()}, torch {torch.__version__} ({build})",
             _triton_line(), *_device_lines(), _extension_line()]
    return lines + _operation_lines(resolve_device(device))
