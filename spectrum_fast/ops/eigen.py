"""All eigenvalues (ascending) of a batch of symmetric matrices: one function, three routes.

- "syevd": torch.linalg.eigvalsh (cuSOLVER syevd on CUDA, LAPACK on CPU): one-stage
  tridiagonalization, bound by memory and launch latency on the GPU (H100, float64: 4096 in
  118 ms; host threads do not help, bench/probes/concurrency.log, nor batching, DESIGN.md §3).
- "two_stage": dense -> band on the matrix's device with batched GEMMs (ops.band), then the band's
  eigenvalues by LAPACK dsbev on a pool of host threads (ops.band_eigen). The GPU moves on to the
  next batch while the host solves this one's bands.
- "two_stage_gpu": both stages on the device: stage 1 as above, then Triton kernels for the band's
  bulge chase to tridiagonal (kernels.bulge) and the tridiagonal's eigenvalues by bisection
  (kernels.tridiagonal), on side streams; only eigenvalues come back to the host.
Which route wins is measured. Alone (float64, H100 + 16 cores): at n = 4096 syevd takes 117 ms per
matrix; the two-stage pipeline with host bands 74 ms, bound by the host (15 threads of dsbev,
70 ms per matrix) while stage 1 takes 42 ms (bench/probes/two_stage.log); the GPU chase and
bisection of a band 25 ms, in batches of 32 (bench/results/kernels_bulge_h100_7203162.log). In the
8B scan with the weights on the GPU (H200, bench/probes/gpu_stage2_h200_331f29e.log): every band
on the GPU 9.7 s; every band on the host 11.8 s; host bands while a thread is free, else syevd,
12.1 s; else the GPU chase, 12.1 s (the host's narrow bands make stage 1 slower). So "auto" takes
the first of AUTO_ROUTES that can run: the GPU kernels where Triton runs on the device (up to
GPU_STAGE2_MAX_N), else host bands while a host thread is free, else syevd.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import torch

from .. import staging
from . import band, band_eigen

# Smallest matrix the two-stage route takes on each device type. On the H100 it wins from 1024 up
# (5.1 vs 10.2 ms, two_stage.log); on a CPU the GEMM stage competes with LAPACK for the same cores, so syevd.
TWO_STAGE_MIN_N = {"cuda": 512, "cpu": 1 << 30}


def bandwidth_for(n: int, route: str = "two_stage") -> int:
    """Stage-1 band width for the route that takes the band.

    Host (dsbev, ~n^2 * width): narrow. H100 + 16 cores, float64 (two_stage.log): n=4096 host
    70/108/165 ms and GPU 42/33/28 ms per matrix (batch 5) at width 16/32/64, end to end
    74/102/137 ms; n=1024 end to end 5.1/5.3/9.8 ms.
    GPU (two_stage_gpu): the chase kernel costs about the same at 16 and 32 (n=4096, batch 32:
    22.8 ms per matrix at 16 with one warp, 21.7 at 32 with four) and 29 ms at 64, while stage 1
    gets cheaper as the band widens, so GPU_BANDWIDTH (bench/results/kernels_bulge_h100_*.log)."""
    if route == "two_stage_gpu":
        return GPU_BANDWIDTH
    return 32 if n <= 1536 else 16


GPU_BANDWIDTH = 32


ROUTES = ("auto", "syevd", "two_stage", "two_stage_gpu")

# torch.linalg.eigvalsh copies its whole input batch before solving; solving at most this many
# bytes of matrices per call bounds that copy. A batched syevd call is no faster than a loop on
# the H100 (DESIGN.md §3), so nothing is lost by splitting big matrices.
_SYEVD_CALL_BYTES = 64 << 20


def _matrices_per_syevd_call(k: int, itemsize: int) -> int:
    return max(1, _SYEVD_CALL_BYTES // max(1, k * k * itemsize))


def syevd_extra_bytes(k: int, itemsize: int = 8) -> int:
    """Device bytes the syevd route adds on top of its input, for k x k matrices: the copy of one
    slice of matrices that torch.linalg.eigvalsh makes, and cuSOLVER's workspace, which measured
    about 4 matrices' worth (H100, bench/probes/memory_trace.log: 644 MiB at k = 4096, 98 MiB for
    a slice of 8 at k = 1024, float64)."""
    return (_matrices_per_syevd_call(k, itemsize) + 4) * k * k * itemsize


def two_stage_extra_bytes(k: int, itemsize: int = 8) -> int:
    """Device bytes the two-stage routes add per k x k matrix of a batch, at their largest: stage
    1's panel temporaries (ops.band.reduce_to_band_: about a dozen k x bandwidth blocks alive at
    once in the first step) and the band storage handed to stage 2 (k x 2 bandwidth), all float64;
    float32 matrices (itemsize 4) add their float64 copy (_two_stage_gpu says why)."""
    width = GPU_BANDWIDTH
    upcast = k * k * 8 if itemsize < 8 else 0
    return (12 * k * width + 2 * k * width) * 8 + upcast


def _syevd(g: torch.Tensor) -> torch.Tensor:
    """torch.linalg.eigvalsh over [B, k, k] in slices of at most _SYEVD_CALL_BYTES."""
    per_call = _matrices_per_syevd_call(g.shape[-1], g.element_size())
    if g.shape[0] <= per_call:
        return torch.linalg.eigvalsh(g)
    return torch.cat([torch.linalg.eigvalsh(g[i : i + per_call]) for i in range(0, g.shape[0], per_call)])


# The routes "auto" tries for a float64 matrix of at least TWO_STAGE_MIN_N, in order (see the
# module's docstring for the timings): "two_stage_gpu" where the Triton kernels run on the device
# and n <= GPU_STAGE2_MAX_N, "two_stage" while a host thread is free to take the bands, "syevd".
AUTO_ROUTES = ("two_stage_gpu", "two_stage", "syevd")

# Largest n that "auto" gives the GPU chase. One program chases one matrix, about n^2 / b steps in
# a row, so a matrix takes ~0.7 s at n = 4096 however many run beside it, and four times that at
# 8192, where batches hold one matrix and GPU_STAGE2_STREAMS of them run at once: the 70B scan
# (8 layers, H100) then took 513 ms per matrix against 329 ms with host bands and syevd
# (bench/results/gpu_workloads_h100_b911384.log against _44cc8ac.log).
# The compiled chase (ops.band.CHASE_KERNEL, a cluster of blocks per matrix) solves one 8192
# matrix faster than syevd on its own (H100, route 519-560 ms against 583 ms,
# bench/results/eigen_engine_h100_45dfebd.log). With n = 8192 given to it, the 70B scan (those
# Grams come one per batch) took 375 ms per matrix at 45dfebd
# (bench/results/gpu_workloads_h100_45dfebd.log) against 316 ms with host bands and syevd at
# f917a09; the two runs differ in more than this, but until they are separated the limit stays
# for both chases.
GPU_STAGE2_MAX_N = 4096


def gpu_stage2_available(device: torch.device) -> bool:
    """Whether the two_stage_gpu route's kernels can run on ``device`` (compiled, on CUDA)."""
    from ..kernels import bulge, tridiagonal

    return device.type == "cuda" and bulge.available(device) and tridiagonal.available(device)


