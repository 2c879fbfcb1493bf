"""``scan()``: the public entry point that ties source, targets, engine and results together."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from . import ops
from .cache import ScanCache, cache_disabled_by_env, shared_content_digest
from .distributed import Ranks, ranks_for
from .engine import Batch, batch_shape, gpu_batch_plan, matrix_device_bytes, plan_batches, run_batches
from .errors import SelectionError
from .memory import PeakTracker
from .partition import split_batches, tasks_cost
from .results import MatrixRow, ScanResult
from .sources import ModuleSource, open_source
from .targets import MatrixTask, plan_tasks, require_some

# GPU memory a scan may use (torch.cuda.max_memory_allocated from the scan's start). The planner
# sizes each shape's batches to it (engine.gpu_batch_plan). 2 GiB rather than 1.5: DeepSeek-V2's
# 1536 x 5120 experts then run in batches of 40 to 45 instead of ~31 (H100, 2 MoE layers on the GPU:
# 2.05 s against 2.16 s at 1.5 GiB, bench/probes/scan_profile_deepseek_h100_194c1a2.log), and
# Llama-3-70B's peak stays under 2 GB (1876 MiB, bench/results/gpu_workloads_h100_1b6ccba.log).
# Smaller budgets cost speed first: with stage 2 on the host, 640 MiB batches were too small for
# stage 1 on Llama-3-8B (bench/probes/memory_budget.log). Batches the GPU route takes get the
# budget less the upcast chunk, their temporaries and the chase pool (engine.gpu_batch_plan).
DEFAULT_MAX_GPU_MEMORY = 2 << 30
DEFAULT_CPU_BUDGET = 512 << 20


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SelectionError(f"device {device!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SelectionError(f"device {device!r} asked for, but this torch has no CUDA GPU: use --device cpu")
    return dev


def scan(
    source: Any,
    *,
    types: str | Sequence[str] = "auto",
    device: str | torch.device | None = None,
    progress: bool = True,
    precision: str = "float64",
    pool_experts: bool = False,
    model_name: str | None = None,
    max_gpu_memory: int | None = None,
    max_batch_bytes: int | None = None,
    eigen_route: str = "auto",
    method: str = "exact",
    estimator: str | None = None,
    cache: bool = True,
    on_matrices: Callable[[list[MatrixTask], torch.Tensor], None] | None = None,
    distributed: bool | None = None,
    keep_spectra: bool = False,
) -> ScanResult:
    """Signal-to-noise ratio of every selected weight matrix, exactly as Spectrum defines it.

    source: a torch.nn.Module (transformers models included), a Hugging Face model folder
        (safetensors, sharded or not; pytorch_model*.bin), one .safetensors/.bin file, or a dict
        of tensors. Files are read one tensor at a time.
    types: "auto" (>=2-D weights in the numbered blocks), "all" (also embeddings, head, norms),
        or a list of type names / regexes matched exactly against each type.
    device: where the maths runs; default cuda when available, else cpu.
    precision: "float64" (exact: float64 Gram and eigen solve) or "float32" (a float32 Gram, for
        GPUs with slow float64; off by 1e-5..1e-1 relative on spiky matrices, see the README's
        Precision section).
    pool_experts: group ``mlp.experts.<e>.down_proj`` of all e into one type ``mlp.experts.*.down_proj``.
    model_name: names the output files (default: the hub id in config.json, or the folder name).
    max_gpu_memory: bytes of GPU memory the scan may allocate (default 2 GiB); batches are sized
        to it, and a matrix that alone exceeds it is still scanned, one at a time. The peak is
        reported (ScanResult.peak_gpu_bytes).
    max_batch_bytes: fixes the bytes of matrices (input + Gram) per batch instead, on any device
        (default on a CPU: 512 MiB).
    eigen_route: "auto" (the measured faster one per size and device), "syevd"
        (torch.linalg.eigvalsh), "two_stage" (float64 dense -> band on the device, band
        eigenvalues by LAPACK on host threads) or "two_stage_gpu" (both stages on a CUDA device
        with Triton kernels: what "auto" picks there up to n = 4096); all are exact to float64
        rounding.
    method: "exact" (every singular value, the default) or "fast" (experimental): no full eigen
        solve; the largest singular values by subspace iteration on the fp32 Gram, sigma by
        "mp-moments", the number above the Marchenko-Pastur edge exactly by inertia, the noise sum
        from the MP law (ops.fast_snr); rows are marked as estimates.
    estimator: the noise scale sigma behind the edge tau = sigma (1 + sqrt(beta)): "spectrum"
        (IQR / 1.349, the reference's and the exact mode's default), "gavish-donoho", "mp-fit" or
        "mp-moments" (ops.noise_edge; the fast mode's, and the only one it takes).
    cache: read and write the result cache (cache.py; the README's "Cache and resume"): rows
        of matrices scanned before with the same weights and numeric options are taken from it
        (``ScanResult.from_cache``, ``cached_rows``), an interrupted scan's journaled rows are
        not computed again (``resumed_rows``), and finished rows are journaled batch by batch.
        False (or SPECTRUM_FAST_NO_CACHE=1 in the environment) neither reads nor writes it.
    on_matrices: called with each batch's tasks and a list of their matrices, each in its task's
        shape (task.n x task.m), as read, on the scan's device, before the scan changes them
        (load_pretrained puts them into the model from there); matrices whose rows come from the
        cache are not read, so not handed over.
    distributed: share the scan among the ranks of a torch.distributed job (distributed.py): None
        (default) does when the process runs under torchrun or a process group is initialized,
        True requires it, False scans alone. Each rank computes a share of about equal cost and
        reads only its tensors; every rank returns the whole result (``ScanResult.ranks`` has each
        rank's share and times). A GPU scan takes cuda:LOCAL_RANK on each rank.
    keep_spectra: also keep every matrix's singular values (``ScanResult.spectra``; write them with
        ``to_spectra``, spectra.py) for the report and other estimators. The cache keeps rows only,
        so such a scan computes every matrix (and still stores its rows). Exact method only.
    """
    if precision not in ("float64", "float32"):
        raise SelectionError(f"precision {precision!r} is not known: use float64 (exact) or float32")
    if eigen_route not in ops.ROUTES:
        raise SelectionError(f"eigen_route {eigen_route!r} is not known: use one of {', '.join(ops.ROUTES)}")
    if method not in ("exact", "fast"):
        raise SelectionError(f"method {method!r} is not known: use exact or fast")
    from .ops import noise_edge

    if estimator is None:
        estimator = "mp-moments" if method == "fast" else "spectrum"
    if estimator not in noise_edge.ESTIMATORS:
        raise SelectionError(f"estimator {estimator!r} is not known: use one of {', '.join(noise_edge.ESTIMATORS)}")
    if keep_spectra and method == "fast":
        raise SelectionError("keep_spectra needs every singular value: use method='exact'")
    if method == "fast" and estimator != "mp-moments":
        raise SelectionError(f"method='fast' estimates sigma by mp-moments, not {estimator}: "
                             f"leave estimator out or use method='exact'")
    if not isinstance(cache, bool):
        raise SelectionError(f"cache={cache!r}: give True or False (the folder is set by $SPECTRUM_FAST_CACHE)")
    if max_gpu_memory is not None and max_gpu_memory <= 0:
        raise SelectionError(f"max_gpu_memory={max_gpu_memory}: give a positive number of bytes")
    dev = resolve_device(device)
    with ranks_for(distributed, dev) as ranks:
        dev = dev if ranks is None else ranks.device
        return _scan(source, ranks, dev, types=types, progress=progress, precision=precision,
                     pool_experts=pool_experts, model_name=model_name, max_gpu_memory=max_gpu_memory,
                     max_batch_bytes=max_batch_bytes, eigen_route=eigen_route, method=method, estimator=estimator,
                     cache=cache, on_matrices=on_matrices, keep_spectra=keep_spectra)


def _open_and_plan(source, model_name, types, pool_experts):
    """-> (source, its tensors, the matrices to scan, the skipped tensors)."""
    src = open_source(source, model_name)
    try:
        infos = src.tensors()
        tasks, skipped = plan_tasks(infos, types, pool_experts)
        if isinstance(src, ModuleSource):
            meta = [t for t in tasks if src.is_meta(t.tensor)]
            why = "on the meta device with no offloaded copy (never loaded), not scanned"
            skipped += [(t.tensor.name, why) for t in meta]
            tasks = [t for t in tasks if not src.is_meta(t.tensor)]
        require_some(tasks, infos, types, src.label)
    except BaseException:
        src.close()
        raise
    return src, infos, tasks, skipped


def _scan(source, ranks: Ranks | None, dev: torch.device, *, types, progress, precision, pool_experts, model_name,
          max_gpu_memory, max_batch_bytes, eigen_route, method, estimator, cache, on_matrices,
          keep_spectra) -> ScanResult:
    start = time.perf_counter()
    if ranks is None:
        src, infos, tasks, skipped = _open_and_plan(source, model_name, types, pool_experts)
    else:  # every rank opens the source; all stop if one cannot, or sees other matrices (distributed.py)
        try:
            src, infos, tasks, skipped = _open_and_plan(source, model_name, types, pool_experts)
            error = None
        except Exception as e:
            src, infos, tasks, skipped, error = None, [], [], [], e
        try:
            ranks.agree(error, [(t.name, t.n, t.m, t.tensor.dtype) for t in tasks])
        except BaseException:
            if src is not None:
                src.close()
            raise
    try:
        store = _open_cache(src, infos, dev, ranks, cache and not cache_disabled_by_env(), precision=precision,
                            method=method, estimator=estimator, eigen_route=eigen_route)
        try:
            # Cached rows come without their spectra: a scan that keeps them computes every matrix.
            rows_by_order = store.known_rows(tasks) if store is not None and not keep_spectra else {}
            if ranks is not None:  # what any rank's cache knows is known (nodes may keep caches of their own)
                for known in ranks.all_gather(rows_by_order):
                    rows_by_order.update(known)
            pending = [t for t in tasks if t.order not in rows_by_order]
            batches = _plan_batches(pending, dev, precision=precision, method=method, eigen_route=eigen_route,
                                    max_gpu_memory=max_gpu_memory, max_batch_bytes=max_batch_bytes)
            if ranks is not None:
                batches = _my_batches(batches, pending, ranks)
            mine = [t for b in batches for t in b.tasks]
            timings: dict[str, float] = {}
            tracker = PeakTracker(dev)
            computed: dict[int, MatrixRow] = {}
            spectra: dict[str, np.ndarray] | None = {} if keep_spectra else None
            busy = time.perf_counter()
            try:
                if mine:
                    _compute(src, batches, dev, computed, store, tracker, timings,
                             done=len(rows_by_order) if ranks is None else 0,
                             total=len(tasks) if ranks is None else len(mine),
                             progress=progress and (ranks is None or ranks.rank == 0), precision=precision,
                             method=method, estimator=estimator, eigen_route=eigen_route,
                             on_matrices=on_matrices, ranks=ranks, spectra=spectra)
                busy = time.perf_counter() - busy
                rank_stats = None
                if ranks is not None:
                    ranks.wait_for_all()
                    mine_stats = dict(rank=ranks.rank, host=ranks.host, device=str(dev), matrices=len(mine),
                                      predicted_seconds=tasks_cost(mine), busy_seconds=busy,
                                      read_seconds=timings.get("read_s"), compute_seconds=timings.get("compute_s"),
                                      read_wait_seconds=timings.get("wait_s"),
                                      peak_gpu_bytes=tracker.gpu_peak if mine else None,
                                      peak_host_bytes=tracker.host_peak if mine else None)
                    rank_stats = _gather_rows(ranks, computed, mine_stats, spectra)
            except BaseException as e:
                if ranks is not None:
                    ranks.report_failure(e)
                raise
            rows_by_order.update(computed)
            if store is not None:
                _finish_cache(store, ranks, tasks, computed)
        finally:
            if store is not None:
                store.close()
        missing = [t.name for t in tasks if t.order not in rows_by_order]
        if missing:  # a defect, not bad input: every matrix was some rank's
            raise RuntimeError(f"distributed scan lost {len(missing)} rows, e.g. {missing[0]}")
        rows = [rows_by_order[i] for i in sorted(rows_by_order)]
        return ScanResult(
            rows=rows, model_name=src.model_name, embedding_name=src.embedding_name(),
            head_name=src.head_name(), device=str(dev), precision=precision, method=method, estimator=estimator,
            seconds=time.perf_counter() - start, peak_gpu_bytes=tracker.gpu_peak if mine else None,
            peak_host_bytes=tracker.host_peak if mine else None, skipped=skipped,
            read_seconds=timings.get("read_s"), compute_seconds=timings.get("compute_s"),
            read_wait_seconds=timings.get("wait_s"), from_cache=not pending,
            cached_rows=store.cached_rows if store is not None else 0,
            resumed_rows=store.resumed_rows if store is not None else 0, ranks=rank_stats,
            spectra=None if spectra is None else {r.name: spectra[r.name] for r in rows if r.name in spectra},
        )
    finally:
        src.close()


def _open_cache(src, infos, dev: torch.device, ranks: Ranks | None, use: bool, **numeric) -> ScanCache | None:
    """The scan's cache, or None. On ranks, a collective: the cache is used if every rank may, and
    its key is computed by all of them together (cache.shared_content_digest)."""
    if ranks is None:
        return ScanCache.for_scan(src, infos, dev, **numeric) if use else None
    if not all(ranks.all_gather(use)):
        return None
    content = shared_content_digest(src, infos, ranks)
    if content is None:
        return None
    return ScanCache.for_scan(src, infos, dev, **numeric, content=content, rank=ranks.rank)


def _gather_rows(ranks: Ranks, computed: dict[int, MatrixRow], stats: dict,
                 spectra: dict[str, np.ndarray] | None) -> list[dict]:
    """Every rank's rows into ``computed`` (and spectra into ``spectra``); -> every rank's stats."""
    gathered = []
    for rows_r, stats_r, spectra_r in ranks.all_gather((computed, stats, spectra)):
        if stats_r["rank"] != ranks.rank:
            computed.update(rows_r)
            if spectra is not None:
                spectra.update(spectra_r)
        gathered.append(stats_r)
    return gathered


def _finish_cache(store: ScanCache, ranks: Ranks | None, tasks: list[MatrixTask],
                  computed: dict[int, MatrixRow]) -> None:
    """A single process, or rank 0 with every rank's rows, writes the entry; another rank drops
    its journal (its rows are in rank 0's entry)."""
    if ranks is not None and ranks.rank != 0:
        store.drop_journal()
        return
    if ranks is not None:
        by_order = {t.order: t for t in tasks}
        store.adopt([(by_order[o], row) for o, row in computed.items()])
    store.finish()


def _keep_spectra(batch: Batch, eigenvalues: torch.Tensor, spectra: dict[str, np.ndarray]) -> None:
    values = ops.singular_values_from_eigenvalues(eigenvalues).flip(-1).cpu().numpy()
    for task, row in zip(batch.tasks, values):
        spectra[task.name] = row.copy()


def _plan_batches(tasks: list[MatrixTask], dev: torch.device, *, precision: str, method: str, eigen_route: str,
                  max_gpu_memory: int | None, max_batch_bytes: int | None) -> list[Batch]:
    """The batches a scan of ``tasks`` on ``dev`` runs, sized to its memory budget."""
    matrix_bytes = matrix_device_bytes
    if max_batch_bytes is not None:
        budget = max_batch_bytes
    elif dev.type == "cuda" and method == "fast":
        from .fast_engine import fast_matrix_bytes

        # Three quarters of the budget for the batch; the rest for the next batch's input (read
        # ahead) and the allocator's slack. Larger batches pay the fast mode's many small ops fewer times.
        budget, matrix_bytes = 3 * (max_gpu_memory or DEFAULT_MAX_GPU_MEMORY) // 4, fast_matrix_bytes
    elif dev.type == "cuda":
        budget = gpu_batch_plan(max_gpu_memory or DEFAULT_MAX_GPU_MEMORY, precision, eigen_route, dev)
    else:
        budget = DEFAULT_CPU_BUDGET
    return plan_batches(tasks, budget, eigen_route=eigen_route, matrix_bytes=matrix_bytes)


def _my_batches(batches: list[Batch], pending: list[MatrixTask], ranks: Ranks) -> list[Batch]:
    """This rank's share of rank 0's batch plan (partition.py: whole batches, so a matrix meets the
    kernels a single process would run it with). Rank 0's plan, sent to all, rather than each
    rank's own: ranks on different GPUs could plan differently, and every matrix must be someone's."""
    plan = ranks.broadcast([([t.order for t in b.tasks], b.eigen_route) for b in batches])
    by_order = {t.order: t for t in pending}
    batches = [Batch(*batch_shape(by_order[orders[0]]), [by_order[o] for o in orders], route)
               for orders, route in plan]
    return split_batches(batches, ranks.world)[ranks.rank]


def _compute(src, batches: list[Batch], dev: torch.device, rows_by_order: dict[int, MatrixRow],
             store: ScanCache | None, tracker: PeakTracker, timings: dict[str, float], *, done: int, total: int,
             progress: bool, precision: str, method: str, estimator: str, eigen_route: str,
             on_matrices: Callable[[list[MatrixTask], torch.Tensor], None] | None = None,
             ranks: Ranks | None = None, spectra: dict[str, np.ndarray] | None = None) -> None:
    """Compute the rows of ``batches`` into ``rows_by_order`` (by task.order), journaling each
    batch's rows in ``store`` as soon as the batch is done. ``done`` of ``total`` matrices were
    known before. ``spectra``: filled with each finite matrix's singular values (descending)."""
    from tqdm.auto import tqdm

    desc = "SNR" if ranks is None else f"SNR (rank {ranks.rank} of {ranks.world})"
    with tqdm(total=total, initial=done, unit="matrix", desc=desc, disable=not progress, dynamic_ncols=True) as bar:

        def after(batch):
            if store is not None:
                store.commit_batch()  # before anything else can raise: a finished batch is never lost
            tracker.sample()
            bar.update(len(batch.tasks))
            if ranks is not None:
                ranks.raise_if_failed()  # another rank failed: stop now, not at the gather

        def hand_over(batch: Batch, w: torch.Tensor) -> None:  # each matrix in its own shape again
            on_matrices(batch.tasks, [w[i].mT if batch.transposed(t) else w[i] for i, t in enumerate(batch.tasks)])

        handed = None if on_matrices is None else hand_over
        if method == "fast":
            from .fast_engine import run_batches_fast

            rows = run_batches_fast(src, batches, dev, on_batch=after, timings=timings, on_matrices=handed)
        else:
            keep = None if spectra is None else (lambda batch, eigenvalues: _keep_spectra(batch, eigenvalues, spectra))
            rows = run_batches(src, batches, dev, precision, on_batch=after, timings=timings,
                               eigen_route=eigen_route, estimator=estimator, on_matrices=handed, on_eigenvalues=keep)
        for task, row in rows:
            rows_by_order[task.order] = row
            if spectra is not None and row.status == "nonfinite":
                spectra.pop(task.name, None)  # its values came from the zeroed NaNs: not its spectrum
            if store is not None:
                store.add(task, row)
