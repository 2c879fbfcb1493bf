"""Content digests of a model's weights: what the result cache (cache.py) is keyed by.

- Weight files (.safetensors: the header and every tensor's bytes; .bin/.pt: the whole file) are
  hashed byte for byte, streamed in PIECE_BYTES pieces that several threads hash at once, so
  memory stays at a few pieces and the digest does not depend on the thread count. A file's
  digest is remembered in the cache folder by its path, size, inode, device, mtime and ctime
  (git's rule for its index): any write to the file changes its ctime, so an unchanged file is
  not read again and a changed one always is.
- Tensors in memory (a module, a dict) are hashed from their bytes, copied to the host a piece at
  a time; weights on the meta device have no bytes and are left out.

SHA-256 because hashlib's runs on the CPU's SHA instructions where they exist (x86 SHA-NI,
ARMv8): on this project's 2-core AMD EPYC CPU 2.1 GB/s a core, against 1.4 for blake2b and 0.9
for md5 (bench/results/checksum_throughput_cpu_616338a.log). A faster non-cryptographic checksum
(xxhash) would be a new dependency; crc32 is fast but 32 bits wide, too few to key results that
are silently reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write_text

# Part of the digest's definition: changing it changes every key (and so empties the cache).
PIECE_BYTES = 16 << 20
DIGEST_FORMAT = b"spectrum_fast content digest 1\n"

# A file changed less than this long before it was hashed is not remembered: a second write in
# the same timestamp tick, of the same size, would leave its stat unchanged (git's "racy" case).
RACY_WINDOW_NS = 1_000_000_000


class ChecksumError(Exception):
    """The weights could not be checksummed (a file vanished or changed while being read)."""


def hash_threads() -> int:
    """Threads that hash pieces at once: hashlib and file reads release the GIL, so one per core."""
    return max(1, min(16, os.cpu_count() or 1))


def _sha256(data) -> bytes:
    return hashlib.sha256(data).digest()


# -- files ----------------------------------------------------------------------------------------
_buffers = threading.local()


def _piece_buffer() -> memoryview:
    """One PIECE_BYTES buffer per hashing thread, reused for every piece it reads."""
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = memoryview(bytearray(PIECE_BYTES))
    return buf


def _hash_file_piece(path: Path, offset: int, size: int) -> bytes:
    view = _piece_buffer()[:size]
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        got = 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                raise ChecksumError(f"{path}: ended while being checksummed (it changed during the scan)")
            got += n
    return _sha256(view)


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns]


def _memo_path(memo_folder: Path, path: Path) -> Path:
    return memo_folder / f"{hashlib.sha256(str(path).encode()).hexdigest()[:40]}.json"


def _remembered(memo: Path, path: Path, stamp: list[int]) -> str | None:
    # A memo is only a shortcut: one that is missing, unreadable or stale means hashing again.
    try:
        rec = json.loads(memo.read_text(encoding="utf-8"))
        if rec["path"] == str(path) and rec["stamp"] == stamp and isinstance(rec["digest"], str):
            return rec["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def file_digests(paths: Iterable[str | os.PathLike], memo_folder: Path | None = None,
                 threads: int | None = None) -> list[str]:
    """SHA-256 content digest (hex) of each file, from its remembered digest in ``memo_folder``
    where its stat is unchanged, else by reading every byte: pieces of all files are hashed on
    ``threads`` threads at once."""
    paths = [Path(p).resolve() for p in paths]
    digests: list[str | None] = [None] * len(paths)
    todo = []  # (index, path, stat before hashing)
    for i, path in enumerate(paths):
        try:
            st = os.stat(path)
        except OSError as e:
            raise ChecksumError(f"{path}: cannot stat ({e.strerror or e})") from None
        if memo_folder is not None:
            digests[i] = _remembered(_memo_path(memo_folder, path), path, _stamp(st))
        if digests[i] is None:
            todo.append((i, path, st))
    if not todo:
        return digests  # type: ignore[return-value]
    with ThreadPoolExecutor(max_workers=threads or hash_threads(), thread_name_prefix="spectrum-fast-hash") as pool:
        pieces = {i: [pool.submit(_hash_file_piece, path, off, min(PIECE_BYTES, st.st_size - off))
                      for off in range(0, st.st_size, PIECE_BYTES)] for i, path, st in todo}
        try:
            for i, path, st in todo:
                h = hashlib.sha256(DIGEST_FORMAT + b"file %d\n" % st.st_size)
                for f in pieces[i]:
                    h.update(f.result())
                digests[i] = h.hexdigest()
        except OSError as e:
            raise ChecksumError(f"{e.filename or 'a weight file'}: cannot read ({e.strerror or e})") from None
        finally:
            for futures in pieces.values():
                for f in futures:
                    f.cancel()
    for i, path, st in todo:
        try:
            after = os.stat(path)
        except OSError as e:
            raise ChecksumError(f"{path}: cannot stat ({e.strerror or e})") from None
        if _stamp(after) != _stamp(st):
            raise ChecksumError(f"{path}: changed while being checksummed")
        racy = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_WINDOW_NS
        if memo_folder is not None and not racy:
            record = {"path": str(path), "stamp": _stamp(st), "digest": digests[i]}
            try:
                atomic_write_text(_memo_path(memo_folder, path), json.dumps(record))
            except OSError:
                pass  # an unwritable memo only costs hashing again next time
    return digests  # type: ignore[return-value]


# -- tensors in memory ----------------------------------------------------------------------------
def _tensor_pieces(t: torch.Tensor) -> list[torch.Tensor]:
    """Row ranges of ``t`` of about PIECE_BYTES each (at least one row): views, nothing copied yet."""
    t = t.detach()
    if t.dim() == 0:
        t = t.reshape(1)
    if t.numel() == 0:
        return []
    row_bytes = t[0].numel() * t.element_size()
    step = max(1, PIECE_BYTES // max(1, row_bytes))
    return [t[i : i + step] for i in range(0, t.shape[0], step)]


_SAME_SIZE_INTEGER = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _hash_tensor_piece(piece: torch.Tensor) -> bytes:
    if piece.device.type == "cpu" and piece.element_size() in _SAME_SIZE_INTEGER:
        # The bytes through numpy (an integer view of the same width: numpy has no bfloat16): no
        # copy for a contiguous piece, a single-threaded one otherwise. A precaution: torch ops in
        # extra threads start OpenMP teams whose spinning workers once took the cores from LAPACK
        # (engine._read_pieces). Here torch copies of non-contiguous pieces did not slow the scan
        # that followed (8 transposed 1536 x 768: 0.42 s of compute either way, 2-core CPU), but
        # hashing runs on up to 16 threads on larger hosts, where it was not measured.
        values = piece.view(_SAME_SIZE_INTEGER[piece.element_size()]).numpy()
        return _sha256(np.ascontiguousarray(values).data.cast("B"))
    # On a GPU: contiguous() there, then this piece alone to the host, so a GPU model's digest
    # needs host memory for a piece per thread.
    host = piece.contiguous().cpu()
    return _sha256(host.reshape(-1).view(torch.uint8).numpy())


def tensors_digest(named: Iterable[tuple[str, torch.Tensor]], threads: int | None = None) -> str:
    """SHA-256 content digest (hex) of named tensors: each one's name, dtype, shape and bytes, in
    the order given. Tensors on the meta device are left out (they hold no values).

    ``named`` is consumed lazily, and only about two pieces per thread of tensors are held at once:
    a source may produce each tensor as it is asked for (accelerate's disk-offloaded weights are
    read from their files), so holding them all would load the whole model into host memory."""
    threads = threads or hash_threads()
    window = 2 * threads * PIECE_BYTES
    h = hashlib.sha256(DIGEST_FORMAT)
    pending: deque[tuple[bytes, list, int]] = deque()  # (header, the pieces' futures, bytes held)
    held = 0

    def take_oldest() -> int:
        header, futures, nbytes = pending.popleft()
        h.update(header)
        for f in futures:
            h.update(f.result())
        return nbytes

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="spectrum-fast-hash") as pool:
        try:
            for name, t in named:
                if t.is_meta:
                    continue
                header = json.dumps([name, str(t.dtype), list(t.shape)]).encode() + b"\n"
                nbytes = t.numel() * t.element_size()
                pending.append((header, [pool.submit(_hash_tensor_piece, p) for p in _tensor_pieces(t)], nbytes))
                held += nbytes
                while held > window and len(pending) > 1:
                    held -= take_oldest()
            while pending:
                held -= take_oldest()
        finally:
            for _, futures, _ in pending:
                for f in futures:
                    f.cancel()
    return h.hexdigest()
