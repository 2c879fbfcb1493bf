"""Probe (device tool): why a cold-cache scan takes longer than max(read alone, compute alone).
Earlier versions varied the host band-solve threads, IO threads, read-ahead, batch order, syevd
on a side stream and O_DIRECT (results in bench/probes/cold_overlap_h100_*.log); this one
compares one switch on and off, alternating (--switch: blocking-sync against spinning CUDA events
for the host threads' waits, or host-to-device copies on their own stream one batch ahead against
on the compute stream), on the Llama-3-8B-shaped checkpoint: weights on the GPU, cold page cache,
warm page cache.

    python bench/probes/cold_overlap.py --folder /tmp/llama3-8b [--switch copy_stream|blocking_sync]
    (writes the folder if missing)
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
from spectrum_fast import engine, staging  # noqa: E402
from workloads import write_llama3_8b  # noqa: E402

def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


SWITCHES = {  # --switch NAME: the setting compared, on and off, alternating
    "blocking_sync": (staging, "BLOCKING_SYNC"),  # host threads sleep (True) or spin on CUDA events
    "copy_stream": (engine, "COPY_STREAM"),  # host-to-device copies on their own stream, one batch ahead
}


def timed_scan(source, label: str, setting: str) -> None:
    torch.cuda.synchronize()
    u0, s0 = cpu_seconds()
    t = time.perf_counter()
    r = spectrum_fast.scan(source, device="cuda", progress=False, cache=False)
    torch.cuda.synchronize()
    u1, s1 = cpu_seconds()
    print(f"| {label} | {setting} | {time.perf_counter() - t:.1f} | {r.read_seconds:.1f} | "
          f"{r.read_wait_seconds:.1f} | {u1 - u0:.0f} | {s1 - s0:.0f} | {r.peak_host_bytes / 2**20:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/llama3-8b")
    ap.add_argument("--switch", choices=sorted(SWITCHES), default="copy_stream")
    ap.add_argument("--resident", type=int, default=4, help="scans with the weights on the GPU")
    ap.add_argument("--cold", type=int, default=4, help="scans from a cold page cache")
    ap.add_argument("--warm", type=int, default=2, help="scans from a warm page cache")
    args = ap.parse_args()
    folder = Path(args.folder)
    if not (folder / "model.safetensors.index.json").exists():
        write_llama3_8b(folder)
    print(torch.cuda.get_device_name(), torch.__version__, os.cpu_count(), "cores", flush=True)
    from safetensors.torch import load_file

    module, name = SWITCHES[args.switch]
    resident = {}
    for shard in sorted(folder.glob("*.safetensors")):
        resident.update(load_file(str(shard), device="cuda"))
    t = time.perf_counter()
    spectrum_fast.scan(resident, device="cuda", progress=False, cache=False)  # warm-up (CUDA, cuSOLVER, Triton)
    print(f"first scan in the process (weights on the GPU): {time.perf_counter() - t:.1f} s", flush=True)
    print(f"| scan | {args.switch} | s | reader s | waited for reader s | user CPU s | system CPU s | peak host MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for i in range(args.resident):
        setattr(module, name, i % 2 == 0)
        timed_scan(resident, "compute alone (weights on the GPU)", str(getattr(module, name)))
    del resident
    torch.cuda.empty_cache()
    for i in range(args.cold):
        setattr(module, name, i % 2 == 0)
        drop_page_cache()
        timed_scan(folder, "cold", str(getattr(module, name)))
    for i in range(args.warm):
        setattr(module, name, i % 2 == 0)
        warm_page_cache(folder)
        timed_scan(folder, "warm", str(getattr(module, name)))
    setattr(module, name, True)
    drop_page_cache()
    u0, s0 = cpu_seconds()
    took = read_alone(folder)
    u1, s1 = cpu_seconds()
    print(f"read alone, cold: {took:.1f} s, CPU user {u1 - u0:.1f} s system {s1 - s0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