def _two_stage_gpu_takes(n: int, device: torch.device) -> bool:
    """Whether the GPU route can take float64 [*, n, n] on ``device`` (its kernels there, n within
    GPU_STAGE2_MAX_N); the size floor, TWO_STAGE_MIN_N, is the caller's."""
    return n <= GPU_STAGE2_MAX_N and gpu_stage2_available(device)


# GPUs (compute capability) where "auto" gives float32 matrices to the GPU route, which solves them
# in float64 (_two_stage_gpu): measured on the H100 only (c22742c, bench/eigen_engine.py --dtype
# float32: 3.8x to 11.3x float32 syevd from n = 1024 to 8192, to float64's accuracy). A GPU whose
# float64 runs at a small fraction of float32's rate (most consumer parts) would lose.
FLOAT32_GPU_ROUTE_CAPABILITIES = ((9, 0),)


def float32_to_gpu_route(device: torch.device) -> bool:
    """Whether "auto" may give float32 matrices on ``device`` to "two_stage_gpu"."""
    return device.type == "cuda" and tuple(torch.cuda.get_device_capability(device)) in FLOAT32_GPU_ROUTE_CAPABILITIES


def gpu_route_first(n: int, device: torch.device, dtype: torch.dtype = torch.float64) -> bool:
    """Whether "auto" gives [*, n, n] matrices of ``dtype`` on ``device`` to "two_stage_gpu"
    whatever else is busy (it comes first in AUTO_ROUTES for float64, alone for float32, and
    qualifies), so a planner can count on it."""
    if n < TWO_STAGE_MIN_N.get(device.type, 1 << 30) or not _two_stage_gpu_takes(n, device):
        return False
    if dtype == torch.float32:
        return float32_to_gpu_route(device)
    return dtype == torch.float64 and AUTO_ROUTES[0] == "two_stage_gpu"


