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
import queue
import threading
import warnings
from pathlib import Path

import torch

from .env_settings import env_switch
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


class _MakeFailed:
    """What the ring holds in place of a buffer once making one failed: acquire() raises ``error``."""

    def __init__(self, error: BaseException):
        self.error = error


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


# Back staging buffers by transparent huge pages (2 MiB): cudaHostRegister pins every page of a
# buffer, and 2 MiB pages are 512 times fewer. A 784 MiB buffer, alone: fault-in 0.017-0.020 s and
# registration 0.016-0.018 s, against 0.035-0.054 and 0.045 s in 4 KiB pages; the warm 8B scan
# 4.55 against 5.67-5.95 s (H200, bench/RESULTS.md, the 2-GPU section). On by default where the
# kernel grants them on madvise (transparent_hugepage/enabled "always" or "madvise");
# SPECTRUM_FAST_STAGING_HUGE_PAGES=0 turns them off where compacting memory for them stalls (on
# the 2-core CI machine a buffer took 0.41-0.92 s to fault in against 0.20 s), =1 asks for them
# whatever the kernel says.
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _huge_pages_default() -> bool:
    try:
        setting = _THP_SETTING.read_text()
    except OSError:
        setting = ""
    return env_switch("SPECTRUM_FAST_STAGING_HUGE_PAGES", "[always]" in setting or "[madvise]" in setting)


HUGE_PAGES = _huge_pages_default()
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


# A new staging buffer's pages are faulted in before cudaHostRegister, which otherwise faults them
# in itself, a page at a time: on the 2x H100 host, in 4 KiB pages, the 8B scan's two 784 MiB
# buffers took 0.58-0.69 s from the first acquire to registered that way
# (bench/results/scale_out_2xh100_b70a20b.log), against 0.07-0.09 s to fault one in by writing a
# byte per page and 0.05-0.07 s to register it then (bench/results/scale_out_2xh100_4fda945.log;
# from 8 threads the fault-in took 0.07 s too, and with huge pages 0.025-0.028 s either way).
_PAGE = 4096


