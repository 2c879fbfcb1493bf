"""Probe (device tool): where the two_stage_gpu eigen route spends its time, per stage and per
kernel, with the package's defaults (compiled panel QR and chase where the extension has them).

Per case n:batch, float64 Grams of spiked random weights (fresh every run), after a warm-up:
- wall time per matrix of stage 1 (ops.band.reduce_to_band_), the band copy (lower_band), the
  chase (band_to_tridiagonal) and the tridiagonal eigenvalues, each synchronized;
- the kernels of one stage-1 run by CUDA time (torch.profiler), the top --top, per matrix.

    python bench/probes/stage_profile.py --cases 2048:32 4096:32 8192:4 [--top 12]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spectrum_fast import _extension  # noqa: E402
from spectrum_fast.kernels import tridiagonal  # noqa: E402
from spectrum_fast.ops import band  # noqa: E402
from eigen_engine import band_switches, grams  # noqa: E402
from timing import timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["2048:32", "4096:32", "8192:4"])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    compiled = _extension.cuda_ops() is not None
    print(torch.cuda.get_device_name(), torch.__version__, "compiled kernels:", compiled, flush=True)
    # The package's defaults where the kernels are built, else torch.geqrf and the Triton chase.
    with band_switches({"PANEL_KERNEL": compiled, "CHASE_KERNEL": compiled}):
        profile_cases(args.cases, args.width, args.top)


def profile_cases(cases: list[str], b: int, top: int) -> None:
    cuda = torch.device("cuda")
    for case in cases:
        n, batch = (int(x) for x in case.split(":"))
        for _ in range(2):  # the first run warms up (compiles, workspaces); the second is timed
            g = grams(batch, n, "cuda")
            t1, a = timed(lambda: band.reduce_to_band_(g, b), cuda)
            t2, bands = timed(lambda: band.lower_band(a, 2 * b), cuda)
            t3, de = timed(lambda: band.band_to_tridiagonal(bands, b), cuda)
            t4, _ = timed(lambda: tridiagonal.tridiagonal_eigvalsh(*de), cuda)
        ms = [1e3 * t / batch for t in (t1, t2, t3, t4)]
        print(f"\n## n={n} batch={batch} width={b}: ms per matrix: stage 1 {ms[0]:.2f}, lower_band {ms[1]:.2f}, "
              f"chase {ms[2]:.2f}, tridiagonal {ms[3]:.2f}, total {sum(ms):.2f}", flush=True)
        g = grams(batch, n, "cuda")
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            band.reduce_to_band_(g, b)
            torch.cuda.synchronize()
        rows = [(e.device_time_total, e.count, e.key) for e in prof.key_averages() if e.device_time_total > 0]
        total = sum(r[0] for r in rows)
        print(f"stage 1 kernels: {total / 1e3 / batch:.2f} ms per matrix of GPU time, {sum(r[1] for r in rows)} launches")
        for t, count, key in sorted(rows, reverse=True)[:top]:
            print(f"  {t / 1e3 / batch:8.3f} ms/matrix {100 * t / total:5.1f}% x{count:5d}  {key[:110]}")


if __name__ == "__main__":
    main()
