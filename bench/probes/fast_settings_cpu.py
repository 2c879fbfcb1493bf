"""The fast mode's truncated-SVD settings against the exact mode's "mp-moments" rows, on the CPU:
relative SNR difference and signal counts of 3 trained-looking 768 x 2560 weights
(bench/workloads.py generated_like) for (values found first, oversampling, subspace iterations).

    python bench/probes/fast_settings_cpu.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from run_info import run_info  # noqa: E402
from workloads import generated_like  # noqa: E402

import spectrum_fast  # noqa: E402
from spectrum_fast.ops import fast_snr  # noqa: E402


def main() -> None:
    info = run_info(torch.device("cpu"))
    print(f"# {info['device']} (CPU, this machine), {info['date']}, commit {info['commit']}: {info['command']}")
    weights = {f"model.layers.1.mlp.experts.{i}.up_proj.weight": generated_like((768, 2560), seed=i, kind="spiked", device="cpu")
               for i in range(3)}
    exact = spectrum_fast.scan(weights, device="cpu", progress=False, estimator="mp-moments")
    print("| found first, oversampling, iterations | s | fast / exact SNR - 1 | signal values fast / exact |")
    print("|---|---|---|---|")
    for start, over, iters in [(32, 10, 2), (32, 32, 4), (64, 64, 2), (64, 64, 6), (96, 96, 3)]:
        fast_snr.START_VALUES, fast_snr.OVERSAMPLE, fast_snr.POWER_ITERS = start, over, iters
        t = time.perf_counter()
        fast = spectrum_fast.scan(weights, device="cpu", progress=False, method="fast")
        t = time.perf_counter() - t
        diffs = ", ".join(f"{f.snr / e.snr - 1:+.4f}" for e, f in zip(exact.rows, fast.rows))
        counts = ", ".join(f"{f.n_signal}/{e.n_signal}" for e, f in zip(exact.rows, fast.rows))
        print(f"| {start}, {over}, {iters} | {t:.2f} | {diffs} | {counts} |")


if __name__ == "__main__":
    main()
