"""Probe (device tool): where the two_stage_gpu eigen route spends its time, per stage and per
kernel, with the compiled panel QR and chase on (every panel) where the extension has them.

Per case n:batch, float64 Grams of spiked random weights (fresh every run), after a warm-up:
- wall time per matrix of stage 1 (ops.band.reduce_to_band_), the band copy (lower_band), the
  chase (band_to_tridiagonal) and the tridiagonal eigenvalues, each synchronized;
- the kernels of one stage-1 run by CUDA time (torch.profiler), the top --top, per matrix.

    python bench/probes/stage_profile.py --cases 2048:32 4096:32 8192:4 [--top 12]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spectrum_fast import _extension  # noqa: E402
from spectrum_fast.kernels import tridiagonal  # noqa: E402
from spectrum_fast.ops import band  # noqa: E402


def grams(batch: int, n: int) -> torch.Tensor:
    w = torch.randn(batch, n, n + n // 2, device="cuda", dtype=torch.float64)
    w[:, : max(1, n // 16)] *= 30.0
    return w @ w.mT


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["2048:32", "4096:32", "8192:4"])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    compiled = _extension.cuda_ops() is not None
    band.PANEL_KERNEL, band.CHASE_KERNEL = compiled, compiled
    band.PANEL_KERNEL_MIN_BATCH, band.PANEL_KERNEL_ROWS_PER_PANEL = 1, 1 << 30
    print(torch.cuda.get_device_name(), torch.__version__, "compiled kernels:", compiled, flush=True)
    b = args.width
    for case in args.cases:
        n, batch = (int(x) for x in case.split(":"))
        for warm in (True, False):
            g = grams(batch, n)
            a, t1 = timed(lambda: band.reduce_to_band_(g, b))
            bands, t2 = timed(lambda: band.lower_band(a, 2 * b))
            de, t3 = timed(lambda: band.band_to_tridiagonal(bands, b))
            _, t4 = timed(lambda: tridiagonal.tridiagonal_eigvalsh(*de))
        ms = [1e3 * t / batch for t in (t1, t2, t3, t4)]
        print(f"\n## n={n} batch={batch} width={b}: ms per matrix: stage 1 {ms[0]:.2f}, lower_band {ms[1]:.2f}, "
              f"chase {ms[2]:.2f}, tridiagonal {ms[3]:.2f}, total {sum(ms):.2f}", flush=True)
        g = grams(batch, n)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            band.reduce_to_band_(g, b)
            torch.cuda.synchronize()
        rows = [(e.device_time_total, e.count, e.key) for e in prof.key_averages() if e.device_time_total > 0]
        total = sum(r[0] for r in rows)
        print(f"stage 1 kernels: {total / 1e3 / batch:.2f} ms per matrix of GPU time, {sum(r[1] for r in rows)} launches")
        for t, count, key in sorted(rows, reverse=True)[: args.top]:
            print(f"  {t / 1e3 / batch:8.3f} ms/matrix {100 * t / total:5.1f}% x{count:5d}  {key[:110]}")


if __name__ == "__main__":
    main()
