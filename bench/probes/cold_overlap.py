"""Probe (device tool): why a cold-cache scan takes longer than max(read alone, compute alone).
Varies the host band-solve threads, the IO threads, the batches read ahead, the order batches
run in and whether uncached ranges are read with O_DIRECT (file_reader), on the
Llama-3-8B-shaped checkpoint, page cache dropped before each scan.

    python bench/probes/cold_overlap.py --folder /tmp/llama3-8b   (writes the folder if missing)
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import spectrum_fast  # noqa: E402
from gpu_scan_vs_spectrum import drop_page_cache, read_alone  # noqa: E402
from spectrum_fast import engine, file_reader  # noqa: E402
from spectrum_fast.ops import band_eigen, eigen  # noqa: E402
from workloads import write_llama3_8b  # noqa: E402

CONFIGS = [  # (host band-solve threads, IO threads, batches read ahead, batch order, O_DIRECT for uncached ranges)
    (15, 8, 3, "shape", True), (15, 8, 3, "model", True), (15, 8, 3, "shape", False), (15, 8, 3, "model", False),
    (15, 8, 6, "model", True), (15, 4, 3, "model", True), (15, 8, 3, "shape", True),
]


def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def raw_read(folder: Path, direct: bool, threads: int = 8, piece: int = 16 << 20) -> str:
    """Read every shard whole in ``piece``-byte pieces on ``threads`` threads into pinned buffers,
    through the page cache or with O_DIRECT (DMA into the buffer). -> one table row."""
    files = sorted(folder.glob("*.safetensors"))
    jobs = [(f, off) for f in files for off in range(0, f.stat().st_size, piece)]
    local = threading.local()
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    try:
        fds = {f: os.open(f, flags) for f in files}
    except OSError as e:
        return f"| {'O_DIRECT' if direct else 'page cache'} | cannot open: {e} | | | |"

    def read(job):
        f, off = job
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = torch.empty(piece, dtype=torch.uint8, pin_memory=True)
            assert buf.data_ptr() % 4096 == 0
        return os.preadv(fds[f], [memoryview(buf.numpy())], off)

    drop_page_cache()
    u0, s0 = cpu_seconds()
    t = time.perf_counter()
    try:
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(read, jobs))
    except OSError as e:
        return f"| {'O_DIRECT' if direct else 'page cache'} | read failed: {e} | | | |"
    finally:
        for fd in fds.values():
            os.close(fd)
    wall = time.perf_counter() - t
    u1, s1 = cpu_seconds()
    return (f"| {'O_DIRECT' if direct else 'page cache'} | {threads} | {total / wall / 1e9:.2f} | "
            f"{u1 - u0:.1f} | {s1 - s0:.1f} |")


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
    for side in (False,):
        eigen.SYEVD_SIDE_STREAM = side
        torch.cuda.synchronize()
        u0, s0 = cpu_seconds()
        t = time.perf_counter()
        spectrum_fast.scan(resident, device="cuda", progress=False)
        torch.cuda.synchronize()
        u1, s1 = cpu_seconds()
        print(f"compute alone (weights on the GPU), syevd side stream {side}: {time.perf_counter() - t:.1f} s, "
              f"CPU user {u1 - u0:.0f} s system {s1 - s0:.0f} s", flush=True)
    eigen.SYEVD_SIDE_STREAM = False
    del resident
    torch.cuda.empty_cache()
    for io in (8, 4):
        engine.IO_THREADS = io
        drop_page_cache()
        u0, s0 = cpu_seconds()
        took = read_alone(folder)
        u1, s1 = cpu_seconds()
        print(f"read alone, cold, {io} IO threads: {took:.1f} s, CPU user {u1 - u0:.1f} s system {s1 - s0:.1f} s",
              flush=True)
    print("| read | threads | GB/s | user CPU s | system CPU s |")
    print("|---|---|---|---|---|")
    for direct in (False, True):
        for threads in (8,):
            print(raw_read(folder, direct, threads), flush=True)
    print("| band threads | IO threads | read ahead | batch order | O_DIRECT | cold scan s | reader s "
          "| waited for reader s | user CPU s | system CPU s | peak GPU MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for workers, io, ahead, order, direct in CONFIGS:
        set_host_workers(workers)
        engine.IO_THREADS, engine.PREFETCH_BATCHES, engine.BATCH_ORDER = io, ahead, order
        file_reader.DIRECT_IO = direct
        drop_page_cache()
        torch.cuda.synchronize()
        u0, s0 = cpu_seconds()
        t = time.perf_counter()
        r = spectrum_fast.scan(folder, device="cuda", progress=False)
        torch.cuda.synchronize()
        u1, s1 = cpu_seconds()
        print(f"| {workers} | {io} | {ahead} | {order} | {direct} | {time.perf_counter() - t:.1f} | "
              f"{r.read_seconds:.1f} | {r.read_wait_seconds:.1f} | {u1 - u0:.0f} | {s1 - s0:.0f} | "
              f"{r.peak_gpu_bytes / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
