"""torch's host (CPU) ops on one thread for a while: small LAPACK calls (eigen problems of a few
dozen rows, between GPU steps) ran slower on all 16 of the H100 machine's host threads than on one:
~1 ms per 48 x 48 matrix on 16 (bench/probes/fast_components_h100_04bb809.log), ~0.1 ms on one
(bench/probes/fast_profile_deepseek_h100_847eb04.log: 57 ms of eigvalsh for 480 matrices)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .env_settings import env_count


def one_torch_thread() -> contextlib.AbstractContextManager[None]:
    """torch.set_num_threads(1) inside the block, the previous number restored after."""
    return torch_threads(1)


RANK_THREADS_ENV = "SPECTRUM_FAST_RANK_THREADS"


def process_cores() -> int:
    """The cores this process may use, shared with the other ranks of a torchrun job on this node
    (LOCAL_WORLD_SIZE): each rank's share. SPECTRUM_FAST_RANK_THREADS sets the share instead."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    share = max(1, cores // env_count("LOCAL_WORLD_SIZE", 1))
    return env_count(RANK_THREADS_ENV, share)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch.set_num_threads(count) inside the block, the previous number restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
