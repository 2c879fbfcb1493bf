"""A scan shared by the ranks of a torchrun job (torch.distributed: NCCL on GPUs, gloo on CPUs).

``torchrun --nproc-per-node N -m spectrum_fast scan SOURCE ...`` starts N processes per node;
each opens the source (headers only), and all check that they see the same matrices. Each rank
then computes its share of the matrices (partition.split_by_cost) and reads only those; the rows
are gathered to every rank (a training script needs the selection on each), and rank 0 writes the
files. A rank that fails ends the scan on every rank with one message that names it:

- an error a rank raises (a missing shard on one node, out of memory) is posted to the job's
  key-value store (the TCPStore torchrun's agent runs), which the others poll between batches and
  while they wait for the last rank, so they stop within a second instead of hanging in a
  collective;
- a rank killed outright (SIGKILL, the OOM killer) posts nothing: torchrun's agent then sends
  SIGTERM to the others, and the handler installed here turns it into that error, naming the
  ranks that had not finished.

No output is written unless every rank finished; with the result cache, each rank's finished
batches are in its resume journal, so running the same command again computes only the rest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from .errors import SpectrumFastError
from .host_threads import process_cores, torch_threads

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Waiting for the other ranks: how often the store is asked (two requests each time). The last rank
# to finish waits for the others to notice before the rows are gathered: half of this on average,
# on every distributed scan's critical path.
POLL_SECONDS = 0.005
FAILURE_CHECK_SECONDS = 0.5  # while computing: how often a rank asks whether another failed


class RankFailure(SpectrumFastError):
    """The scan stopped because a rank failed. ``own`` is False when the failure was another rank's:
    the CLI lets rank 0 say it, once."""

    def __init__(self, message: str, own: bool = False):
        super().__init__(message)
        self.own = own


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in TORCHRUN_ENV)


def _one_line(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    text = " ".join(str(e).split())
    return text if isinstance(e, SpectrumFastError) else f"{type(e).__name__}: {text}" if text else type(e).__name__


def rank_device(dev: torch.device) -> torch.device:
    """The device of this rank: a GPU scan takes cuda:LOCAL_RANK, one GPU per local rank."""
    if dev.type != "cuda":
        return dev
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if dev.index is not None:
        if local_world > 1 and str(dev.index) != os.environ.get("LOCAL_RANK"):
            raise SpectrumFastError(f"device {dev}: with {local_world} ranks per node each rank takes "
                                    f"cuda:<LOCAL_RANK>: pass --device cuda")
        return dev
    count = torch.cuda.device_count()
    if local_world > count:
        raise SpectrumFastError(f"torchrun started {local_world} ranks on {socket.gethostname()}, which has "
                                f"{count} GPU{'s' if count != 1 else ''}: use --nproc-per-node {count} "
                                f"(or --device cpu)")
    local_rank = os.environ.get("LOCAL_RANK")  # another launcher: the device the process chose
    return torch.device("cuda", int(local_rank) if local_rank is not None else torch.cuda.current_device())


class Ranks:
    """This process's view of the job: its rank, the collectives, and the failure flags."""

    _scans = 0  # scans so far in this process: every rank counts the same, so keys line up

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist = dist
        self.device = device
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.host = socket.gethostname()
        Ranks._scans += 1
        self._prefix = f"spectrum_fast/scan{Ranks._scans}"
        try:
            self.store = dist.distributed_c10d._get_default_store()
        except (AttributeError, RuntimeError, ValueError):  # a group made without a store: no failure flags
            self.store = None
        self._last_check = time.monotonic()

    # -- collectives ------------------------------------------------------------------------------
    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj``, on every rank."""
        box = [obj if self.rank == 0 else None]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, error: BaseException | None, fingerprint: Any) -> None:
        """Every rank opened the source and planned its matrices: raise on every rank if one
        could not, or if one sees other matrices than rank 0 (the nodes' copies differ)."""
        outcomes = self.all_gather((None if error is None else _one_line(error), fingerprint, self.host))
        for r, (message, _, host) in enumerate(outcomes):
            if message is not None:
                if r == self.rank == 0:
                    raise error  # type: ignore[misc]  # rank 0's own error, as a single process raises it
                # Every rank knows it now: rank 0 says it (own=False keeps this rank's CLI quiet).
                raise RankFailure(f"rank {r} of {self.world} ({host}): {message}") from error
        for r, (_, fingerprint_r, host) in enumerate(outcomes):
            if fingerprint_r != outcomes[0][1]:
                raise RankFailure(f"rank {r} of {self.world} ({host}) sees other tensors than rank 0 "
                                  f"({outcomes[0][2]}): every node needs the same checkpoint")

    # -- failure flags in the store ---------------------------------------------------------------
    def _key(self, what: str) -> str:
        return f"{self._prefix}/{what}"

    def report_failure(self, e: BaseException) -> None:
        """Post this rank's failure, so the others stop and name it (another rank's failure, seen
        here, is not posted again)."""
        if self.store is None or (isinstance(e, RankFailure) and not e.own):
            return
        with contextlib.suppress(Exception):  # the store may be gone with the job: nothing to add then
            self.store.set(self._key(f"failed/{self.rank}"), f"{self.host}\n{_one_line(e)}")
            self.store.add(self._key("failures"), 1)

    def _failures(self) -> dict[int, tuple[str, str]]:
        found = {}
        for r in range(self.world):
            key = self._key(f"failed/{r}")
            if self.store.check([key]):
                host, _, message = self.store.get(key).decode("utf-8", "replace").partition("\n")
                found[r] = (host, message)
        return found

    def _failure_error(self) -> RankFailure:
        failures = self._failures()
        r, (host, message) = min(failures.items())
        return RankFailure(f"rank {r} of {self.world} ({host}) failed: {message}; no output was written")

    def raise_if_failed(self, now: bool = False) -> None:
        """Between batches: stop if another rank posted a failure (asked at most every half second)."""
        if self.store is None or (not now and time.monotonic() - self._last_check < FAILURE_CHECK_SECONDS):
            return
        self._last_check = time.monotonic()
        if self.store.add(self._key("failures"), 0):
            raise self._failure_error()

    def wait_for_all(self) -> None:
        """This rank's share is done: wait in Python (so a failure flag or SIGTERM is seen) until
        every rank's is, before the collective that gathers the rows."""
        if self.store is None:
            return
        self.store.set(self._key(f"done/{self.rank}"), "1")
        self.store.add(self._key("done"), 1)
        while True:
            self.raise_if_failed(now=True)
            if self.store.add(self._key("done"), 0) >= self.world:
                return
            time.sleep(POLL_SECONDS)

    def stopped_error(self) -> RankFailure:
        """torchrun's agent sent SIGTERM: a rank ended. Name it if it said why, else the ranks
        that had not finished their share."""
        try:
            if self.store is not None and self.store.add(self._key("failures"), 0):
                return self._failure_error()
            unfinished = [r for r in range(self.world) if r != self.rank and self.store is not None
                          and not self.store.check([self._key(f"done/{r}")])]
        except Exception:  # the store went with the job
            unfinished = []
        who = (f"rank{'s' if len(unfinished) > 1 else ''} {', '.join(map(str, unfinished))} of {self.world} "
               f"ended before finishing" if unfinished else "a rank ended")
        return RankFailure(f"torchrun stopped the scan: {who} (killed, or out of host memory? torchrun's report "
                           f"gives the exit code); no output was written")


@contextlib.contextmanager
def _sigterm_raises(ranks: Ranks) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise ranks.stopped_error()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def ranks_for(distributed: bool | None, dev: torch.device) -> Iterator[Ranks | None]:
    """The job this scan shares, or None for a scan of its own. ``distributed``: None joins the
    process group in use or the one torchrun's environment describes; True requires one; False
    scans alone. A group this starts (NCCL for a GPU scan, gloo on a CPU) ends with the scan."""
    import torch.distributed as dist

    initialized = dist.is_available() and dist.is_initialized()
    if distributed is False or (distributed is None and not initialized and not launched_by_torchrun()):
        yield None
        return
    if not dist.is_available():
        raise SpectrumFastError("distributed=True, but this torch was built without torch.distributed")
    if not initialized and not launched_by_torchrun():
        raise SpectrumFastError("distributed=True needs torch.distributed: launch with torchrun, "
                                "or call torch.distributed.init_process_group first")
    dev = rank_device(dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # NCCL's object collectives use the current device
    started = False
    if not initialized:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        started = True
    try:
        ranks = Ranks(dev)
        # torchrun sets OMP_NUM_THREADS=1 for N > 1 ranks per node: the scan's host work (band solves,
        # small eigen problems) then ran on one thread per rank. Each rank takes its share of the cores.
        with _sigterm_raises(ranks), torch_threads(process_cores()):
            yield ranks
    finally:
        if started:
            dist.destroy_process_group()
