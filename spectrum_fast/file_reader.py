"""Read byte ranges of a file into the caller's memory: through the page cache where the range is
already cached, otherwise with O_DIRECT, the drive writing into the caller's buffer by DMA.

Why: a cold read through the page cache costs the kernel a page-cache insert and a memory copy
per byte, on the CPUs the scan's host band solves need. On the H100 machine (16 cores), reading
the Llama-3-8B checkpoint cold took 6.4 s of system CPU at 2.3 GB/s through the page cache and
0.5 s with O_DIRECT at the same speed; a cold scan's system CPU fell from 4-5 s to 2 s, its time
moving within the spread of repeated runs (bench/probes/cold_overlap_h100_eb543d5.log,
_8d6966a.log). Ranges already cached are read through the cache (memory speed). A range read
directly stays uncached: a second scan of the same files reads the disk again, and the scan
does not evict what else the page cache holds.

O_DIRECT wants the file offset, the length and the buffer address aligned (to the drive's
logical block; ALIGN covers 512 and 4096). A range is read directly only where the buffer and
the file offset have the same phase modulo ALIGN (the loader lays out its staging buffers so:
staging.staged_views); its unaligned head and tail, and everything on file systems or
platforms without O_DIRECT, go through the page cache.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading

import numpy as np

ALIGN = 4096
# Ranges shorter than this go through the page cache: the direct read's setup is not worth it.
MIN_DIRECT_BYTES = 1 << 20
# A range counts as cached (read through the page cache) when at least this share of its pages is.
CACHED_SHARE = 0.5
DIRECT_IO = hasattr(os, "O_DIRECT")  # False: every read goes through the page cache

_libc = None


def _mincore_fn():
    """libc's mincore and mmap/munmap through ctypes (the standard library exposes no mincore)."""
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
        _libc = lib
    return _libc


class FileReader:
    """One open file. ``read_into(view, address, offset)`` fills ``view`` (``address`` is its first
    byte's address) with the file's bytes from ``offset`` on; safe from several threads at once.
    Raises EOFError when the file ends first, OSError when the system refuses."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self._direct_fd: int | None = None
        self._map: int | None = None  # address of a mapping of the file, for mincore
        self._map_lock = threading.Lock()
        if DIRECT_IO and self.size >= MIN_DIRECT_BYTES:
            try:
                self._direct_fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            except OSError:  # file systems without O_DIRECT (tmpfs, some FUSE) say EINVAL
                self._direct_fd = None
        self._direct_ok = self._direct_fd is not None

    def read_into(self, view: memoryview, address: int, offset: int) -> None:
        n = len(view)
        body_start = offset + (-offset) % ALIGN
        body_end = (offset + n) // ALIGN * ALIGN
        if (not self._direct_ok or (address - offset) % ALIGN or body_end - body_start < MIN_DIRECT_BYTES
                or self._cached_share(body_start, body_end) >= CACHED_SHARE):
            _pread_all(self.fd, view, offset)
            return
        head, tail = body_start - offset, body_end - offset
        _pread_all(self.fd, view[:head], offset)
        try:
            _pread_all(self._direct_fd, view[head:tail], body_start)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self._direct_ok = False  # the file system took the open but not the read: cache from now on
            _pread_all(self.fd, view[head:tail], body_start)
        _pread_all(self.fd, view[tail:], body_end)

    def _cached_share(self, start: int, end: int) -> float:
        """Share of the pages of [start, end) in the page cache (0 when it cannot be told: then
        the read goes direct, right for the cold case that costs CPU)."""
        try:
            lib = _mincore_fn()
            with self._map_lock:
                if self._map is None:
                    addr = lib.mmap(None, self.size, mmap.PROT_READ, mmap.MAP_SHARED, self.fd, 0)
                    if addr in (None, ctypes.c_void_p(-1).value):
                        return 0.0
                    self._map = addr  # a mapping touches no page: mincore only looks
            page = mmap.PAGESIZE
            first = start // page * page
            pages = (end - first + page - 1) // page
            vec = (ctypes.c_ubyte * pages)()
            if lib.mincore(self._map + first, end - first, vec) != 0:
                return 0.0
            return float(np.count_nonzero(np.frombuffer(vec, np.uint8) & 1)) / pages
        except (OSError, AttributeError, TypeError):
            return 0.0

    def close(self) -> None:
        if self._map is not None:
            _mincore_fn().munmap(self._map, self.size)
            self._map = None
        for fd in (self.fd, self._direct_fd):
            if fd is not None:
                os.close(fd)
        self._direct_fd = None


def _pread_all(fd: int, view: memoryview, offset: int) -> None:
    done, want = 0, len(view)
    while done < want:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise EOFError(offset + done)
        done += got
