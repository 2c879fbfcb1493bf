"""The fast engine (scan(method="fast")): batches of same-shape matrices -> top singular values by
truncated SVD -> SNR from the spikes and the Marchenko-Pastur law (ops.fast_snr) -> rows marked
as estimates.

It shares the exact engine's planner, reader and checks (engine.py): batches are read ahead on a
thread, moved to the device, their non-finite and all-zero matrices flagged. No full eigen solve
runs, so nothing is left in flight: each batch is finished before the next is taken.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from . import engine
from .engine import Batch
from .ops import fast_snr
from .results import MatrixRow
from .sources import WeightSource
from .targets import MatrixTask


def fast_batch_plan(max_gpu_memory: int) -> Callable[[int, int, str], tuple[int, str]]:
    """-> a plan_batches budget function for the fast mode on a GPU: as many matrices per batch as
    fit ``max_gpu_memory`` with what the fast mode holds per matrix (its input, an fp32 copy of it
    for the truncated SVD's products where they need one, and the sketches, small), half the
    budget kept for the allocator's slack and the small dense solves."""

    def plan(n: int, m: int, dtype: str) -> tuple[int, str]:
        k = min(n, m)
        itemsize = engine._DTYPE_BYTES.get(dtype, 4)
        t = min(k, fast_snr.START_VALUES + fast_snr.OVERSAMPLE)
        per_matrix = n * m * (itemsize + 4) + 4 * (n + m) * t * 4
        count = max(1, (max_gpu_memory // 2) // per_matrix)
        return count * engine.matrix_device_bytes(n, m, dtype), "auto"  # plan_batches divides by the latter

    return plan


def run_batches_fast(
    source: WeightSource,
    batches: list[Batch],
    device: torch.device,
    on_batch: Callable[[Batch], None] | None = None,
    timings: dict[str, float] | None = None,
) -> Iterator[tuple[MatrixTask, MatrixRow]]:
    """Estimate each batch's statistics, yielding rows in batch order. ``timings`` as in
    engine.run_batches ("read_s", "wait_s", "compute_s")."""
    loop_start = time.perf_counter()
    loads = engine._prefetched(source, batches, device)
    while True:
        asked = time.perf_counter()
        loaded = next(loads, None)
        if timings is not None:
            timings["wait_s"] = timings.get("wait_s", 0.0) + time.perf_counter() - asked
        if loaded is None:
            break
        started = time.perf_counter()
        batch = loaded.batch
        w = loaded.take()
        finite, nonzero = engine._finite_and_nonzero(w.reshape(len(batch.tasks), -1))
        torch.nan_to_num_(w, nan=0.0, posinf=0.0, neginf=0.0)  # its row says "nonfinite" whatever follows
        table = fast_snr.fast_snr_statistics(w)
        del w
        per_matrix = (time.perf_counter() - started + loaded.seconds) / len(batch.tasks)
        if timings is not None:
            timings["read_s"] = timings.get("read_s", 0.0) + loaded.seconds
        yield from engine.rows_from_table(batch, table, finite, nonzero, per_matrix, estimate=True)
        if on_batch is not None:
            on_batch(batch)
    if timings is not None:
        timings["compute_s"] = timings.get("compute_s", 0.0) + time.perf_counter() - loop_start
