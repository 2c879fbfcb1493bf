"""Timing of device work: synchronize around the timed call so queued CUDA kernels count.

Two clocks. "wall" (time.perf_counter) is what a user waits for. "cpu" (time.process_time: CPU
seconds of every thread of this process) is for single-threaded CPU runs on a shared machine: there
a neighbour that takes the core doubles wall times for a while, in bursts (measured on the 2-core CI
box: 6 -> 13 ms per matrix, repeat to repeat), while the CPU time of the work barely moves.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device, clock: str = "wall") -> tuple[float, T]:
    """-> (seconds on ``clock``, fn's result), with the device idle before the start and after the end."""
    if clock == "cpu" and device.type == "cuda":
        raise ValueError("the cpu clock does not see GPU work: time CUDA runs on the wall clock")
    now = CLOCKS[clock]
    synchronize(device)
    start = now()
    result = fn()
    synchronize(device)
    return now() - start, result


def median_timed(fn: Callable[[], T], device: torch.device, repeats: int) -> tuple[float, T]:
    """-> (median wall-clock seconds of ``repeats`` runs after one untimed warm-up run (compiles,
    handles, caches), the last run's result)."""
    fn()
    synchronize(device)
    times, result = [], None
    for _ in range(repeats):
        seconds, result = timed(fn, device)
        times.append(seconds)
    return statistics.median(times), result