def choose_route(n: int, device: torch.device, dtype: torch.dtype) -> str:
    """The route for the next batch of [*, n, n] matrices: for float64, the first of AUTO_ROUTES
    that can take it now; for float32, the GPU route where FLOAT32_GPU_ROUTE_CAPABILITIES says,
    else syevd (the host bands are float64 only)."""
    if dtype == torch.float32:
        return "two_stage_gpu" if gpu_route_first(n, device, dtype) else "syevd"
    if dtype != torch.float64 or n < TWO_STAGE_MIN_N.get(device.type, 1 << 30):
        return "syevd"
    for route in AUTO_ROUTES:
        if route == "two_stage" and band_eigen.available() and band_eigen.backlog() < band_eigen.host_workers():
            return route
        if route == "two_stage_gpu" and _two_stage_gpu_takes(n, device):
            return route
        if route == "syevd":
            return route
    return "syevd"


class PendingEigenvalues:
    """Eigenvalues being computed; ``result()`` -> [B, k] float64 on the host, ascending.

    Four kinds: ready (a tensor), host band solves (futures), a copy from the GPU that lands in
    ``ready`` once ``event`` has passed (solves on a side stream), or bands waiting in a chase pool
    (``launch`` starts the pool's solve, which lands here as the kind before)."""

    def __init__(self, ready: torch.Tensor | None = None, futures: list[Future] | None = None,
                 event: torch.cuda.Event | None = None, launch: Callable[[], None] | None = None):
        self._ready = ready
        self._futures = futures or []
        self._event = event
        self._launch = launch

    def _land(self, ready: torch.Tensor, event: torch.cuda.Event | None) -> None:
        self._ready, self._event, self._launch = ready, event, None

    def start(self) -> None:
        """Launch the solve now if these bands wait in a chase pool: the pool goes with whatever it
        holds (a caller that knows no more of this size will come need not wait for result())."""
        if self._launch is not None:
            self._launch()

    def done(self) -> bool:
        if self._launch is not None:
            return False  # waits for its pool to fill, or for result()
        if self._event is not None:
            return self._event.query()
        return all(f.done() for f in self._futures)

    def result(self) -> torch.Tensor:
        self.start()
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        if self._ready is None:
            self._ready = torch.from_numpy(np.stack([f.result() for f in self._futures]))
        return self._ready


# Run the syevd route on a side stream, its result copied to pinned host memory asynchronously,
# instead of on the current stream with a blocking copy. Both syevd and the two-stage route's
# panel factorizations are latency-bound on the H100 (one kernel at a time, the GPU mostly idle),
# so overlapping them might have paid; it also keeps the Python thread free to queue the next
# batch. The planner then sizes batches for two in flight (engine.gpu_batch_plan). Measured, it
# lost: the 8B scan with the weights on the GPU took 19.9 s against 11.4 s without, and 20.5-21.9 s
# against 12.4-13.6 s from a cold disk (H100, bench/probes/cold_overlap_h100_eb543d5.log), so off.
SYEVD_SIDE_STREAM = False

# Side streams per (device, pool size), taken round robin: [turn, streams].
_side_streams: dict[tuple[torch.device, int], list] = {}


def _side_stream(device: torch.device, pool: int) -> torch.cuda.Stream:
    entry = _side_streams.get((device, pool))
    if entry is None:
        entry = _side_streams.setdefault((device, pool), [0, [torch.cuda.Stream(device) for _ in range(pool)]])
    entry[0] = (entry[0] + 1) % pool
    return entry[1][entry[0]]


def _solve_on_side_stream(inputs: torch.Tensor, pool: int, solve: Callable[[], torch.Tensor]) -> PendingEigenvalues:
    """Run ``solve`` (which reads ``inputs``, made on the current stream) on one of ``pool`` side
    streams; its eigenvalues come to pinned host memory asynchronously."""
    if not inputs.is_cuda:  # the CPU under the interpreter (tests): at once
        return PendingEigenvalues(ready=solve().to(torch.float64))
    stream = _side_stream(inputs.device, pool)
    stream.wait_stream(torch.cuda.current_stream(inputs.device))  # the inputs are complete
    with torch.cuda.stream(stream):
        values = solve().to(torch.float64)
        host = torch.empty(values.shape, dtype=torch.float64, pin_memory=True)
        host.copy_(values, non_blocking=True)
        event = staging.host_wait_event()
    # Made on the current stream, read on the side stream: keep the allocator from giving their
    # memory to new work on the current stream before the solve has finished.
    inputs.record_stream(stream)
    return PendingEigenvalues(ready=host, event=event)


