"""What the GPU probes share: "NxM:c" case arguments, median timings (bench/timing.py's), a CUDA
graph capture and a torch.profiler kernel table."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import median_timed  # noqa: E402


def cases(specs: list[str]) -> Iterator[tuple[str, int, int, int]]:
    """"4096x14336:16" -> ("4096x14336", 4096, 14336, 16): a shape and a count (k or a batch)."""
    for spec in specs:
        shape, count = spec.split(":")
        n, m = map(int, shape.split("x"))
        yield shape, n, m, int(count)


def timed(fn, repeats: int) -> float:
    """Median wall-clock ms of fn() over ``repeats`` after a warm-up, the GPU synchronized around each."""
    return median_timed(fn, torch.device("cuda"), repeats)[0] * 1e3


def captured(fn):
    """(graph, output): fn's GPU work captured once (after warm-ups on a side stream), replayable."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    graph.replay()
    torch.cuda.synchronize()
    return graph, out


def profile(fn, batch: int) -> None:
    """Wall time and the top CUDA kernels and host ops of one call (after a warm-up), per matrix."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = sorted((e for e in events if e.device_time_total > 0 and e.device_type.name == "CUDA"),
                     key=lambda e: -e.self_device_time_total)
    total = sum(e.self_device_time_total for e in kernels) / 1e3
    print(f"  profile: kernel time {total / batch:.3f} ms per matrix; top kernels:")
    for e in kernels[:12]:
        print(f"    {e.self_device_time_total / 1e3 / batch:7.3f} ms x {e.count:5d}  {e.key[:110]}")
    cpu = sorted((e for e in events if e.device_type.name == "CPU"), key=lambda e: -e.self_cpu_time_total)
    print("  top host ops (self time):")
    for e in cpu[:10]:
        print(f"    {e.self_cpu_time_total / 1e3 / batch:7.3f} ms x {e.count:5d}  {e.key[:110]}")
