"""Probe (device tool): does the two-stage route (GPU dense->band + host LAPACK dsbev) beat
cuSOLVER syevd for float64 eigenvalues, for which band width, batch and size?

    python bench/probes/two_stage.py   (prints a log; two_stage.log beside it holds the H100 run)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from spectrum_fast.ops import band, band_eigen, eigen  # noqa: E402


def gram(batch, n, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(batch, n, 2 * n, generator=g, device="cuda", dtype=torch.float64)
    w[:, : n // 16] *= 20
    return w @ w.mT


def timed(fn, reps=3):
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def main():
    print(torch.cuda.get_device_name(), torch.__version__, "host workers", band_eigen.host_workers(), flush=True)
    for n in (1024, 2048, 4096):
        g = gram(1, n)
        print(f"syevd fp64 n={n}: {1e3 * timed(lambda: torch.linalg.eigvalsh(g)):.1f} ms/matrix", flush=True)
    # Stage 1 alone (GPU), per matrix, for band widths and batch sizes.
    for n in (1024, 4096):
        for width in (8, 16, 32, 64):
            for batch in (1, 5, 8):
                g = gram(batch, n)
                dt = timed(lambda: band.lower_band(band.reduce_to_band_(g.clone(), width), width).cpu(), reps=2)
                print(f"stage1 n={n} width={width} batch={batch}: {1e3 * dt / batch:.1f} ms/matrix", flush=True)
    # Stage 2 alone (host), one thread, and the pool's throughput.
    for n in (1024, 4096):
        for width in (8, 16, 32, 64):
            g = gram(1, n)
            rows = band.lower_band(band.reduce_to_band_(g.clone(), width), width).cpu().numpy()[0]
            t = time.perf_counter()
            band_eigen.band_eigvalsh(rows.copy())
            one = time.perf_counter() - t
            count = 2 * band_eigen.host_workers()
            t = time.perf_counter()
            futs = [band_eigen.submit_call(band_eigen.band_eigvalsh, rows.copy()) for _ in range(count)]
            [f.result() for f in futs]
            pool = (time.perf_counter() - t) / count
            print(f"stage2 dsbev n={n} width={width}: one thread {1e3 * one:.0f} ms, pool {1e3 * pool:.1f} ms/matrix", flush=True)
    # End to end through eigvalsh_deferred, as the engine drives it (batches of 5, pipelined).
    for width in (8, 16, 32, 64):
        eigen.bandwidth_for = lambda n, w=width: w
        for n, total, batch in ((4096, 40, 5), (1024, 64, 16)):
            gs = [gram(batch, n, seed=s) for s in range(total // batch)]
            truth = [torch.linalg.eigvalsh(g).cpu() for g in gs]
            torch.cuda.synchronize()
            t = time.perf_counter()
            pend = [eigen.eigvalsh_deferred(g.clone(), route="two_stage") for g in gs]
            got = [p.result() for p in pend]
            dt = (time.perf_counter() - t) / total
            err = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(got, truth))
            t = time.perf_counter()
            for g in gs:
                torch.linalg.eigvalsh(g).cpu()
            syevd = (time.perf_counter() - t) / total
            print(f"pipeline n={n} width={width} batch={batch}: two_stage {1e3 * dt:.1f} ms/matrix, syevd {1e3 * syevd:.1f}"
                  f" ms/matrix, speedup {syevd / dt:.2f}x, max rel eig err {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
