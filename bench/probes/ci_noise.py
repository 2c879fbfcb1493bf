"""How noisy are timings on the shared 2-core CI box, and which clock and thread count keep the
speedup over Spectrum's computation steady? (Chose the CI perf check's settings, baselines/cpu.json.)

    python bench/probes/ci_noise.py

For each of (2 threads, wall clock), (1 thread, wall clock), (1 thread, CPU clock): the quick
shapes' times per matrix (min / median / max over the repeats) and the speedup (ratio of medians),
first as the box is, then with two busy-loop processes beside it (a neighbour taking the cores).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import shapes as shape_bench  # noqa: E402
from run_info import run_info  # noqa: E402

SHAPES = ["256x1024", "512x512", "512x2048"]
SETTINGS = [(2, "wall"), (1, "wall"), (1, "cpu")]
COUNT, REPEATS = 3, 15


def report(label: str, threads: int, clock: str) -> None:
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    methods = shape_bench.methods_for(device, ["spectrum_fast", "svdvals_fp32"])
    results = shape_bench.measure(SHAPES, device, methods, COUNT, REPEATS, accuracy=False, clock=clock)
    for shape, entry in results["shapes"].items():
        spread = "  ".join(f"{name} {min(r['runs_ms']):.1f}/{statistics.median(r['runs_ms']):.1f}/{max(r['runs_ms']):.1f} ms"
                           for name, r in entry["methods"].items())
        print(f"{label:10} threads={threads} clock={clock:4} {shape:9} speedup {entry['speedup']['spectrum_fast']:.2f}x  "
              f"(min/median/max) {spread}", flush=True)


def main() -> None:
    info = run_info(torch.device("cpu"))
    print(f"{info['date']}, {info['device']}, torch {info['torch']}, commit {info['commit']}; "
          f"{COUNT} matrices per shape, {REPEATS} repeats", flush=True)
    for threads, clock in SETTINGS:
        report("as is", threads, clock)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for threads, clock in SETTINGS:
            report("2 busy", threads, clock)
    finally:
        for p in busy:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