def _solve_band_after(event: torch.cuda.Event | None, rows: np.ndarray) -> np.ndarray:
    if event is not None:
        event.synchronize()  # releases the GIL while the device finishes the copy
    return band_eigen.band_eigvalsh(rows)


# The GPU stage 2 kernels run one program per matrix, so one batch's launch fills a few SMs for a
# long time: batches go round-robin to this many side streams, whose launches then run side by
# side, while the current stream goes on with the next batches' Grams and band reductions.
# 16 streams timed like 8 in the 8B scan (10.0 against 9.7 s, bench/probes/gpu_stage2_h200_331f29e.log).
GPU_STAGE2_STREAMS = 8


def _two_stage_gpu(g: torch.Tensor) -> PendingEigenvalues:
    """Both stages on g's device: dense -> band (ops.band) at GPU_BANDWIDTH, band -> tridiagonal by
    bulge chasing (kernels.bulge) and the tridiagonal's eigenvalues by bisection
    (kernels.tridiagonal), those two on a side stream (GPU_STAGE2_STREAMS), the bands of several
    calls together where CHASE_POOL_MATRICES says so; only the eigenvalues come to the host."""
    from ..kernels import bulge, tridiagonal

    if not (bulge.available(g.device) and tridiagonal.available(g.device)):  # the interpreter counts here
        raise ValueError(f"the two_stage_gpu eigen route needs triton and a CUDA device, not {g.device}")
    k = g.shape[-1]
    width = min(bandwidth_for(k, "two_stage_gpu"), max(1, k - 1))
    # float32 matrices are solved in float64. Stage 1 in float32 alone left 1.5-2.6e-6 of the
    # largest eigenvalue on clustered and repeated Grams (n = 1000, 2048, CPU) and the whole route
    # in float32 2.5-5.5e-6 on the H100 (n = 1000-4100, tests/test_eigen_engine_gpu.py at 394157b):
    # over the 2e-6 bound that cuSOLVER's float32 syevd keeps (6e-7 to 1e-6 there). float64 GEMMs
    # run on the H100's tensor cores at about float32's SIMT rate, so little is lost but memory.
    bands = band.lower_band(band.reduce_to_band_(g.to(torch.float64).contiguous(), width), 2 * width)
    if pools_chases(k):
        return _pooled(bands, width)
    return _solve_on_side_stream(bands, GPU_STAGE2_STREAMS, lambda: _stage2(bands, width))


def _stage2(bands: torch.Tensor, width: int) -> torch.Tensor:
    from ..kernels import tridiagonal

    d, e = band.band_to_tridiagonal(bands, width)
    return tridiagonal.tridiagonal_eigvalsh(d, e)


# Chase the bands of consecutive two_stage_gpu calls of one size in one launch once at least this
# many matrices wait (or when one of them is asked for; 0 or 1: every call on its own), for sizes
# up to CHASE_POOL_MAX_N. The chase runs one block per matrix, so its time per matrix falls with
# the matrices in one launch until the SMs are full (H100, n = 1536: 1.28 ms per matrix at batch
# 32, 0.61 at 96; bench/probes/chase_split_h100_1effe4b.log), while the scan's batches are small
# under its memory budget (DeepSeek-V2's 1536 x 5120 experts at 2 GiB: 40 to 45). A band is small
# (n x 2 bandwidth: 0.75 MiB at n = 1536). H200, same run, 2 DeepSeek-V2 MoE layers on the GPU:
# 2.15 s with a pool of 128 against 2.38 s without; Llama-3-8B 4.15 against 4.11 s (its 4096
# Grams not pooled; pooling them too cost 4.91 against 4.16 s: the pool's room in the budget
# shrank their batches from 8 and 5 to 3). bench/probes/scan_profile_deepseek_h200_1effe4b-wt3.log,
# scan_profile_h200_1effe4b-wt3.log and (pooling every size) scan_profile_h200_1effe4b-wt2.log.
CHASE_POOL_MATRICES = 128
# Only bands of matrices up to this size wait in the pool; bigger ones are chased call by call.
CHASE_POOL_MAX_N = 2048


