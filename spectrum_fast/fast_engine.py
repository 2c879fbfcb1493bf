"""The fast engine (scan(method="fast")): batches of one shape (engine.plan_batches) -> fp32 Grams
-> their top eigenvalues by subspace iteration and the exact count above the MP edge by inertia ->
SNR with the Marchenko-Pastur law's noise sum (ops.fast_snr) -> rows marked as estimates.

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


def fast_matrix_bytes(n: int, m: int, dtype: str) -> int:
    """Device bytes the fast mode holds per matrix: its input, its fp32 Gram, that Gram's bf16
    copy for the iterations and the float64 copy the inertia count factors (14 bytes per Gram
    entry), and the iteration's bases (small). The matrices that take the exact route (rare: an
    unreliable count, a broken iteration) add their float64 Gram while the rest are done."""
    k = min(n, m)
    itemsize = engine._DTYPE_BYTES.get(dtype, 4)
    t = min(k, 2 * (fast_snr.START_VALUES + fast_snr.OVERSAMPLE))
    return n * m * itemsize + 14 * k * k + 3 * 8 * k * t


def run_batches_fast(
    source: WeightSource,
    batches: list[Batch],
    device: torch.device,
    on_batch: Callable[[Batch], None] | None = None,
    timings: dict[str, float] | None = None,
    on_matrices: Callable[[Batch, torch.Tensor], None] | None = None,
) -> Iterator[tuple[MatrixTask, MatrixRow]]:
    """Estimate each batch's statistics, yielding rows in batch order. ``timings`` and
    ``on_matrices`` as in engine.run_batches."""
    loop_start = time.perf_counter()
    for loaded in engine.timed_loads(source, batches, device, timings):
        started = time.perf_counter()
        batch = loaded.batch
        w = loaded.take()
        if on_matrices is not None:
            on_matrices(batch, w)
        finite, nonzero = engine._finite_and_nonzero(w.reshape(len(batch.tasks), -1))
        torch.nan_to_num_(w, nan=0.0, posinf=0.0, neginf=0.0)  # its row says "nonfinite" whatever follows
        table = fast_snr.fast_snr_statistics(w)
        del w
        per_matrix = (time.perf_counter() - started + loaded.seconds) / len(batch.tasks)
        yield from engine.rows_from_table(batch, table, finite, nonzero, per_matrix, estimate=True)
        if on_batch is not None:
            on_batch(batch)
    if timings is not None:
        timings["compute_s"] = timings.get("compute_s", 0.0) + time.perf_counter() - loop_start
