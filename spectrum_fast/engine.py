"""The exact engine: batches of one shape -> Gram -> eigenvalues -> statistics -> rows.

The planner groups matrices of one shape (and its transpose, held short side first) into batches
that fit a device-memory budget; each batch is read from the source one tensor at a time into one
buffer, moved to the device, checked for non-finite and all-zero matrices, and analysed with one
call per operation. Three things overlap:
a reader thread loads batch i+1 (into pinned host memory for a GPU scan), the device forms Grams
and reduces them to bands, and host threads solve the bands of earlier batches.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from . import ops, staging
from .env_settings import env_count, env_switch
from .results import MatrixRow
from .sources import WeightSource
from .targets import MatrixTask

_DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Batch:
    n: int
    m: int
    tasks: list[MatrixTask]
    eigen_route: str = "auto"

    @property
    def k(self) -> int:
        """The size of each matrix's Gram (k x k, k = min(n, m))."""
        return min(self.n, self.m)

    def transposed(self, task: MatrixTask) -> bool:
        """Whether ``task`` is an m x n matrix in this n x m batch: it is read in its own shape and
        transposed on its way into the batch's [B, n, m] tensor (batch_shape)."""
        return (task.n, task.m) != (self.n, self.m)


def matrix_device_bytes(n: int, m: int, dtype: str) -> int:
    """Device bytes each matrix of a batch holds: its input and its float64 Gram.

    Per-batch extras come on top, independent of the batch size: the float64 upcast chunk of the
    Gram (ops.gram, at most 128 MiB) and the eigen solver's workspace and input copy (ops.eigen,
    at most 64 MiB for syevd). The next batch waits in pinned host memory, not on the device,
    unless the source's tensors are on the device already.
    """
    k = min(n, m)
    return n * m * _DTYPE_BYTES.get(dtype, 4) + k * k * 8


# Order in which batches run: "shape" (every batch of one shape, then the next shape: what the H100
# figures in bench/RESULTS.md were measured with) or "model" (by each batch's first matrix in model
# order, so read-heavy MLP batches alternate with compute-heavy attention batches and files are
# read front to back). On a cold disk the two were within the run-to-run spread: 12.4-13.6 s
# against 12.3-14.0 s (H100, bench/probes/cold_overlap_h100_eb543d5.log and _8d6966a.log).
BATCH_ORDER = "shape"

# Most matrices per batch, however many the memory budget would allow.
MAX_BATCH = 64

# Batch n x m matrices with m x n ones (a Llama MLP's down projection, 4096 x 14336, with its gate
# and up, 14336 x 4096): both have a k x k Gram with the same eigenvalues, and the GPU's stage 1
# takes about as long for a batch of one 4096 Gram as for eleven (bench/RESULTS.md, "what sets the
# 8B scan's pace"), so fewer, fuller batches are faster. Such batches hold every matrix short side
# first (batch_shape); the others are transposed on the device as they arrive (_Loaded.take).
MERGE_TRANSPOSES = True


def batch_shape(task: MatrixTask) -> tuple[int, int]:
    """The shape of the batches ``task`` goes into: with MERGE_TRANSPOSES, short side first (k x L),
    whatever the batch's other members, so a matrix meets the same Gram kernels however the scan
    is batched (a resumed scan, a rank's share) and gives the same bits; else its own."""
    return (min(task.n, task.m), max(task.n, task.m)) if MERGE_TRANSPOSES else (task.n, task.m)


