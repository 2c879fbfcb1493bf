"""Probe (device tool): why a cold-cache scan takes longer than max(read alone, compute alone).
Earlier versions varied the host band-solve threads, IO threads, read-ahead, batch order, syevd
on a side stream and O_DIRECT (results in bench/probes/cold_overlap_h100_*.log); this one
compares blocking-sync against spinning CUDA events for the host threads' waits
(staging.BLOCKING_SYNC), alternating, on the Llama-3-8B-shaped checkpoint: weights on the GPU,
cold page cache, warm page cache.

    python bench/probes/cold_overlap.py --folder /tmp/llama3-8b   (writes the folder if missing)
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import spectrum_fast  # noqa: E402
from gpu_scan_vs_spectrum import drop_page_cache, read_alone, warm_page_cache  # noqa: E402
from spectrum_fast import staging  # noqa: E402
from workloads import write_llama3_8b  # noqa: E402

def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def timed_scan(source, label: str) -> None:
    torch.cuda.synchronize()
    u0, s0 = cpu_seconds()
    t = time.perf_counter()
    r = spectrum_fast.scan(source, device="cuda", progress=False)
    torch.cuda.synchronize()
    u1, s1 = cpu_seconds()
    print(f"| {label} | {staging.BLOCKING_SYNC} | {time.perf_counter() - t:.1f} | {r.read_seconds:.1f} | "
          f"{r.read_wait_seconds:.1f} | {u1 - u0:.0f} | {s1 - s0:.0f} | {r.peak_host_bytes / 2**20:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/llama3-8b")
    folder = Path(ap.parse_args().folder)
    if not (folder / "model.safetensors.index.json").exists():
        write_llama3_8b(folder)
    print(torch.cuda.get_device_name(), torch.__version__, os.cpu_count(), "cores", flush=True)
    from safetensors.torch import load_file

    t = time.perf_counter()
    ring = staging.PinnedRing(4, 512 << 20)
    for _ in range(4):
        ring.acquire()
    print(f"page-locking 4 x 512 MiB (cudaHostRegister): {time.perf_counter() - t:.2f} s", flush=True)
    ring.free()
    resident = {}
    for shard in sorted(folder.glob("*.safetensors")):
        resident.update(load_file(str(shard), device="cuda"))
    t = time.perf_counter()
    spectrum_fast.scan(resident, device="cuda", progress=False)  # warm-up (CUDA, cuSOLVER, Triton)
    print(f"first scan in the process (weights on the GPU): {time.perf_counter() - t:.1f} s", flush=True)
    print("| scan | blocking-sync events | s | reader s | waited for reader s | user CPU s | system CPU s | peak host MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for blocking in (True, False, True, False):
        staging.BLOCKING_SYNC = blocking
        timed_scan(resident, "compute alone (weights on the GPU)")
    del resident
    torch.cuda.empty_cache()
    for blocking in (True, False, True, False):
        staging.BLOCKING_SYNC = blocking
        drop_page_cache()
        timed_scan(folder, "cold")
    for blocking in (True, False):
        staging.BLOCKING_SYNC = blocking
        warm_page_cache(folder)
        timed_scan(folder, "warm")
    staging.BLOCKING_SYNC = True
    drop_page_cache()
    u0, s0 = cpu_seconds()
    took = read_alone(folder)
    u1, s1 = cpu_seconds()
    print(f"read alone, cold: {took:.1f} s, CPU user {u1 - u0:.1f} s system {s1 - s0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
