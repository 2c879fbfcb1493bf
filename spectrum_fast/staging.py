"""Pinned host memory where a GPU scan's batches wait between the disk and the GPU.

A few buffers, each big enough for the largest batch, are page-locked once per scan
(cudaHostRegister) and reused; a buffer comes back to the ring once the host-to-device copy out
of it has finished (a CUDA event), so no batch is overwritten early. They are registered rather
than taken from torch's pinned allocator because that allocator rounds each request up to a
power of two: the Llama-3-8B scan's largest batch (64 k/v projections, 512 MiB plus the slack
below) would have taken 1 GiB per buffer; pinned memory peaked at 5.2 GB on the H100 at f4f220c.
The waits use blocking-sync events, so a waiting thread sleeps instead of spinning on a core
that the host band solves need.

Inside a buffer each matrix starts at an address with the phase of its bytes in its file modulo
file_reader.ALIGN, so the reader can DMA uncached ranges straight into it (O_DIRECT).
"""

from __future__ import annotations

import mmap
import os
import queue

import torch

from .file_reader import ALIGN


def slot_bytes(n: int, m: int, dtype: torch.dtype) -> int:
    """Bytes one [n, m] matrix takes in a staging buffer: its size rounded up to ALIGN, plus ALIGN
    of room to shift it to its file phase."""
    return -(-n * m * dtype.itemsize // ALIGN) * ALIGN + ALIGN


def staged_views(block: torch.Tensor, offsets: list[int | None], n: int, m: int,
                 dtype: torch.dtype) -> list[torch.Tensor]:
    """[n, m] views of ``block`` (uint8, len(offsets) * slot_bytes(n, m, dtype) bytes at least),
    matrix i at the phase of its file offset ``offsets[i]`` (None or misaligned to the dtype:
    any phase), in slot order."""
    slot = slot_bytes(n, m, dtype)
    base = block.data_ptr()
    views = []
    for i, offset in enumerate(offsets):
        first = i * slot
        if offset is not None and offset % dtype.itemsize == 0:
            first += (offset - base - first) % ALIGN
        views.append(block[first : first + n * m * dtype.itemsize].view(dtype).view(n, m))
    return views


class RingClosed(Exception):
    """The scan ended while the reader waited for a staging buffer."""


# Events that host threads wait on: blocking-sync (the waiting thread sleeps) or the CUDA default
# (it spins on a core). Alternated on the 8B scan the two were within the spread of identical
# runs (11.8-14.7 s with the weights on the GPU; bench/probes/cold_overlap_h100_712be1f.log);
# sleeping is kept because it takes no core from the host band solves.
BLOCKING_SYNC = True


def host_wait_event() -> torch.cuda.Event:
    """A CUDA event recorded now on the current stream, for a host thread to wait on (see
    BLOCKING_SYNC): it passes once the work queued so far (copies out of a staging buffer, a
    device-to-host copy) is done."""
    event = torch.cuda.Event(blocking=BLOCKING_SYNC)
    event.record()
    return event


# Back staging buffers by transparent huge pages (2 MiB): cudaHostRegister faults in and pins every
# page of a buffer, and the 8B scan's four 784 MiB buffers took ~0.3 s each in 4 KiB pages, with the
# compute thread's CUDA calls held up meanwhile (bench/probes/first_batch_timeline_h200_f9dd1e0.log).
# Under trial: SPECTRUM_FAST_STAGING_HUGE_PAGES=1 turns it on.
HUGE_PAGES = os.environ.get("SPECTRUM_FAST_STAGING_HUGE_PAGES") == "1"
_HUGE_PAGE = 2 << 20


def host_block(nbytes: int) -> torch.Tensor:
    """An uninitialised uint8 host tensor of ``nbytes``. With HUGE_PAGES, a view of an anonymous
    mapping advised MADV_HUGEPAGE, starting on a 2 MiB boundary (torch.frombuffer holds the mapping
    for as long as the tensor lives)."""
    if not (HUGE_PAGES and hasattr(mmap, "MADV_HUGEPAGE")):
        return torch.empty(nbytes, dtype=torch.uint8)
    mapping = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mapping.madvise(mmap.MADV_HUGEPAGE)
    whole = torch.frombuffer(mapping, dtype=torch.uint8)
    skip = -whole.data_ptr() % _HUGE_PAGE
    return whole[skip : skip + nbytes]


class PinnedRing:
    """``count`` page-locked buffers of ``nbytes``, made on first use. ``acquire()`` blocks until
    one is free and the copy out of it has finished; ``release(buf, event)`` gives it back once
    ``event`` (recorded after the copies that read it) has passed; ``close()`` wakes a waiting
    reader; ``free()``, once the reader has stopped, waits for the last copies and unpins.
    ``pin=False`` is for tests without a GPU."""

    def __init__(self, count: int, nbytes: int, pin: bool = True):
        self._free: queue.Queue = queue.Queue()
        for _ in range(count):
            self._free.put((None, None))
        self._nbytes, self._pin = nbytes, pin
        self._made: list[torch.Tensor] = []
        self._last_event: torch.cuda.Event | None = None  # copies run in order on one stream

    def acquire(self) -> torch.Tensor:
        buf, event = self._free.get()
        if buf is RingClosed:
            self._free.put((RingClosed, None))  # wake the next waiter too
            raise RingClosed
        if event is not None:
            event.synchronize()  # sleeps (blocking-sync event), GIL released
        if buf is None:
            buf = host_block(self._nbytes)
            if self._pin:
                _check(torch.cuda.cudart().cudaHostRegister(buf.data_ptr(), self._nbytes, 0), "cudaHostRegister")
            self._made.append(buf)
        return buf

    def release(self, buf: torch.Tensor, event: torch.cuda.Event | None) -> None:
        if event is not None:
            self._last_event = event
        self._free.put((buf, event))

    def close(self) -> None:
        """Make every waiting and later acquire() raise RingClosed (the scan is over)."""
        self._free.put((RingClosed, None))

    def free(self) -> None:
        """Unpin every buffer; call once no thread reads into them. Copies still reading one are
        waited for first."""
        if self._last_event is not None:
            self._last_event.synchronize()
            self._last_event = None
        if self._pin:
            for buf in self._made:
                _check(torch.cuda.cudart().cudaHostUnregister(buf.data_ptr()), "cudaHostUnregister")
        self._made.clear()


def _check(status, what: str) -> None:
    code = getattr(status, "value", status)
    if code != 0:
        raise RuntimeError(f"{what} failed with CUDA error {code}: pinned staging memory is not available")
