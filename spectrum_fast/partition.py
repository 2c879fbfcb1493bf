"""Which rank of a distributed scan computes which matrix: shares of about equal cost, decided
from the tensors' shapes alone (a safetensors header is enough), the same on every rank.

A matrix's cost is a time estimate on one GPU: reading its bytes, its Gram (2 max(n,m) k^2 flops
with k = min(n, m)) and the eigen solve of the k x k Gram (~k^3). The rates are rough H100 figures
(DESIGN.md section 3: ~4 GB/s from file to GPU, ~50 TFLOP/s for the Gram, an 8192 eigen solve in
~0.15 s); only their ratios matter, since every rank runs on the same kind of device. The shares
are made by longest-processing-time-first: items in decreasing cost, each to the rank with the
least so far. Its most loaded rank exceeds the mean by less than one item's cost, so with hundreds
of items per rank the shares are within a few percent (bench/partition_balance.py).

A scan shares whole batches (engine.plan_batches, planned once for all ranks), not matrices: each
matrix is then computed in the batch a single process would put it in, with the same kernels, and
a GPU's rows are bit-identical whatever the number of ranks (GPU kernels round differently with the
batch's size).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import TypeVar

from .targets import MatrixTask

T = TypeVar("T")

READ_BYTES_PER_S = 4e9
GRAM_FLOP_PER_S = 5e13
EIGEN_K3_PER_S = 3.7e12  # k^3 per second: 8192^3 in ~0.15 s

_ITEMSIZE = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}


def matrix_cost(n: int, m: int, dtype: str) -> float:
    """Estimated seconds to read and solve one n x m matrix on one GPU."""
    k, big = min(n, m), max(n, m)
    return n * m * _ITEMSIZE.get(dtype, 4) / READ_BYTES_PER_S + 2.0 * big * k * k / GRAM_FLOP_PER_S \
        + float(k) ** 3 / EIGEN_K3_PER_S


def task_cost(task: MatrixTask) -> float:
    return matrix_cost(task.n, task.m, task.tensor.dtype)


def tasks_cost(tasks: Sequence[MatrixTask]) -> float:
    return sum(task_cost(t) for t in tasks)


def split_by_cost(items: Sequence[T], ranks: int, cost: Callable[[T], float] = task_cost,
                  order: Callable[[T], int] = lambda t: t.order) -> list[list[T]]:
    """``ranks`` shares of ``items`` (matrices, or batches with ``cost=lambda b: tasks_cost(b.tasks)``)
    of about equal total cost, each in ``order``. Deterministic: ties are broken by the order and
    the lower rank, so every rank computes the same split."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, not {ranks}")
    shares: list[list[T]] = [[] for _ in range(ranks)]
    loads = [(0.0, r) for r in range(ranks)]  # a heap of (cost so far, rank)
    for item in sorted(items, key=lambda i: (-cost(i), order(i))):
        load, r = heapq.heappop(loads)
        shares[r].append(item)
        heapq.heappush(loads, (load + cost(item), r))
    for share in shares:
        share.sort(key=order)
    return shares


def split_batches(batches: Sequence, ranks: int) -> list[list]:
    """``ranks`` shares of a scan's batch plan (engine.Batch), each in the plan's order."""
    index = {id(b): i for i, b in enumerate(batches)}
    return split_by_cost(batches, ranks, cost=lambda b: tasks_cost(b.tasks), order=lambda b: index[id(b)])


def share_costs(shares: Sequence[Sequence[MatrixTask]]) -> list[float]:
    return [tasks_cost(share) for share in shares]


def imbalance(costs: Sequence[float]) -> float:
    """max / mean of the ranks' predicted costs (1.0 is a perfect split)."""
    mean = sum(costs) / len(costs)
    return max(costs) / mean if mean > 0 else 1.0


def split_files_by_size(files: Sequence[str], sizes: Sequence[int], ranks: int) -> list[list[int]]:
    """Indices of ``files`` per rank, about equal bytes each (for checksumming a share each)."""
    shares: list[list[int]] = [[] for _ in range(ranks)]
    loads = [(0, r) for r in range(ranks)]
    for i in sorted(range(len(files)), key=lambda i: (-sizes[i], i)):
        load, r = heapq.heappop(loads)
        shares[r].append(i)
        heapq.heappush(loads, (load + sizes[i], r))
    return shares
