"""Probe (device tool): does the compiled batched panel QR (csrc/householder_panels.cu) speed up
stage 1 of the exact eigen route (ops.band.reduce_to_band_), and the route as a whole?

Per case n:width:batch, float64 Grams of spiked random weights, median of --repeats after a
warm-up, device synchronized:
- the panel QR alone on the first (largest) panel: torch.geqrf against _C.householder_panels_;
- stage 1 (dense -> band) with each (ops.band.PANEL_KERNEL off / on);
- the whole two_stage_gpu route with each, and torch.linalg.eigvalsh (cuSOLVER syevd) for scale;
- the largest eigenvalue difference against syevd's, relative to the largest eigenvalue.
Needs the extension built with CUDA first: `pip install --no-build-isolation -e .`.

    python bench/probes/panel_qr.py [--cases 1024:32:64 4096:32:8 ...] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spectrum_fast import _extension  # noqa: E402
from spectrum_fast.ops import band, eigen  # noqa: E402

CASES = ("1024:32:64", "2048:32:32", "4096:32:8", "4096:32:32", "4096:16:8", "8192:32:2")


def grams(batch: int, n: int) -> torch.Tensor:
    w = torch.randn(batch, n, n + n // 2, device="cuda", dtype=torch.float64)
    w[:, : max(1, n // 16)] *= 30.0
    return w @ w.mT


def timed(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ext = _extension.cuda_ops()
    if ext is None:
        sys.exit("panel_qr.py: spectrum_fast._C has no CUDA kernels: pip install --no-build-isolation -e . on the GPU machine")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    print("| n | width | batch | panel QR torch / kernel ms | stage 1 torch / kernel ms per matrix | "
          "two_stage_gpu torch / kernel ms per matrix | syevd ms per matrix | max eig diff (kernel route) |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        n, width, batch = (int(x) for x in case.split(":"))
        g = grams(batch, n)
        truth = torch.linalg.eigvalsh(g)
        panel = g[:, width:, :width]
        qr_torch = timed(lambda: torch.geqrf(panel), args.repeats)
        qr_kernel = timed(lambda: ext.householder_panels_(panel.clone(memory_format=torch.contiguous_format)), args.repeats)
        stage1, route = {}, {}
        eigen.GPU_BANDWIDTH = width
        for on in (False, True):
            band.PANEL_KERNEL = on
            stage1[on] = timed(lambda: band.reduce_to_band_(g.clone(), width), args.repeats) / batch
            route[on] = timed(lambda: eigen.eigvalsh_deferred(g.clone(), "two_stage_gpu").result(), args.repeats) / batch
        got = eigen.eigvalsh_deferred(g.clone(), "two_stage_gpu").result()
        diff = ((got - truth.cpu()).abs().max() / truth.abs().max().cpu()).item()
        syevd = timed(lambda: torch.linalg.eigvalsh(g[: min(batch, 8)]), args.repeats) / min(batch, 8)
        print(f"| {n} | {width} | {batch} | {qr_torch * 1e3:.2f} / {qr_kernel * 1e3:.2f} | "
              f"{stage1[False] * 1e3:.2f} / {stage1[True] * 1e3:.2f} | {route[False] * 1e3:.2f} / {route[True] * 1e3:.2f} | "
              f"{syevd * 1e3:.2f} | {diff:.1e} |", flush=True)
        del g, truth, panel
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
