"""How this package's Triton kernels (stats, bulge, tridiagonal) are built and launched: compiled
for a CUDA device, or interpreted on the CPU under TRITON_INTERPRET=1 (the tests' way).

Triton 3.6 fixes a plain ``triton.jit`` function's mode when it decorates (at import). These
kernels are built at first launch instead, once per mode (``build``), and the mode is read at
every launch (``interpreting``), so TRITON_INTERPRET only has to be set when a kernel runs, and
interpreted CPU launches and compiled CUDA launches can share one process. The price: a kernel
body calls no jit function (tl.sum, tl.zeros and helpers of ours are ones); kernels/stats.py
explains. kernels/gram.py, autotuned, is a plain triton.jit kernel and does not use this.
"""

from __future__ import annotations

import functools
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: available() answers False and nothing launches.
    triton = tl = None


def interpreting() -> bool:
    """Whether Triton would interpret now (TRITON_INTERPRET, read at each call)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def available(device: torch.device | str, needs_sum_combine: bool = False) -> bool:
    """Whether a kernel can run on ``device``: triton importable (with tl.standard._sum_combine, for
    kernels that reduce through it), and a CUDA device, or the CPU under TRITON_INTERPRET=1."""
    if triton is None:
        return False
    if needs_sum_combine and not hasattr(getattr(tl, "standard", None), "_sum_combine"):
        return False  # triton 3.6's internal that kernels reduce with instead of tl.sum (see above)
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and interpreting()


@functools.lru_cache(maxsize=None)
def build(fn, interpret: bool, do_not_specialize: tuple[str, ...] = ()):
    """``fn`` (a plain Python function written as a Triton kernel) for one mode."""
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(fn, do_not_specialize=list(do_not_specialize))
    return triton.runtime.jit.JITFunction(fn, do_not_specialize=list(do_not_specialize))


def launch(kernel, grid: tuple[int, ...], device: torch.device, args: tuple, **options) -> None:
    """Run ``kernel`` (from ``build``) over ``grid``: on ``device`` when compiled; under numpy's
    quiet error state when interpreted (numpy warns where the GPU silently gives inf or NaN, as
    torch does). The interpreter ignores compile options such as num_warps."""
    if device.type == "cuda" and not interpreting():
        with torch.cuda.device(device):  # Triton launches on the current device
            kernel[grid](*args, **options)
        return
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        kernel[grid](*args, **options)


def output_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, poison: bool) -> torch.Tensor:
    """A kernel's output: filled with NaN when ``poison`` (tests: a tile the kernel fails to write
    shows up), else uninitialized."""
    if poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
