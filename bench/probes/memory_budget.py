"""Probe (device tool): GPU batch budget and float64 upcast chunk against speed and peak GPU memory,
on the Llama-3-8B-shaped checkpoint that bench/gpu_scan_vs_spectrum.py writes (warm page cache).

    python bench/probes/memory_budget.py --folder /tmp/llama3-8b   (writes the folder if missing)

Every configuration must give the same SNRs (they differ only in batching); the largest relative
difference to the first configuration is printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import spectrum_fast  # noqa: E402
from spectrum_fast import engine  # noqa: E402
from spectrum_fast.ops import gram  # noqa: E402
from workloads import write_llama3_8b  # noqa: E402

CONFIGS = [  # (batch budget MiB, upcast chunk MiB, next batch staged in pinned host memory)
    (1024, 256, False), (1024, 128, False), (1024, 128, True), (1280, 128, True), (1536, 128, True),
    (768, 128, True), (640, 128, True),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/llama3-8b")
    args = ap.parse_args()
    folder = Path(args.folder)
    if not (folder / "model.safetensors.index.json").exists():
        write_llama3_8b(folder)
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    spectrum_fast.scan(folder, device="cuda", progress=False, cache=False)  # warm the page cache and CUDA
    first = None
    print("| budget MiB | chunk MiB | pinned staging | seconds | peak GPU MiB | peak host MiB | read s | max rel SNR diff |")
    print("|---|---|---|---|---|---|---|---|")
    for budget, chunk, pinned in CONFIGS:
        gram._CHUNK_BYTES = chunk << 20
        engine.PINNED_STAGING = pinned
        torch.cuda.empty_cache()
        t = time.perf_counter()
        r = spectrum_fast.scan(folder, device="cuda", progress=False, cache=False, max_batch_bytes=budget << 20)
        seconds = time.perf_counter() - t
        snr = {row.name: row.snr for row in r.rows}
        first = first or snr
        diff = max(abs(snr[k] - first[k]) / abs(first[k]) for k in first)
        print(f"| {budget} | {chunk} | {pinned} | {seconds:.1f} | {r.peak_gpu_bytes / 2**20:.0f} | "
              f"{r.peak_host_bytes / 2**20:.0f} | "
              f"{r.read_seconds:.1f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