def fault_in(block: torch.Tensor) -> None:
    """Write one byte in every 4 KiB page of the uint8 tensor ``block``, so that the kernel maps
    them all now."""
    block.as_strided((-(-block.numel() // _PAGE),), (_PAGE,)).fill_(0)  # one byte per page
    block[-1:].fill_(0)  # the last page, wherever the stride fell


# The first buffer is page-locked by the maker thread while the reader fills it (the reader waits
# for that before handing the batch over: PinnedRing.ready), instead of before the first read. In
# the 8B scan on 2x H200 the first batch reached the compute loop at 0.07-0.09 s against 0.10-0.11
# with two ranks, 0.06-0.07 against 0.08-0.09 with one (bench/probes/rank_timeline_2xh200_9b48a99.log,
# variant staging-as-before: both switches here off).
PIN_FIRST_BESIDE_READ = env_switch("SPECTRUM_FAST_PIN_FIRST_BESIDE_READ", True)

# The buffers are unpinned by a thread after the scan's last read (free_later) instead of by the
# compute thread, which otherwise sat in free() for 0.12-0.17 s (two 784 MiB buffers in the 8B
# scan) and handed over no rows meanwhile. The GPU's last chase took about as long, so the scan's
# time moved by less than its spread there (same log: 2.000 s against 1.992 with two ranks, 3.714
# against 3.745 with one); it counts where unpinning outlasts the last batch.
UNPIN_IN_BACKGROUND = env_switch("SPECTRUM_FAST_UNPIN_IN_BACKGROUND", True)


class PinnedRing:
    """``count`` page-locked buffers of ``nbytes``. ``acquire()`` blocks until one is free and the
    copy out of it has finished; ``ready(buf)``, once the reader has filled a buffer, waits until
    it is page-locked; ``release(buf, event)`` gives it back once ``event`` (recorded after the
    copies that read it) has passed; ``close()`` wakes a waiting reader; ``free()``, once the
    reader has stopped, waits for the last copies and unpins (``free_later()``: on a thread).
    ``pin=False`` is for tests without a GPU.

    The first acquire() faults one buffer in and returns it; a thread page-locks it
    (cudaHostRegister; before returning it unless PIN_FIRST_BESIDE_READ) and then makes the rest
    while the reader fills that one: all are page-locked by the time the first batch reaches the
    GPU, while its kernels have not yet begun. Registered alone, a 784 MiB buffer took 0.02-0.07
    s; registered while the scan's kernels ran, one at a time as the reader first needed them, the
    8B scan's buffers took 0.2-0.4 s each and held up the compute thread's own CUDA calls
    meanwhile (its second batch came 1.3 s after its first; H200,
    bench/results/scale_out_trials_2xh200_80f58f3.log)."""

    def __init__(self, count: int, nbytes: int, pin: bool = True):
        self._free: queue.Queue = queue.Queue()
        self._count, self._nbytes, self._pin = count, nbytes, pin
        self._made: list[torch.Tensor] = []  # every buffer made; free() lets go of them
        self._pinned: list[torch.Tensor] = []  # those registered; free() unpins them
        self._first: torch.Tensor | None = None
        self._first_pinned = threading.Event()
        self._first_error: BaseException | None = None
        self._maker: threading.Thread | None = None
        self._started = False
        self._last_event: torch.cuda.Event | None = None  # copies run in order on one stream

    def _new_buffer(self) -> torch.Tensor:
        buf = host_block(self._nbytes)
        fault_in(buf)
        self._made.append(buf)
        return buf

    def _pin_buffer(self, buf: torch.Tensor) -> None:
        if self._pin:
            _check(torch.cuda.cudart().cudaHostRegister(buf.data_ptr(), self._nbytes, 0), "cudaHostRegister")
            self._pinned.append(buf)  # free() unpins what was pinned, should a later one fail

    def _pin_first(self) -> None:
        try:
            self._pin_buffer(self._first)
        except BaseException as e:  # the reader raises it from ready()
            self._first_error = e
            raise
        finally:
            self._first_pinned.set()

    def _make_rest(self, device: int | None) -> None:
        try:
            if device is not None:  # registration belongs to the current device's context
                torch.cuda.set_device(device)
            if not self._first_pinned.is_set():
                self._pin_first()
            for _ in range(self._count - 1):
                buf = self._new_buffer()
                self._pin_buffer(buf)
                self._free.put((buf, None))
        except BaseException as e:  # the reader would wait for a buffer forever: hand it the error
            self._free.put((_MakeFailed(e), None))

    def acquire(self) -> torch.Tensor:
        if not self._started:
            self._started = True
            self._first = self._new_buffer()
            if not PIN_FIRST_BESIDE_READ:
                self._pin_first()
            if self._count > 1 or not self._first_pinned.is_set():
                device = torch.cuda.current_device() if self._pin else None
                self._maker = threading.Thread(target=self._make_rest, args=(device,),
                                               name="spectrum-fast-pin", daemon=True)
                self._maker.start()
            return self._first
        buf, event = self._free.get()
        if buf is RingClosed or isinstance(buf, _MakeFailed):
            self._free.put((buf, None))  # wake the next waiter too
            if buf is RingClosed:
                raise RingClosed
            raise buf.error
        if event is not None:
            event.synchronize()  # sleeps (blocking-sync event), GIL released
        return buf

    def ready(self, buf: torch.Tensor) -> None:
        """Return once ``buf`` (from acquire()) is page-locked; raise what kept it from being so.
        Only the first buffer can still be on its way."""
        if buf is self._first:
            self._first_pinned.wait()
            if self._first_error is not None:
                raise self._first_error

    def release(self, buf: torch.Tensor, event: torch.cuda.Event | None) -> None:
        if event is not None:
            self._last_event = event
        self._free.put((buf, event))

    def close(self) -> None:
        """Make every waiting and later acquire() raise RingClosed (the scan is over)."""
        self._free.put((RingClosed, None))

    def free(self) -> None:
        """Unpin every buffer; call once no thread reads into them. Copies still reading one, and
        the thread still making buffers, are waited for first."""
        if self._maker is not None:
            self._maker.join()
            self._maker = None
        if self._last_event is not None:
            self._last_event.synchronize()
            self._last_event = None
        for buf in self._pinned:
            _check(torch.cuda.cudart().cudaHostUnregister(buf.data_ptr()), "cudaHostUnregister")
        self._pinned.clear()
        self._made.clear()
        self._first = None

    def free_later(self) -> threading.Thread:
        """free() on a new thread (not a daemon: the interpreter waits for it before it exits);
        unpin_threads() lists those still running. A failure there is reported as a warning."""
        device = torch.cuda.current_device() if self._pin else None

        def run():
            try:
                if device is not None:
                    torch.cuda.set_device(device)
                self.free()
            except Exception as e:  # nothing waits for this thread to re-raise it
                warnings.warn(f"spectrum_fast: unpinning staging memory failed: {e}", RuntimeWarning, stacklevel=1)

        thread = threading.Thread(target=run, name="spectrum-fast-unpin")
        with _UNPINNING_LOCK:
            _UNPINNING[:] = [t for t in _UNPINNING if t.is_alive()] + [thread]  # a long process keeps no dead ones
        thread.start()
        return thread


_UNPINNING: list[threading.Thread] = []
_UNPINNING_LOCK = threading.Lock()


def unpin_threads() -> list[threading.Thread]:
    """The free_later() threads still running (tests wait for them)."""
    with _UNPINNING_LOCK:
        _UNPINNING[:] = [t for t in _UNPINNING if t.is_alive()]
        return list(_UNPINNING)


def _check(status, what: str) -> None:
    code = getattr(status, "value", status)
    if code != 0:
        raise RuntimeError(f"{what} failed with CUDA error {code}: pinned staging memory is not available")
