"""Probe (device tool): why a cold-cache scan takes longer than max(read alone, compute alone).
Varies the host band-solve threads, the IO threads, the batches read ahead, the order batches
run in and whether syevd runs on a side stream, on the
Llama-3-8B-shaped checkpoint, page cache dropped before each scan.

    python bench/probes/cold_overlap.py --folder /tmp/llama3-8b   (writes the folder if missing)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import spectrum_fast  # noqa: E402
from gpu_scan_vs_spectrum import drop_page_cache, read_alone  # noqa: E402
from spectrum_fast import engine  # noqa: E402
from spectrum_fast.ops import band_eigen, eigen  # noqa: E402
from workloads import write_llama3_8b  # noqa: E402

CONFIGS = [  # (host band-solve threads, IO threads, batches read ahead, batch order, syevd on a side stream)
    (15, 8, 3, "shape", False), (15, 8, 3, "model", False), (15, 8, 3, "shape", True),
    (15, 8, 3, "model", True), (12, 8, 3, "shape", False), (15, 4, 3, "shape", False),
    (15, 8, 6, "shape", False), (15, 8, 3, "shape", False),
]


def set_host_workers(n: int) -> None:
    os.environ["SPECTRUM_FAST_HOST_WORKERS"] = str(n)
    if band_eigen._pool is not None:  # the pool is made once: make it again at this size
        band_eigen._pool.shutdown(wait=True)
        band_eigen._pool = None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/llama3-8b")
    folder = Path(ap.parse_args().folder)
    if not (folder / "model.safetensors.index.json").exists():
        write_llama3_8b(folder)
    print(torch.cuda.get_device_name(), torch.__version__, os.cpu_count(), "cores", flush=True)
    from safetensors.torch import load_file

    resident = {}
    for shard in sorted(folder.glob("*.safetensors")):
        resident.update(load_file(str(shard), device="cuda"))
    spectrum_fast.scan(resident, device="cuda", progress=False)  # warm-up (CUDA, cuSOLVER)
    for side in (False, True):
        eigen.SYEVD_SIDE_STREAM = side
        torch.cuda.synchronize()
        t = time.perf_counter()
        spectrum_fast.scan(resident, device="cuda", progress=False)
        torch.cuda.synchronize()
        print(f"compute alone (weights on the GPU), syevd side stream {side}: {time.perf_counter() - t:.1f} s",
              flush=True)
    eigen.SYEVD_SIDE_STREAM = False
    del resident
    torch.cuda.empty_cache()
    for io in (8, 4):
        engine.IO_THREADS = io
        drop_page_cache()
        print(f"read alone, cold, {io} IO threads: {read_alone(folder):.1f} s", flush=True)
    print("| band threads | IO threads | read ahead | batch order | syevd side stream | cold scan s | reader s | peak GPU MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for workers, io, ahead, order, side in CONFIGS:
        set_host_workers(workers)
        engine.IO_THREADS, engine.PREFETCH_BATCHES, engine.BATCH_ORDER = io, ahead, order
        eigen.SYEVD_SIDE_STREAM = side
        drop_page_cache()
        torch.cuda.synchronize()
        t = time.perf_counter()
        r = spectrum_fast.scan(folder, device="cuda", progress=False)
        torch.cuda.synchronize()
        print(f"| {workers} | {io} | {ahead} | {order} | {side} | {time.perf_counter() - t:.1f} | "
              f"{r.read_seconds:.1f} | {r.peak_gpu_bytes / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
