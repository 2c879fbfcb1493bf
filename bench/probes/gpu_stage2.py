"""Probe (device tool): which stage-2 arrangement makes the exact 8B scan fastest, once the band
to tridiagonal chase and the bisection run on the GPU (kernels.bulge, kernels.tridiagonal).

bench/kernels_bulge.py timed the kernels alone (n = 4096: 22 ms per matrix in batches of 32,
against 73 ms for dsbev on 15 host threads and 118 ms for syevd); this measures them inside the
scan, weights of the Llama-3-8B shapes already on the GPU (compute alone, no reading), each
arrangement warmed up on layer 0 (Triton compiles), then timed in --rounds interleaved rounds:

- host+syevd:  "auto" as before: bands to dsbev on the host while a thread is free, else syevd;
- host+gpu:    "auto" with the GPU chase in place of syevd when the host threads are busy;
- gpu:         every band to the GPU chase (two_stage_gpu), at band width 16, 32, 64;
- gpu s16:     the same at width 32 with 16 side streams instead of 8;
- host:        every band to dsbev on the host (two_stage);
- gpu w32 in flight 8: the GPU chase with at most 8 matrices pending, what a 2-core host got
  before engine.MIN_IN_FLIGHT (run it with SPECTRUM_FAST_HOST_WORKERS=2 beside "gpu w32").
Also the largest relative SNR difference of each against the host route (both exact).

    python bench/probes/gpu_stage2.py [--layers 32] [--rounds 2] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import spectrum_fast  # noqa: E402
from spectrum_fast import engine  # noqa: E402
from spectrum_fast.ops import eigen  # noqa: E402
from workloads import llama3_8b_layer  # noqa: E402

# name -> (eigen_route, AUTO_ROUTES, GPU_BANDWIDTH, GPU_STAGE2_STREAMS, engine.MIN_IN_FLIGHT)
ARRANGEMENTS = {
    "host+syevd": ("auto", ("two_stage", "syevd"), 32, 8, 64),
    "host+gpu": ("auto", ("two_stage", "two_stage_gpu", "syevd"), 32, 8, 64),
    "gpu w16": ("two_stage_gpu", eigen.AUTO_ROUTES, 16, 8, 64),
    "gpu w32": ("two_stage_gpu", eigen.AUTO_ROUTES, 32, 8, 64),
    "gpu w64": ("two_stage_gpu", eigen.AUTO_ROUTES, 64, 8, 64),
    "gpu w32 s16": ("two_stage_gpu", eigen.AUTO_ROUTES, 32, 16, 64),
    "host": ("two_stage", eigen.AUTO_ROUTES, 32, 8, 64),
    "gpu w32 in flight 8": ("two_stage_gpu", eigen.AUTO_ROUTES, 32, 8, 1),
}
DEFAULT_ONLY = [name for name in ARRANGEMENTS if "in flight" not in name]


def scan(weights: dict[str, torch.Tensor], name: str):
    route, auto_routes, width, streams, min_in_flight = ARRANGEMENTS[name]
    eigen.AUTO_ROUTES, eigen.GPU_BANDWIDTH, eigen.GPU_STAGE2_STREAMS = auto_routes, width, streams
    engine.MIN_IN_FLIGHT = min_in_flight
    torch.cuda.synchronize()
    t = time.perf_counter()
    result = spectrum_fast.scan(weights, device="cuda", progress=False, cache=False, eigen_route=route)
    return time.perf_counter() - t, result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=DEFAULT_ONLY, choices=list(ARRANGEMENTS))
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    weights = {}
    for layer in range(args.layers):
        weights.update(llama3_8b_layer(layer))
    torch.cuda.synchronize()
    layer0 = {k: v for k, v in weights.items() if ".layers.0." in k}
    for name in args.only:  # warm-up: compiles, cuSOLVER handles, host pool
        seconds, _ = scan(layer0, name)
        print(f"warm-up {name}: {seconds:.1f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in args.only}
    snr: dict[str, dict[str, float]] = {}
    for r in range(args.rounds):
        for name in args.only:
            seconds, result = scan(weights, name)
            times[name].append(seconds)
            snr[name] = {row.name: row.snr for row in result.rows}
            print(f"round {r} {name}: {seconds:.2f} s, peak GPU {result.peak_gpu_bytes / 2**20:.0f} MiB", flush=True)
    base = snr.get("host") or next(iter(snr.values()))
    print("\n| arrangement | seconds (median) | all | max rel SNR diff vs host (or the first) |\n|---|---|---|---|")
    for name in args.only:
        diff = max(abs(snr[name][k] - v) / abs(v) for k, v in base.items())
        print(f"| {name} | {statistics.median(times[name]):.2f} | {', '.join(f'{t:.2f}' for t in times[name])} | {diff:.1e} |")


if __name__ == "__main__":
    main()