def pools_chases(k: int) -> bool:
    """Whether the bands of k x k matrices wait in the chase pool."""
    return CHASE_POOL_MATRICES > 1 and k <= CHASE_POOL_MAX_N


def band_bytes(k: int) -> int:
    """Device bytes of the band that a k x k matrix hands from stage 1 to stage 2 (k x 2 bandwidth, float64)."""
    return k * 2 * GPU_BANDWIDTH * 8


def chase_pool_bytes(k: int) -> int:
    """Device bytes that bands of k x k matrices hold while they wait in the chase pool, at most:
    CHASE_POOL_MATRICES bands and their concatenation for the launch."""
    return 2 * CHASE_POOL_MATRICES * band_bytes(k) if pools_chases(k) else 0


# Bands waiting for a chase: (device, n, width) -> [(bands, their pending eigenvalues)].
_band_pools: dict[tuple, list[tuple[torch.Tensor, PendingEigenvalues]]] = {}


def _pooled(bands: torch.Tensor, width: int) -> PendingEigenvalues:
    key = (bands.device, bands.shape[-2], width)
    pending = PendingEigenvalues(launch=lambda: _launch_pool(key))
    pool = _band_pools.setdefault(key, [])
    pool.append((bands, pending))
    if sum(b.shape[0] for b, _ in pool) >= CHASE_POOL_MATRICES:
        _launch_pool(key)
    return pending


def _launch_pool(key: tuple) -> None:
    """One stage-2 solve of every band waiting under ``key``; each pending gets its rows."""
    pool = _band_pools.pop(key, None)
    if not pool:
        return
    bands = torch.cat([b for b, _ in pool]) if len(pool) > 1 else pool[0][0]
    solved = _solve_on_side_stream(bands, GPU_STAGE2_STREAMS, lambda: _stage2(bands, key[2]))
    row = 0
    for b, pending in pool:
        pending._land(solved._ready[row : row + b.shape[0]], solved._event)
        row += b.shape[0]


def eigvalsh_deferred(g: torch.Tensor, route: str = "auto") -> PendingEigenvalues:
    """Start the eigen solve of symmetric ``g`` ([B, k, k]); may overwrite ``g``."""
    if route == "auto":
        route = choose_route(g.shape[-1], g.device, g.dtype)
    if route == "syevd":
        if SYEVD_SIDE_STREAM and g.is_cuda:
            return _solve_on_side_stream(g, 1, lambda: _syevd(g))
        return PendingEigenvalues(ready=_syevd(g).to("cpu", torch.float64))
    if route not in ("two_stage", "two_stage_gpu"):
        raise ValueError(f"unknown eigen route {route!r}: use one of {ROUTES}")
    if route == "two_stage_gpu" and g.dtype in (torch.float64, torch.float32):
        return _two_stage_gpu(g)
    if g.dtype != torch.float64:
        raise ValueError(f"the {route} route runs in float64{' or float32' if route == 'two_stage_gpu' else ''} only")
    width = min(bandwidth_for(g.shape[-1]), max(1, g.shape[-1] - 1))
    bands = band.lower_band(band.reduce_to_band_(g, width), width)
    event = None
    if bands.device.type == "cuda":
        host = torch.empty(bands.shape, dtype=bands.dtype, pin_memory=True)
        host.copy_(bands, non_blocking=True)
        # The host workers that wait on it should sleep, not spin on cores that the band solves of
        # earlier batches need (staging.BLOCKING_SYNC).
        event = staging.host_wait_event()
    else:
        host = bands.contiguous()
    futures = [band_eigen.submit_call(_solve_band_after, event, host[i].numpy()) for i in range(host.shape[0])]
    return PendingEigenvalues(futures=futures)


def eigvalsh(g: torch.Tensor, route: str = "auto") -> torch.Tensor:
    """Eigenvalues of symmetric ``g`` ([k, k] or [B, k, k]), ascending, float64 on the host for the
    two-stage route and g's dtype/device for syevd. ``g`` may be overwritten."""
    if g.dim() == 2:
        return eigvalsh(g.unsqueeze(0), route)[0]
    if route == "auto":
        route = choose_route(g.shape[-1], g.device, g.dtype)
    if route == "syevd":
        return _syevd(g)
    return eigvalsh_deferred(g, route).result()
