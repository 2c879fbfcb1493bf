"""Probe (device tool): the timeline of a GPU scan of the Llama-3-8B-shaped checkpoint, to see what
the fixed part of a scan is made of (the 2-GPU issue: each rank waits ~0.55 s for its first batch
and spends ~0.2 s outside its compute loop, whatever its share).

    python3 bench/probes/first_batch_timeline.py --folder /tmp/llama3-8b-model

Wraps, without changing them, the pinned ring's acquire (where the staging buffers are
page-locked), the reader's per-batch load, the compute loop's receipt of each batch and the end of
each batch's rows, and prints for each of --rounds scans (after one warm-up scan of one layer's
shapes, read from a one-layer checkpoint as bench/scale_out.py does, or generated with
--no-file-warm-up): the time from scan() to the first load, the buffers' registration, the first
batch's read, when the compute loop got it, each later batch's wait, the batches that finished
after the last one came, and the time from the last batch to scan()'s return.
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
from spectrum_fast import engine, staging  # noqa: E402

EVENTS: list[tuple[float, str, dict]] = []


def note(what: str, **info) -> None:
    EVENTS.append((time.perf_counter(), what, info))


def wrap() -> None:
    acquire, load, timed, rows = staging.PinnedRing.acquire, engine._load_batch, engine.timed_loads, engine._rows

    def acquire_noted(self):
        made = len(self._made)
        note("acquire begin")
        buf = acquire(self)
        note("acquire end", registered=len(self._made) - made, nbytes=self._nbytes)
        return buf

    def load_noted(source, batch, device, io_pool, ring=None):
        note("load begin", matrices=len(batch.tasks), shape=(batch.n, batch.m))
        out = load(source, batch, device, io_pool, ring)
        note("load end", matrices=len(batch.tasks), shape=(batch.n, batch.m))
        return out

    def timed_noted(source, batches, device, timings):
        note("loop begin", batches=len(batches))
        for loaded in timed(source, batches, device, timings):
            note("batch received", matrices=len(loaded.batch.tasks), shape=(loaded.batch.n, loaded.batch.m))
            yield loaded
        note("loop end")

    make_rest, pin_first, free = staging.PinnedRing._make_rest, staging.PinnedRing._pin_first, staging.PinnedRing.free

    def make_rest_noted(self, device):
        make_rest(self, device)
        note("rest made", count=self._count - 1)

    def pin_first_noted(self):
        pin_first(self)
        note("first pinned")

    def free_noted(self):
        note("unpin begin")
        free(self)
        note("unpinned")

    staging.PinnedRing._make_rest, staging.PinnedRing._pin_first = make_rest_noted, pin_first_noted
    staging.PinnedRing.free = free_noted

    def rows_noted(item, *a, **k):
        yield from rows(item, *a, **k)  # the eigenvalues were waited for on the first row
        note("batch finished", matrices=len(item.batch.tasks), shape=(item.batch.n, item.batch.m))

    staging.PinnedRing.acquire, engine._load_batch, engine.timed_loads = acquire_noted, load_noted, timed_noted
    engine._rows = rows_noted


def report(label: str, start: float, end: float) -> None:
    events = [(t - start, what, info) for t, what, info in EVENTS if start <= t <= end]
    first = {what: (t, info) for t, what, info in reversed(events)}
    received = [(t, info) for t, what, info in events if what == "batch received"]
    loads = [(t, info) for t, what, info in events if what == "load end"]
    registrations = [(t, info) for t, what, info in events if what == "acquire end" and info["registered"]]
    acquires = [t for t, what, _ in events if what == "acquire begin"]
    print(f"## {label}: scan {end - start:.3f} s, {len(received)} batches")
    print(f"  scan() -> loop begin {first['loop begin'][0]:.3f} s; -> first load begin {first['load begin'][0]:.3f} s")
    if "rest made" in first:
        t, info = first["rest made"]
        print(f"  the other {info['count']} staging buffer(s) registered (on a thread) by {t:.3f} s")
    if registrations:
        t, info = registrations[0]
        print(f"  first buffer: acquire {acquires[0]:.3f} -> registered {t:.3f} s ({info['nbytes'] / 2**20:.0f} MiB; "
              f"{sum(i['registered'] for _, i in registrations)} buffers registered in all, the last at "
              f"{registrations[-1][0]:.3f} s)")
    if "first pinned" in first:
        print(f"  first buffer page-locked at {first['first pinned'][0]:.3f} s")
    print(f"  first batch ({loads[0][1]['matrices']} x {loads[0][1]['shape']}): read by {loads[0][0]:.3f} s, "
          f"received by the compute loop at {received[0][0]:.3f} s")
    gaps = [b[0] - a[0] for a, b in zip(received, received[1:])]
    print("  batches received: " + ", ".join(f"{t:.2f}({info['matrices']}x{info['shape'][0]}x{info['shape'][1]})"
                                              for t, info in received))
    if gaps:
        print(f"  between batches: max {max(gaps):.3f} s, median {sorted(gaps)[len(gaps) // 2]:.3f} s")
    finished = [(t, info) for t, what, info in events if what == "batch finished" and t >= received[-1][0]]
    print(f"  after the last batch was received, {len(finished)} finished: "
          + ", ".join(f"{t:.2f}({info['matrices']}x{info['shape'][0]}x{info['shape'][1]})" for t, info in finished))
    print(f"  last batch received {received[-1][0]:.3f} s -> loop end {first['loop end'][0]:.3f} s "
          f"-> scan() returns {end - start:.3f} s")
    unpin = {what: t - start for t, what, _ in reversed(EVENTS) if t >= start and what in ("unpin begin", "unpinned")}
    if unpin:  # unpinned on a thread may end after scan() returned, or not yet
        print("  staging buffers: unpin begun " + f"{unpin.get('unpin begin', float('nan')):.3f} s, unpinned "
              + (f"{unpin['unpinned']:.3f} s" if "unpinned" in unpin else "not yet"))


_SMALL = 2 << 20


def staging_costs(nbytes: int, repeats: int = 3) -> None:
    """Where a staging buffer's time goes, per page size: allocate and fault in (staging.fault_in),
    then cudaHostRegister, then cudaHostUnregister; fresh memory each repeat. First, a 2 MiB
    block's registration: what the process's first page-locking costs, whatever its size. Leaves
    staging.HUGE_PAGES as it was."""
    cudart = torch.cuda.cudart()
    default = staging.HUGE_PAGES
    small = torch.empty(_SMALL, dtype=torch.uint8).fill_(1)
    t0 = time.perf_counter()
    staging._check(cudart.cudaHostRegister(small.data_ptr(), _SMALL, 0), "cudaHostRegister")
    t1 = time.perf_counter()
    staging._check(cudart.cudaHostUnregister(small.data_ptr()), "cudaHostUnregister")
    print(f"first registration in the process ({_SMALL >> 20} MiB): {t1 - t0:.3f} s", flush=True)
    for huge in (False, True):
        staging.HUGE_PAGES = huge
        for _ in range(repeats):
            t0 = time.perf_counter()
            buf = staging.host_block(nbytes)
            staging.fault_in(buf)
            t1 = time.perf_counter()
            staging._check(cudart.cudaHostRegister(buf.data_ptr(), nbytes, 0), "cudaHostRegister")
            t2 = time.perf_counter()
            staging._check(cudart.cudaHostUnregister(buf.data_ptr()), "cudaHostUnregister")
            t3 = time.perf_counter()
            print(f"staging {nbytes / 2**20:.0f} MiB, {'huge' if huge else '4 KiB'} pages: fault-in "
                  f"{t1 - t0:.3f} s, register {t2 - t1:.3f} s, unregister {t3 - t2:.3f} s", flush=True)
            del buf
    staging.HUGE_PAGES = default


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=Path("/tmp/llama3-8b-model"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the probe itself (no staging ring)")
    ap.add_argument("--prefetch", type=int, default=None, help="engine.PREFETCH_BATCHES for this run (trial)")
    ap.add_argument("--file-warm-up", action=argparse.BooleanOptionalAction, default=True,
                    help="warm up on a one-layer checkpoint on disk (else generated on the GPU: no page-locking)")
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before each round (root: /proc/sys/vm/drop_caches)")
    ap.add_argument("--staging-costs", action="store_true",
                    help="first time a 784 MiB staging buffer's fault-in and registration, 4 KiB and huge pages")
    args = ap.parse_args()
    from workloads import GeneratedSource, llama3_8b_layout, llama3_8b_warm_up_folder, write_llama3_8b_model

    thp = staging._THP_SETTING.read_text().strip() if staging._THP_SETTING.exists() else "(no setting)"
    print(f"transparent huge pages: {thp}", flush=True)
    if args.staging_costs and args.device == "cuda":
        staging_costs(784 << 20)

    if not (args.folder / "config.json").exists() and args.device == "cuda":
        started = time.perf_counter()
        write_llama3_8b_model(args.folder)
        print(f"wrote {args.folder} in {time.perf_counter() - started:.1f} s", flush=True)
    if args.device == "cuda":  # one layer from disk, as bench/scale_out.py warms up
        warm = llama3_8b_warm_up_folder(args.folder) if args.file_warm_up else GeneratedSource(
            llama3_8b_layout(layers=1), "warm-up", generate_on="cuda")
        spectrum_fast.scan(warm, progress=False, cache=False)
    wrap()
    if args.prefetch is not None:
        engine.PREFETCH_BATCHES = args.prefetch
    print(f"PREFETCH_BATCHES {engine.PREFETCH_BATCHES}, staging huge pages {staging.HUGE_PAGES}, "
          f"page cache {'cold' if args.cold else 'warm'}", flush=True)
    for r in range(args.rounds):
        sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
        if args.cold:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        sync()
        start = time.perf_counter()
        result = spectrum_fast.scan(args.folder, progress=False, cache=False, device=args.device)
        sync()
        end = time.perf_counter()
        report(f"round {r + 1} ({len(result.rows)} matrices, wait {result.read_wait_seconds:.3f} s, "
               f"compute {result.compute_seconds:.3f} s)", start, end)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