def plan_batches(tasks: list[MatrixTask], budget_bytes: int | Callable[[int, int, str], tuple[int, str]],
                 max_batch: int | None = None, eigen_route: str = "auto", order: str | None = None,
                 matrix_bytes: Callable[[int, int, str], int] = matrix_device_bytes) -> list[Batch]:
    """Group same-shape, same-dtype matrices (first-seen order; with MERGE_TRANSPOSES, n x m and
    m x n together, in batch_shape) into batches of at most ``max_batch`` (default MAX_BATCH), run
    in ``order`` (default BATCH_ORDER).

    ``budget_bytes`` is the bytes of matrices (``matrix_bytes`` each: the exact engine's
    matrix_device_bytes unless given) per batch, or a function (n, m, dtype) -> (bytes, eigen
    route) that decides per shape (gpu_batch_plan)."""
    order = order or BATCH_ORDER
    max_batch = max_batch or MAX_BATCH
    if order not in ("shape", "model"):
        raise ValueError(f"batch order must be 'shape' or 'model', not {order!r}")
    groups: dict[tuple[int, int, str], list[MatrixTask]] = {}
    for t in tasks:
        groups.setdefault((*batch_shape(t), t.tensor.dtype), []).append(t)
    batches = []
    for (n, m, dtype), members in groups.items():
        budget, route = budget_bytes(n, m, dtype) if callable(budget_bytes) else (budget_bytes, eigen_route)
        size = max(1, min(max_batch, budget // matrix_bytes(n, m, dtype)))
        for i in range(0, len(members), size):
            batches.append(Batch(n, m, members[i : i + size], route))
    if order == "model":
        batches.sort(key=lambda b: b.tasks[0].order)
    return batches


def gpu_batch_plan(max_gpu_memory: int, precision: str = "float64", eigen_route: str = "auto",
                   device: torch.device | None = None):
    """-> a plan_batches budget function that keeps a batch's peak within ``max_gpu_memory``.

    Peak = the batch's matrices (input + Gram) + the float64 upcast chunk (ops.gram) + the eigen
    solver's extra (ops.eigen.syevd_extra_bytes for syevd; the two-stage routes work in place on
    the Gram and their panels and bands are small). Where "auto" will take the GPU route anyway
    (ops.eigen.choose_route tries it first: float64, n within its limits, the kernels there), the
    batch is planned for that route and gets syevd's workspace as matrices (less the two-stage
    temporaries, ops.eigen.two_stage_extra_bytes, and the bands of earlier batches waiting in the
    chase pool, ops.eigen.chase_pool_bytes, where it is on): for Llama-3-8B's 4096-wide matrices at
    1.5 GiB, 8 and 5 per batch instead of 4 and 3 (the GPU route's time per matrix falls with the batch:
    bench/RESULTS.md, the eigen engine's table). Where syevd's workspace alone would break the
    limit (k = 8192 float64: ~2.5 GiB), "auto" is narrowed to the host two-stage route for that
    shape. One matrix per batch is the floor: a matrix bigger than the limit is still scanned, and
    the peak reported."""
    from .ops import band_eigen, eigen
    from .ops.gram import _CHUNK_BYTES

    cuda = device if device is not None else torch.device("cuda")

    def plan(n: int, m: int, dtype: str) -> tuple[int, str]:
        k = min(n, m)
        fixed = _CHUNK_BYTES if precision == "float64" else 0
        itemsize = 8 if precision == "float64" else 4
        route = eigen_route
        if route == "auto" and eigen.gpu_route_first(k, cuda, getattr(torch, precision)):
            route = "two_stage_gpu"
        if route not in ("two_stage", "two_stage_gpu"):  # both work in place on the Gram
            syevd = eigen.syevd_extra_bytes(k, itemsize)
            fits = fixed + syevd + matrix_device_bytes(n, m, dtype) <= max_gpu_memory
            if route == "auto" and not fits and precision == "float64" and band_eigen.available():
                route = "two_stage"
            else:
                fixed += syevd
        if route == "two_stage_gpu":
            fixed += eigen.chase_pool_bytes(k)  # earlier batches' bands waiting for their chase
        budget = max_gpu_memory - fixed
        if route in ("two_stage", "two_stage_gpu"):  # their temporaries grow with the batch
            per_matrix = matrix_device_bytes(n, m, dtype)
            budget = budget * per_matrix // (per_matrix + eigen.two_stage_extra_bytes(k, itemsize))
        if eigen.SYEVD_SIDE_STREAM:
            budget //= 2  # a batch's Gram in a side-stream solve while the next batch forms its own
        return budget, route

    return plan



# Stage CUDA batches read from host tensors in pinned host memory (see _load_batch). Off, the reader
# writes straight into GPU memory: as fast, but the next batch then sits on the GPU beside the
# current one (bench/probes/memory_budget.py measures both).
PINNED_STAGING = True


# Batches read ahead into pinned host memory while the GPU works (host tensors only; tensors
# already on the GPU are read one batch ahead, to keep GPU memory low). A lead of several batches
# was meant to let the reader bank a slow batch's time for a fast one, but each batch of lead is one
# more pinned buffer to register per scan, and one batch ahead was faster both ways on the 8B scan
# (H200): warm 4.38-4.50 against 5.67-5.95 s (bench/probes/first_batch_trials_h200_54f24f1.log),
# and from a cold page cache, staging on huge pages, 8.09 and 8.15 s against 9.18 and 9.63 s
# (bench/results/scale_out_trials_2xh200_80f58f3.log): the reader stays busy either way.
# SPECTRUM_FAST_PREFETCH_BATCHES sets it.
PREFETCH_BATCHES = env_count("SPECTRUM_FAST_PREFETCH_BATCHES", 1)

# Copy staged batches to the GPU on a stream of their own, one batch ahead of the compute (see
# run_batches); off, on the compute stream just before the batch's kernels. Measured on the 8B
# scan it gained nothing: cold 14.4 and 14.4 s on against 13.7 and 13.6 s off, warm 13.6 against
# 12.9 s, with a like gap between scans of weights already on the GPU, which copy nothing (H100,
# bench/probes/cold_overlap_h100_c37eecb.log). The copies (14 GB at the 54 GB/s pinned rate of
# DESIGN.md: ~0.3 s) were not where the time went then. Now that the compute stream is (stage 1),
# it was tried again on 2x H200, one launch per scan: 1 GPU 3.87, 3.84, 3.81 s on against 3.94,
# 3.80, 3.90 off; 2 GPUs 2.24, 2.13, 2.18 against 2.40, 2.16, 2.19: within the spread
# (bench/results/scale_out_2xh200_c93970d.log). SPECTRUM_FAST_COPY_STREAM=1 turns it on.
COPY_STREAM = env_switch("SPECTRUM_FAST_COPY_STREAM", False)

# Run each scan's batches (its share, on a rank) in pipeline_order rather than as planned: the batch
# whose eigen stage ends soonest last. Same batches, so the same rows.
PIPELINE_ORDER = True


def _elements(batch: Batch) -> int:
    return len(batch.tasks) * batch.n * batch.m


# Run the batch of fewest elements first (pipeline_order): the GPU waits for the whole first batch
# to be read. 2x H200, the 8B scan (bench/probes/rank_timeline_2xh200_99bd8d8.log and _e0ecafe.log):
# with 9 or 11 4096 x 4096 matrices first instead of 7 of 4096 x 14336, the GPU started 0.01-0.04 s
# sooner (two ranks: at 0.094-0.124 s against 0.121-0.151 s); whole scans moved by less than their
# spread (two ranks, median of 3: 2.040 against 2.083 s; one rank 3.721 against 3.689 s).
FEWEST_FIRST = True


def pipeline_order(batches: list[Batch]) -> list[Batch]:
    """``batches`` with the one of smallest Gram (then fewest elements; of equals, the latest) moved
    to the end, and with FEWEST_FIRST the one of fewest elements of the rest (of equals, the
    earliest) to the front. Once the last batch is queued, the scan waits for its stage 1 and then
    its chase, both longer for bigger Grams: with Llama-3-8B's k/v batch (1024 x 1024 Grams) last,
    a one-GPU scan ended 0.13-0.14 s after its last eigen stage, against 0.20 s with a 4096 batch
    last (H100, bench/probes/rank_timeline_2xh100_3673f66.log), though whole scans differed by
    less than their spread."""
    if len(batches) < 2:
        return list(batches)
    last = min(range(len(batches)), key=lambda i: (batches[i].k, _elements(batches[i]), -i))
    rest = batches[:last] + batches[last + 1 :]
    if FEWEST_FIRST:
        first = min(range(len(rest)), key=lambda i: (_elements(rest[i]), i))
        rest = [rest[first]] + rest[:first] + rest[first + 1 :]
    return rest + [batches[last]]


# Launch a chase pool (ops.eigen.CHASE_POOL_MATRICES) as soon as the scan's last batch of its size
# has been reduced, rather than when its rows are first asked for. Llama-3-8B's 64 k/v matrices
# (1024 wide) never fill a pool: asked for only after the last batch had been queued, their chase
# would wait behind that batch's stage 1 at the end of the scan.
START_LAST_POOL = True

# Threads that read pieces of a batch's tensors at once (SafetensorsSource.read_into): one thread
# cannot keep an NVMe drive busy, and reads from the page cache are memory copies that scale too.
IO_THREADS = 8


def staging_bytes(batches: list[Batch]) -> int:
    """Size of one pinned staging buffer: room for the largest batch (staging.slot_bytes)."""
    return max(len(b.tasks) * staging.slot_bytes(b.n, b.m, getattr(torch, b.tasks[0].tensor.dtype))
               for b in batches)


def file_offsets(source: WeightSource, batch: Batch, dtype: torch.dtype) -> list[int | None]:
    """Where each matrix of the batch starts in its file (an expert inside its fused tensor), or
    None for a source that does not read files as stored."""
    matrix_bytes = batch.n * batch.m * dtype.itemsize
    return [None if (o := source.file_offset(t.tensor)) is None else o + (t.expert or 0) * matrix_bytes
            for t in batch.tasks]


@dataclass
class _Staged:
    """A batch in a pinned staging buffer: one view per matrix (staging.staged_views), in the
    matrix's own shape (m x n where the batch transposes it)."""

    block: torch.Tensor
    views: list[torch.Tensor]


def _load_batch(source: WeightSource, batch: Batch, device: torch.device, io_pool: ThreadPoolExecutor,
                ring: staging.PinnedRing | None = None) -> tuple[torch.Tensor | _Staged, float]:
    """Read each matrix of the batch. -> (the batch, seconds spent)

    Runs in the reader thread (for a GPU scan). Host tensors (files, a model on the CPU) go into a
    pinned buffer of ``ring`` for a GPU scan (a [B, n, m] tensor on a CPU scan): the next batch
    then waits on the host, not in GPU memory, and crosses to the GPU at pinned speed when its
    turn comes (_Loaded.take); the pieces of each tensor are read by ``io_pool``'s threads at
    once. Tensors already on the GPU are copied into a device buffer on a side stream.
    """
    start = time.perf_counter()
    dtype = getattr(torch, batch.tasks[0].tensor.dtype)  # one dtype per batch (plan_batches)
    shape = (len(batch.tasks), batch.n, batch.m)
    on_host = source.device_of(batch.tasks[0].tensor).type == "cpu"
    if device.type == "cpu":
        buf = torch.empty(shape, dtype=dtype)
        _read_pieces(source, batch, buf, io_pool)
        for i, task in enumerate(batch.tasks):
            if batch.transposed(task):  # read in its own shape: turn it into the batch's
                buf[i].copy_(buf[i].view(task.n, task.m).clone().mT)
        return buf, time.perf_counter() - start
    if on_host and PINNED_STAGING:
        if ring is None:  # a one-off load (tests, benches): torch's pinned allocator will do
            block = torch.empty(staging_bytes([batch]), dtype=torch.uint8, pin_memory=True)
        else:
            block = ring.acquire()
        views = staging.staged_views(block, file_offsets(source, batch, dtype), batch.n, batch.m, dtype)
        # A transposed matrix waits in its own shape (_Loaded.take transposes it on the device).
        views = [v.view(t.n, t.m) if batch.transposed(t) else v for v, t in zip(views, batch.tasks)]
        staged = _Staged(block, views)
        _read_pieces(source, batch, staged.views, io_pool)
        if ring is not None:
            ring.ready(block)  # page-locked by now: the copies out of it run asynchronously
        return staged, time.perf_counter() - start
    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        buf = torch.empty(shape, dtype=dtype, device=device)
        cache: tuple[str, torch.Tensor] | None = None
        for i, task in enumerate(batch.tasks):
            if cache is None or cache[0] != task.tensor.name:  # a fused expert tensor is read once
                cache = (task.tensor.name, source.read(task.tensor))
            t = cache[1] if task.expert is None else cache[1][task.expert]
            buf[i].copy_(t.reshape(task.n, task.m).mT if batch.transposed(task) else t.reshape(batch.n, batch.m))
    stream.synchronize()
    return buf, time.perf_counter() - start


def _read_pieces(source: WeightSource, batch: Batch, buf: torch.Tensor | list[torch.Tensor],
                 io_pool: ThreadPoolExecutor) -> None:
    """Fill host ``buf`` ([B, n, m], or B [n, m] views): matrix i is the task's tensor (or, for one expert of a fused
    [E, n, m] tensor, its slice e), read in pieces of ``source.read_piece_bytes`` on ``io_pool``.

    Sources without pieces (tensors already in memory) are copied in this thread: their
    read_into is a torch copy, and torch ops in 8 extra threads start 8 OpenMP teams whose
    spinning workers took the cores from LAPACK (a 2-core CPU scan ran 1.1-3.6x slower,
    bench/cpu_vs_svdvals.py at b764cfb)."""
    per_matrix = batch.n * batch.m
    itemsize = buf[0].element_size()
    piece = per_matrix if source.read_piece_bytes is None else max(1, source.read_piece_bytes // itemsize)
    jobs = []  # (tensor, destination, first element)
    for i, task in enumerate(batch.tasks):
        flat = buf[i].view(-1)
        first = 0 if task.expert is None else task.expert * per_matrix
        jobs += [(task.tensor, flat[a : a + piece], first + a) for a in range(0, per_matrix, piece)]
    if source.read_piece_bytes is None:
        for job in jobs:
            source.read_into(*job)
        return
    futures = [io_pool.submit(source.read_into, *job) for job in jobs]
    try:
        for f in futures:
            f.result()  # re-raises the first failure (a SourceError names the file and tensor)
    finally:
        for f in futures:
            f.cancel()


class _Loaded:
    """A batch the reader has loaded. ``take()`` hands its buffer over, on the device, and keeps no
    reference: once the caller drops it (after forming the Grams) the memory is free, although the
    generator that yielded this object is still suspended."""

    def __init__(self, batch: Batch, buf: torch.Tensor | _Staged, seconds: float, device: torch.device,
                 ring: staging.PinnedRing | None = None):
        self.batch, self.seconds, self._buf, self._device, self._ring = batch, seconds, buf, device, ring

    def take(self, stream: torch.cuda.Stream | None = None) -> torch.Tensor:
        """The batch on the device. A staged batch is copied on ``stream`` (default: the current
        one); the caller makes its own stream wait for ``stream`` before using the result."""
        buf, self._buf = self._buf, None
        if isinstance(buf, torch.Tensor):  # a CPU scan's batch, or one read onto the GPU
            return buf
        # Pinned host -> device, asynchronous, one copy per matrix; the buffer goes back to the
        # ring once they are done.
        consumer = torch.cuda.current_stream(self._device)
        with torch.cuda.stream(stream or consumer):
            batch, dtype = self.batch, buf.views[0].dtype
            out = torch.empty((len(buf.views), batch.n, batch.m), dtype=dtype, device=self._device)
            landing = None  # an m x n matrix lands here, then is transposed into its slot
            for i, (view, task) in enumerate(zip(buf.views, batch.tasks)):
                if not batch.transposed(task):
                    out[i].copy_(view, non_blocking=True)
                else:  # a copy from a transposed host view would be made contiguous on the host first
                    if landing is None:
                        landing = torch.empty(view.shape, dtype=dtype, device=self._device)
                    landing.copy_(view, non_blocking=True)
                    out[i].copy_(landing.mT)
            del landing  # freed in stream order, after the transposes that read it
            done = staging.host_wait_event()
        if stream is not None:
            out.record_stream(consumer)  # made on ``stream``, freed after the consumer's kernels
        if self._ring is not None:
            self._ring.release(buf.block, done)
        else:  # a one-off buffer (no ring): keep it alive until the copies are done
            done.synchronize()
        return out


def _prefetched(source: WeightSource, batches: list[Batch], device: torch.device) -> Iterator[_Loaded]:
    """Yield each batch loaded. On CUDA a reader thread loads up to PREFETCH_BATCHES batches ahead
    while the caller works; on a CPU scan batches are read in line, since a reader would compete
    with LAPACK for the same cores (OpenMP workers spinning in a second thread halved eigvalsh
    speed on 2 cores). File pieces go to ``IO_THREADS`` threads either way (system calls only).
    """
    # CUDA's current device is per thread and starts at 0: a scan on cuda:1 (a second rank) would
    # otherwise pin memory, stream and generate through GPU 0 from these threads.
    on_device = {}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        on_device = dict(initializer=torch.cuda.set_device, initargs=(index,))
    with ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="spectrum-fast-io", **on_device) as io_pool:
        if device.type != "cuda":
            for batch in batches:
                yield _Loaded(batch, *_load_batch(source, batch, device, io_pool), device)
            return
        on_host = PINNED_STAGING and source.device_of(batches[0].tasks[0].tensor).type == "cpu"
        depth = PREFETCH_BATCHES if on_host else 1  # batches read ahead of the one being computed
        # depth batches loaded or loading, and one the caller has not yet copied to the GPU
        ring = staging.PinnedRing(depth + 1, staging_bytes(batches)) if on_host else None
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spectrum-fast-reader", **on_device) as reader:
                pending = deque(reader.submit(_load_batch, source, b, device, io_pool, ring) for b in batches[:depth])
                try:
                    for i, batch in enumerate(batches):
                        buf, load_s = pending.popleft().result()
                        if i + depth < len(batches):
                            pending.append(reader.submit(_load_batch, source, batches[i + depth], device, io_pool, ring))
                        if isinstance(buf, torch.Tensor) and buf.is_cuda:
                            # Allocated on the reader's stream, used on this one: keep the allocator
                            # from handing its memory to the reader before this stream is done with it.
                            buf.record_stream(torch.cuda.current_stream(device))
                        loaded = _Loaded(batch, buf, load_s, device, ring)
                        del buf
                        yield loaded
                finally:  # the scan ended early: stop the reader before the pool waits for it
                    for f in pending:
                        f.cancel()
                    if ring is not None:
                        ring.close()  # a reader waiting for a buffer gets RingClosed, not a hang
        finally:
            if ring is not None:  # the reader has stopped: wait for the last copies, unpin
                if staging.UNPIN_IN_BACKGROUND:
                    ring.free_later()
                else:
                    ring.free()


def timed_loads(source: WeightSource, batches: list[Batch], device: torch.device,
                timings: dict[str, float] | None) -> Iterator[_Loaded]:
    """_prefetched's batches, adding the time spent waiting for each to timings["wait_s"] (what
    reading adds to a scan) and its reader time to timings["read_s"] (overlapped)."""
    loads = _prefetched(source, batches, device)
    while True:
        asked = time.perf_counter()
        loaded = next(loads, None)
        if timings is not None:
            timings["wait_s"] = timings.get("wait_s", 0.0) + time.perf_counter() - asked
        if loaded is None:
            return
        if timings is not None:
            timings["read_s"] = timings.get("read_s", 0.0) + loaded.seconds
        yield loaded


def _finite_and_nonzero(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``flat`` ([B, N]): all entries finite; some entry nonzero. One reduction pass
    and no temporaries: the largest |entry| per row (a NaN anywhere makes it NaN, an inf inf)
    tells both. (isfinite and != 0 over strided column slices, four passes, took about 0.27 s of the
    2.38 s the current stream was busy in a DeepSeek-V2 scan on the H200:
    bench/probes/scan_profile_deepseek_h200_1effe4b-wt1.log.)"""
    peak = torch.linalg.vector_norm(flat, float("inf"), dim=1)
    return torch.isfinite(peak), peak != 0


# Matrices whose eigenvalues may be pending at once, whatever the host's core count. The GPU chase
# (ops.eigen's two_stage_gpu route) takes ~0.7 s per 4096 matrix however many run beside it, so its
# throughput is the number in flight over that: 60 in flight (the H100 host's 15 workers x 4) made
# the 8B figures of bench/RESULTS.md; with 2 host workers, 8 in flight took 13.2 s against 10.5 s
# for 64 (H100, bench/probes/gpu_stage2_inflight_h100_d4bf6e7.log). Each waits as a band on the
# GPU, 2 MiB at n = 4096.
MIN_IN_FLIGHT = 64
# ... and more where their bands are small: as many as IN_FLIGHT_BAND_BYTES of bands hold (168 of
# DeepSeek-V2's 1536-wide Grams; 64 of Llama's 4096-wide ones, as before). H100, same run, 2
# DeepSeek-V2 MoE layers on the GPU: 2.25 s with 160 in flight against 2.37 s with 64
# (bench/probes/scan_profile_deepseek_h100_72487e2.log).
IN_FLIGHT_BAND_BYTES = 128 << 20


def _default_in_flight(k: int, device: torch.device) -> int:
    """Matrices that may wait for their eigenvalues while k x k Grams are being reduced on ``device``."""
    # Pooled sizes need room for a whole pool and the next one filling behind it: with fewer in
    # flight, finishing the oldest batch launches its pool early and the chases run small. H100,
    # one lease, 2 DeepSeek-V2 MoE layers on the GPU at 2 GiB: 2.05 s with this rule (192 in flight)
    # against 2.17 s with the 170 of IN_FLIGHT_BAND_BYTES (bench/probes/scan_profile_deepseek_h100_
    # 194c1a2.log and _e87608e.log).
    pooled = device.type == "cuda" and ops.eigen.pools_chases(k)  # only the GPU chase pools
    pool = ops.eigen.CHASE_POOL_MATRICES + MIN_IN_FLIGHT if pooled else 0
    return max(MIN_IN_FLIGHT, 4 * ops.band_eigen.host_workers(), IN_FLIGHT_BAND_BYTES // ops.eigen.band_bytes(k), pool)


@dataclass
class _InFlight:
    """A batch whose eigenvalues are still being computed (host band solves run behind the GPU)."""

    batch: Batch
    eigenvalues: ops.PendingEigenvalues
    finite: torch.Tensor
    nonzero: torch.Tensor
    started: float
    load_s: float


def _rows(item: _InFlight, estimator: str = "spectrum",
          on_eigenvalues: Callable[[Batch, torch.Tensor], None] | None = None) -> Iterator[tuple[MatrixTask, MatrixRow]]:
    batch = item.batch
    eigenvalues = item.eigenvalues.result()
    if on_eigenvalues is not None:
        on_eigenvalues(batch, eigenvalues)
    stats = ops.snr_statistics(eigenvalues, batch.n, batch.m, estimator=estimator)
    table = torch.stack([getattr(stats, f) for f in ops.SpectrumStats.FIELDS], dim=-1)
    # Per matrix: its share of the batch's wall time from analysis start to result, plus its share
    # of the (overlapped) read. Batches overlap, so these do not add up to the scan's time.
    per_matrix = (time.perf_counter() - item.started + item.load_s) / len(batch.tasks)
    yield from rows_from_table(batch, table, item.finite, item.nonzero, per_matrix)


def rows_from_table(batch: Batch, table: torch.Tensor, finite: torch.Tensor, nonzero: torch.Tensor,
                    seconds_per_matrix: float, estimate: bool = False) -> Iterator[tuple[MatrixTask, MatrixRow]]:
    """The rows of a batch from its [B, 7] statistics table (columns as ops.SpectrumStats.FIELDS)
    and its per-matrix finiteness and nonzero flags. ``estimate`` marks rows of the fast mode."""
    table, finite, nonzero = table.cpu().tolist(), finite.cpu().tolist(), nonzero.cpu().tolist()
    k = batch.k
    for task, row, ok, nz in zip(batch.tasks, table, finite, nonzero):
        sigma_max, sigma, tau, _signal, _noise, n_signal, snr = row
        status = "ok" if ok and nz else ("nonfinite" if not ok else "zero")
        if status == "nonfinite":
            sigma_max = sigma = tau = snr = float("nan")
        yield task, MatrixRow(
            name=task.name, type=task.type, snr=snr, shape=(task.n, task.m), dtype=task.tensor.dtype,
            sigma_max=sigma_max, sigma=sigma, threshold=tau,
            n_signal=None if status == "nonfinite" else int(n_signal),
            n_noise=None if status == "nonfinite" else k - int(n_signal),
            status=status, seconds=seconds_per_matrix, estimate=estimate,
        )


def run_batches(
    source: WeightSource,
    batches: list[Batch],
    device: torch.device,
    precision: str = "float64",
    on_batch: Callable[[Batch], None] | None = None,
    timings: dict[str, float] | None = None,
    eigen_route: str = "auto",
    max_in_flight: int | None = None,
    estimator: str = "spectrum",
    on_matrices: Callable[[Batch, torch.Tensor], None] | None = None,
    on_eigenvalues: Callable[[Batch, torch.Tensor], None] | None = None,
) -> Iterator[tuple[MatrixTask, MatrixRow]]:
    """Analyse each batch, yielding rows in batch order.

    With the two-stage eigen routes the host or the GPU's side streams solve the bands of batch i
    while the device reduces batch i+1; at most ``max_in_flight`` matrices (default: 4 per host
    worker, at least MIN_IN_FLIGHT, more where IN_FLIGHT_BAND_BYTES of bands hold more) wait for
    their eigenvalues. ``estimator`` picks the noise scale (ops.noise_edge; default Spectrum's).
    ``timings`` (if given) accumulates "read_s" (reader thread, overlapped with everything),
    "wait_s" (time the analysis loop stood waiting for the reader: what reading adds to the scan)
    and "compute_s" (the wall time of the analysis loop). ``on_matrices(batch, w)`` sees each
    batch's matrices [B, n, m] as read, on the device, before anything changes them (task i's
    matrix is w[i].mT where batch.transposed(task));
    ``on_eigenvalues(batch, eigenvalues)`` each batch's Gram eigenvalues [B, k], ascending.
    """
    if PIPELINE_ORDER:
        batches = pipeline_order(batches)
    in_flight_for = (lambda k: max_in_flight) if max_in_flight is not None else (lambda k: _default_in_flight(k, device))
    in_flight: deque[_InFlight] = deque()
    waiting = 0
    loop_start = time.perf_counter()

    def finish_oldest():
        nonlocal waiting
        item = in_flight.popleft()
        waiting -= len(item.batch.tasks)
        yield from _rows(item, estimator, on_eigenvalues)
        if on_batch is not None:
            on_batch(item.batch)

    # Host-to-device copies run on their own stream, the next batch's issued as soon as this
    # batch's eigen stage is queued, so the copy engine moves batch i+1 while the GPU reduces batch i.
    copy_stream = torch.cuda.Stream(device) if device.type == "cuda" and COPY_STREAM else None
    loads = timed_loads(source, batches, device, timings)

    def fetch() -> tuple[_Loaded, torch.Tensor] | None:
        loaded = next(loads, None)
        return None if loaded is None else (loaded, loaded.take(copy_stream))

    # The last batch of each Gram size: after it, no more bands join that size's pool.
    last_of_size = {b.k: b for b in batches}
    upcoming = fetch()
    while upcoming is not None:
        loaded, w = upcoming
        batch, load_s = loaded.batch, loaded.seconds
        started = time.perf_counter()
        if copy_stream is not None:
            torch.cuda.current_stream(device).wait_stream(copy_stream)  # this batch's copies are done
        if on_matrices is not None:
            on_matrices(batch, w)
        flat = w.reshape(len(batch.tasks), -1)
        finite, nonzero = _finite_and_nonzero(flat)
        # A non-finite matrix would poison nothing else, but LAPACK may refuse it: zero its NaNs and
        # infs first (its row reports "nonfinite" whatever its values become). Finite matrices are
        # left as they are, so no mask is needed: one contiguous pass, where masked_fill_ with the
        # per-matrix mask broadcast ran at about 340 GB/s (same log).
        torch.nan_to_num_(w, nan=0.0, posinf=0.0, neginf=0.0)
        g = ops.gram(w, precision)
        del w, flat, upcoming
        pending = ops.eigvalsh_deferred(g, eigen_route if batch.eigen_route == "auto" else batch.eigen_route)
        del g
        if START_LAST_POOL and last_of_size[batch.k] is batch:
            pending.start()
        in_flight.append(_InFlight(batch, pending, finite, nonzero, started, load_s))
        # After the eigen stage is queued (a reader that lags must not hold it back): batch i+1's
        # copy then runs beside batch i's band reduction.
        upcoming = fetch()
        waiting += len(batch.tasks)
        limit = in_flight_for(batch.k)
        while in_flight and (waiting > limit or in_flight[0].eigenvalues.done()):
            yield from finish_oldest()
    while in_flight:
        yield from finish_oldest()
    if timings is not None:
        timings["compute_s"] = timings.get("compute_s", 0.0) + time.perf_counter() - loop_start
