"""Probe (device tool): the timeline of each rank of a distributed scan of the Llama-3-8B-shaped
checkpoint, host side and GPU side, to see which part of a rank's fixed cost grows when two
processes share a host (the 2-GPU issue: 2 T2 - T1 was 0.5-0.7 s at bd5a9fa, where 1.8x needs
at most ~0.46 s).

    torchrun --standalone --nproc-per-node {1,2} bench/probes/rank_timeline.py --folder /tmp/llama3-8b-model \
        [--rounds 6 --variants default,python-stage1,plan-first]

Each rank warms up as bench/scale_out.py does (a one-layer checkpoint on disk, scanned alone,
then by the ranks together), then every round is one distributed scan. Per rank it prints
first_batch_timeline's host timeline (staging buffers, the first batch, each batch's arrival,
the drain) and the GPU's: a timing event recorded on the compute stream after each batch's Gram
and eigen stage are queued tells when the GPU got through them. From those: how long the compute
stream stood idle before its first batch, between batches (the next batch arrived after the GPU
had finished the last one) and after its last batch until scan() returned. Then the compute
thread's time in each call (copies, the finiteness check, the Gram and the eigen stage queued,
waiting for eigenvalues), and each band chase's start and end on its side stream (timing events
around ops.eigen._stage2).
--variants cycles settings round by round (set_variant says what each is), and rank 0 ends with
each variant's median. Rank 0 prints every rank's report, in rank order.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import first_batch_timeline as host_timeline  # noqa: E402

import spectrum_fast  # noqa: E402
from spectrum_fast import engine, ops  # noqa: E402

# As shipped:
MIN_IN_FLIGHT, CHASE_LAG, CHASE_SPLIT = engine.MIN_IN_FLIGHT, ops.band.CHASE_LAG, ops.band.CHASE_BLOCKS_PER_MATRIX

GPU_EVENTS: list[tuple[float, torch.cuda.Event, tuple[int, int, int]]] = []  # (host time, event, shape)


def wrap_gpu_events() -> None:
    """Record a timing event on the current stream after each batch's eigen stage is queued."""
    deferred = ops.eigvalsh_deferred

    def deferred_noted(g, *a, **k):
        pending = deferred(g, *a, **k)
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        GPU_EVENTS.append((time.perf_counter(), event, tuple(g.shape)))
        return pending

    ops.eigvalsh_deferred = deferred_noted


HOST: dict[str, list[tuple[float, float]]] = {}  # what -> [(host start, seconds)] on the compute thread
CHASES: list[tuple[float, torch.cuda.Event, torch.cuda.Event, int]] = []  # (host time, start, end, matrices)


def _timed(what: str, fn):
    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            HOST.setdefault(what, []).append((t, time.perf_counter() - t))
    return timed


def wrap_host_times() -> None:
    """Time the compute thread's calls: the finiteness check, the Gram and the eigen stage queued,
    the copy to the GPU queued (take) and the wait for a batch's eigenvalues (result); and on the
    side streams each chase's GPU start and end (timing events around ops.eigen._stage2)."""
    eigen = ops.eigen
    ops.gram = _timed("Gram queued", ops.gram)
    ops.eigvalsh_deferred = _timed("eigen stage queued", ops.eigvalsh_deferred)
    engine._Loaded.take = _timed("copy queued", engine._Loaded.take)
    eigen.PendingEigenvalues.result = _timed("waited for eigenvalues", eigen.PendingEigenvalues.result)
    engine._finite_and_nonzero = _timed("finite check queued", engine._finite_and_nonzero)
    stage2 = eigen._stage2

    def stage2_timed(bands, width):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        out = stage2(bands, width)
        end.record()
        CHASES.append((time.perf_counter(), begin, end, bands.shape[0]))
        return out

    eigen._stage2 = stage2_timed


