"""Pinned host memory where a GPU scan's batches wait between the disk and the GPU.

A few buffers, each big enough for the largest batch, are page-locked once per scan and reused:
page-locking on every batch (torch's pinned allocator rounds each request up to a power of two
and caches it by size) made the first scan slower and left 5.4 GB of pinned blocks behind on
the Llama-3-8B scan (H100, bench/results at 8d6966a). A buffer comes back to the ring once the
host-to-device copy out of it has finished (a CUDA event), so no batch is overwritten early.

Inside a buffer each matrix starts at an address with the phase of its bytes in its file modulo
file_reader.ALIGN, so the reader can DMA uncached ranges straight into it (O_DIRECT).
"""

from __future__ import annotations

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


class PinnedRing:
    """``count`` pinned buffers of ``nbytes``, page-locked on first use. ``acquire()`` blocks until
    one is free and the copy out of it has finished; ``release(buf, event)`` gives it back once
    ``event`` (recorded after the copies that read it) has passed. ``pin=False`` is for tests."""

    def __init__(self, count: int, nbytes: int, pin: bool = True):
        self._free: queue.Queue = queue.Queue()
        for _ in range(count):
            self._free.put((None, None))
        self._nbytes, self._pin = nbytes, pin

    def acquire(self) -> torch.Tensor:
        buf, event = self._free.get()
        if buf is RingClosed:
            self._free.put((RingClosed, None))  # wake the next waiter too
            raise RingClosed
        if event is not None:
            event.synchronize()  # releases the GIL while the copy out of it finishes
        if buf is None:
            buf = torch.empty(self._nbytes, dtype=torch.uint8, pin_memory=self._pin)
        return buf

    def release(self, buf: torch.Tensor, event: torch.cuda.Event | None) -> None:
        self._free.put((buf, event))

    def close(self) -> None:
        """Make every waiting and later acquire() raise RingClosed (the scan is over)."""
        self._free.put((RingClosed, None))