def host_report(start: float, start_event: torch.cuda.Event, end: float, loop: float) -> None:
    parts = {what: sum(s for t, s in xs if start <= t <= end) for what, xs in HOST.items()}
    print(f"  compute thread, of the loop's {loop:.3f} s: " + ", ".join(f"{w} {v:.3f} s" for w, v in parts.items()))
    mine = [(start_event.elapsed_time(b) / 1000, start_event.elapsed_time(e) / 1000, n)
            for t, b, e, n in CHASES if start <= t <= end]
    if mine:
        busy, until = 0.0, 0.0  # the union of the chases' intervals
        for b, e, _ in sorted(mine):
            busy += max(0.0, e - max(b, until))
            until = max(until, e)
        print(f"  chases: {len(mine)} launches, {sum(n for *_, n in mine)} matrices, busy {busy:.3f} s "
              f"(union) from {min(b for b, _, _ in mine):.2f} to {until:.2f} s; each (start->end, matrices): "
              + ", ".join(f"{b:.2f}->{e:.2f}({n})" for b, e, n in sorted(mine)))


def gpu_report(start: float, start_event: torch.cuda.Event, end: float) -> None:
    """The compute stream's timeline for the events of the scan that began at ``start`` (host) /
    ``start_event`` (GPU), after the scan has been synchronized."""
    mine = [(t, e, shape) for t, e, shape in GPU_EVENTS if start <= t <= end]
    received = [t - start for t, what, _ in host_timeline.EVENTS if what == "batch received" and start <= t <= end]
    if not mine or len(received) != len(mine):
        print(f"  GPU: {len(mine)} events for {len(received)} batches: no GPU timeline")
        return
    done = [start_event.elapsed_time(e) / 1000 for _, e, _ in mine]
    queued = [t - start for t, _, _ in mine]
    print("  GPU, Gram and eigen stage queued -> done (s): "
          + ", ".join(f"{q:.2f}->{d:.2f}" for q, d in zip(queued, done)))
    gaps = [max(0.0, r - d) for r, d in zip(received[1:], done)]
    print(f"  GPU compute stream idle: before the first batch {received[0]:.3f} s, between batches "
          f"{sum(gaps):.3f} s (largest {max(gaps, default=0):.3f} s), after the last one's eigen stage "
          f"{end - start - done[-1]:.3f} s of the scan's {end - start:.3f} s")


def set_variant(name: str) -> None:
    """default: the scan as shipped; pool-at-ask: chase pools launch only when their rows are first
    asked for (engine.START_LAST_POOL off); plan-order: batches run as planned (engine.PIPELINE_ORDER
    off); python-stage1: stage 1's loop in Python (ops.band.STAGE1_IN_CPP off); plan-first: the
    plan's first batch runs first, not the one of fewest elements (engine.FEWEST_FIRST off);
    in-flight-128: engine.MIN_IN_FLIGHT 128 (more chases at once); chase-split-2, chase-split-4:
    the compiled chase on 2 or 4 blocks per matrix instead of as many as stay resident (fewer SMs
    held by a chase while the next batch's stage 1 runs: ops.band.CHASE_BLOCKS_PER_MATRIX);
    chase-lag-3, chase-lag-2, chase-lag-auto: the compiled chase's sweeps 3 or 2 time steps apart,
    or as the kernel picks (ops.band.CHASE_LAG 3, 2 or 0); bind-node: every thread of the process
    (and those it starts) on the CPUs of its GPU's NUMA node (/sys/bus/pci/devices/*/local_cpulist),
    instead of on every CPU as torchrun leaves them; pin-first-before-read: the first staging
    buffer page-locked before the first read, not beside it (staging.PIN_FIRST_BESIDE_READ off);
    unpin-inline: the staging buffers unpinned by the compute thread at the end, not on a thread
    (staging.UNPIN_IN_BACKGROUND off); staging-as-before: both."""
    from spectrum_fast import staging
    from spectrum_fast.ops import band

    bind_threads(gpu_local_cpus() if name == "bind-node" else ALL_CPUS)
    staging.PIN_FIRST_BESIDE_READ = name not in ("pin-first-before-read", "staging-as-before")
    staging.UNPIN_IN_BACKGROUND = name not in ("unpin-inline", "staging-as-before")

    engine.START_LAST_POOL = name != "pool-at-ask"
    engine.PIPELINE_ORDER = name != "plan-order"
    engine.FEWEST_FIRST = name != "plan-first"
    band.STAGE1_IN_CPP = name != "python-stage1"
    engine.MIN_IN_FLIGHT = 128 if name == "in-flight-128" else MIN_IN_FLIGHT
    band.CHASE_LAG = {"chase-lag-3": 3, "chase-lag-2": 2, "chase-lag-auto": 0}.get(name, CHASE_LAG)
    band.CHASE_BLOCKS_PER_MATRIX = {"chase-split-2": 2, "chase-split-4": 4}.get(name, CHASE_SPLIT)


ALL_CPUS = frozenset(os.sched_getaffinity(0))


def gpu_local_cpus() -> frozenset[int]:
    """The CPUs next to the current GPU (its PCI device's local_cpulist), or all of them if unknown."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    address = f"{getattr(props, 'pci_domain_id', 0):04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    try:
        text = Path(f"/sys/bus/pci/devices/{address}/local_cpulist").read_text().strip()
    except OSError:
        return ALL_CPUS
    cpus = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return frozenset(cpus & ALL_CPUS) or ALL_CPUS


def bind_threads(cpus: frozenset[int]) -> None:
    """Every thread of this process on ``cpus``; threads started later inherit their starter's."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


VARIANTS = ("default", "bind-node", "pin-first-before-read", "unpin-inline", "staging-as-before", "pool-at-ask",
            "plan-order", "python-stage1", "plan-first", "in-flight-128", "chase-split-2", "chase-split-4", "chase-lag-3",
            "chase-lag-2", "chase-lag-auto")


def main() -> None:
    import torch.distributed as dist

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=Path("/tmp/llama3-8b-model"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default="default",
                    help=f"comma-separated, cycled round by round: {', '.join(VARIANTS)} (set_variant says what each is)")
    args = ap.parse_args()
    from workloads import llama3_8b_warm_up_folder, write_llama3_8b_model

    local_rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    local = gpu_local_cpus()
    print(f"# local rank {local_rank}: {len(local)} of {len(ALL_CPUS)} CPUs next to its GPU "
          f"({min(local)}-{max(local)})", flush=True)
    if int(os.environ["RANK"]) == 0:
        if not (args.folder / "config.json").exists():
            write_llama3_8b_model(args.folder)
        llama3_8b_warm_up_folder(args.folder)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.barrier()  # rank 0 may have been writing the checkpoints
    spectrum_fast.scan(llama3_8b_warm_up_folder(args.folder), progress=False, cache=False, distributed=False)
    spectrum_fast.scan(llama3_8b_warm_up_folder(args.folder), progress=False, cache=False, distributed=True)  # collectives
    host_timeline.wrap()
    wrap_gpu_events()
    wrap_host_times()
    variants = args.variants.split(",")
    if not set(variants) <= set(VARIANTS):
        ap.error(f"--variants: choose from {', '.join(VARIANTS)}")
    times: dict[str, list[float]] = {}
    for r in range(args.rounds):
        variant = variants[r % len(variants)]
        set_variant(variant)
        dist.barrier()
        torch.cuda.synchronize()
        start_event = torch.cuda.Event(enable_timing=True)
        start = time.perf_counter()
        start_event.record()
        result = spectrum_fast.scan(args.folder, progress=False, cache=False, distributed=True)
        torch.cuda.synchronize()
        end = time.perf_counter()
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            host_timeline.report(f"round {r + 1} ({variant}), rank {rank} of {world} ({len(result.rows)} matrices in all, "
                                 f"wait {result.read_wait_seconds:.3f} s, compute {result.compute_seconds:.3f} s)",
                                 start, end)
            gpu_report(start, start_event, end)
            host_report(start, start_event, end, result.compute_seconds)
        reports = [None] * world
        dist.all_gather_object(reports, text.getvalue())
        times.setdefault(variant, []).append(end - start)
        if rank == 0:
            print(f"# round {r + 1}, {variant}: {world} rank(s), scan {end - start:.3f} s on rank 0 (rows gathered)")
            print("".join(reports), end="", flush=True)
    if rank == 0:
        for variant, ts in times.items():
            ts = sorted(ts)
            print(f"# {variant}, {world} rank(s): median {ts[len(ts) // 2]:.3f} s of "
                  + ", ".join(f"{t:.3f}" for t in ts))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
