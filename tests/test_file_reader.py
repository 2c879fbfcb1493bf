"""FileReader (O_DIRECT for uncached ranges, the page cache otherwise) and the loader's staging
layout that lets it DMA into the buffer: bytes must come back exact whichever way they were read,
and the direct path must really be taken when the range is not cached. Fresh random bytes, fresh
offsets every run."""

from __future__ import annotations

import errno
import mmap
import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from spectrum_fast import engine, file_reader, staging
from spectrum_fast.file_reader import ALIGN, FileReader
from spectrum_fast.sources import open_source
from spectrum_fast.targets import plan_tasks

SEED = random.SystemRandom().randrange(2**31)
needs_direct = pytest.mark.skipif(not file_reader.DIRECT_IO, reason="no O_DIRECT on this platform")


@pytest.fixture
def data_file(tmp_path):
    rng = np.random.default_rng(SEED)
    data = rng.integers(0, 256, size=(6 << 20) + int(rng.integers(1, 9000)), dtype=np.uint8)
    path = tmp_path / "bytes.bin"
    data.tofile(path)
    return path, data


def _ranges(rng, size):
    out = [(0, 3 << 20), (size - (2 << 20), 2 << 20), (5, 100)]  # aligned, to the end, small
    for _ in range(6):
        n = int(rng.integers(1, 4 << 20))
        out.append((int(rng.integers(0, size - n)), n))
    return out


def _read_all(reader, data, rng):
    block = torch.empty(5 << 20, dtype=torch.uint8)
    for offset, n in _ranges(rng, len(data)):
        first = (offset - block.data_ptr()) % ALIGN  # the phase the loader gives a buffer
        view = block[first : first + n]
        view.fill_(0xA5)  # poisoned: a byte not read shows up
        reader.read_into(memoryview(view.numpy()), view.data_ptr(), offset)
        assert np.array_equal(view.numpy(), data[offset : offset + n]), f"[seed={SEED}] bytes {offset}+{n}"


def _count_reads(monkeypatch) -> dict[int, int]:
    """Bytes read per file descriptor from now on (direct and cached descriptors differ)."""
    read_bytes: dict[int, int] = {}
    real = file_reader._pread_all

    def counting(fd, view, offset):
        read_bytes[fd] = read_bytes.get(fd, 0) + len(view)
        return real(fd, view, offset)

    monkeypatch.setattr(file_reader, "_pread_all", counting)
    return read_bytes


def _direct_and_cached(read_bytes: dict[int, int], reader: FileReader) -> tuple[int, int]:
    direct = read_bytes.get(reader._direct_fd, 0)
    return direct, sum(read_bytes.values()) - direct


@pytest.fixture
def cold_reader(data_file, monkeypatch):
    """A reader of the data file that can read directly, every range seen as uncached (as after
    a cold start); -> (reader, data). Skips where the file system refuses O_DIRECT."""
    path, data = data_file
    reader = FileReader(str(path))
    if reader._direct_fd is None:
        reader.close()
        pytest.skip("this file system refuses O_DIRECT")
    monkeypatch.setattr(FileReader, "_cached_share", lambda self, a, b: 0.0)
    return reader, data


@needs_direct
def test_uncached_ranges_are_read_direct_and_exact(cold_reader, monkeypatch):
    reader, data = cold_reader
    read_bytes = _count_reads(monkeypatch)
    _read_all(reader, data, np.random.default_rng(SEED))
    direct, cached = _direct_and_cached(read_bytes, reader)
    reader.close()
    assert direct > cached > 0, (direct, cached)  # bodies direct, heads and tails cached


def test_cached_ranges_and_misaligned_buffers_go_through_the_page_cache(data_file, monkeypatch):
    path, data = data_file
    reader = FileReader(str(path))
    monkeypatch.setattr(FileReader, "_cached_share", lambda self, a, b: 1.0)
    read_bytes = _count_reads(monkeypatch)
    _read_all(reader, data, np.random.default_rng(SEED + 1))
    # a buffer whose phase differs from the file offset's cannot take a direct read
    monkeypatch.setattr(FileReader, "_cached_share", lambda self, a, b: 0.0)
    block = torch.empty(4 << 20, dtype=torch.uint8)
    first = (1 - block.data_ptr()) % ALIGN  # phase 1 for file offset 0
    view = block[first : first + (3 << 20)]
    reader.read_into(memoryview(view.numpy()), view.data_ptr(), 0)
    assert np.array_equal(view.numpy(), data[: 3 << 20]), f"[seed={SEED}]"
    direct, cached = _direct_and_cached(read_bytes, reader)
    reader.close()
    assert direct == 0 and cached > 0


@needs_direct
def test_a_refused_direct_read_falls_back_to_the_page_cache(cold_reader, monkeypatch):
    reader, data = cold_reader
    real = file_reader._pread_all

    def refusing(fd, view, offset):
        if fd == reader._direct_fd:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, view, offset)

    monkeypatch.setattr(file_reader, "_pread_all", refusing)
    _read_all(reader, data, np.random.default_rng(SEED + 2))
    assert not reader._direct_ok
    reader.close()


def test_without_o_direct_every_read_is_buffered(data_file, monkeypatch):
    path, data = data_file
    monkeypatch.setattr(file_reader, "DIRECT_IO", False)
    reader = FileReader(str(path))
    assert reader._direct_fd is None
    _read_all(reader, data, np.random.default_rng(SEED + 3))
    reader.close()


def test_truncated_range_raises_eof(data_file):
    path, data = data_file
    reader = FileReader(str(path))
    out = bytearray(4096)
    with pytest.raises(EOFError):
        reader.read_into(memoryview(out), 0, len(data) - 10)
    reader.close()


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise to evict pages")
def test_cached_share_sees_the_page_cache(data_file):
    path, data = data_file
    reader = FileReader(str(path))
    np.fromfile(path, dtype=np.uint8)  # read: cached now
    assert reader._cached_share(0, len(data)) > 0.9
    os.fsync(reader.fd)
    os.posix_fadvise(reader.fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages leave the cache
    assert reader._cached_share(0, len(data)) < 0.5
    reader.close()


@needs_direct
def test_staging_views_take_each_matrix_at_its_file_phase(tmp_path, monkeypatch):
    """The loader's per-matrix staging (staging.staged_views, here in plain memory) places every matrix
    at its file offset's phase, so the bodies are read direct, and _read_pieces fills it exactly,
    fused experts included."""
    g = torch.Generator().manual_seed(SEED)
    tensors = {  # odd sizes so that the tensors' file offsets fall at different phases
        "model.layers.0.mlp.down_proj.weight": torch.randn(515, 1031, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.randn(515, 1031, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.experts.gate_proj": torch.randn(3, 515, 1031, generator=g).to(torch.bfloat16),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    src = open_source(tmp_path)
    monkeypatch.setattr(FileReader, "_cached_share", lambda self, a, b: 0.0)
    monkeypatch.setattr(file_reader, "MIN_DIRECT_BYTES", 64 << 10)
    read_bytes = _count_reads(monkeypatch)
    tasks, _ = plan_tasks(src.tensors(), "auto", False)
    batches = engine.plan_batches(tasks, 1 << 40)
    phases = set()
    with engine.ThreadPoolExecutor(4) as pool:
        for batch in batches:
            block = staging.PinnedRing(1, engine.staging_bytes([batch]), pin=False).acquire()
            offsets = engine.file_offsets(src, batch, torch.bfloat16)
            views = staging.staged_views(block, offsets, batch.n, batch.m, torch.bfloat16)
            for v in views:
                v.fill_(float("nan"))
            engine._read_pieces(src, batch, views, pool)
            for task, view in zip(batch.tasks, views):
                offset = src.file_offset(task.tensor) + (task.expert or 0) * view.numel() * 2
                assert (view.data_ptr() - offset) % ALIGN == 0
                phases.add(offset % ALIGN)
                want = tensors[task.tensor.name] if task.expert is None else tensors[task.tensor.name][task.expert]
                assert torch.equal(view, want.reshape(view.shape)), f"[seed={SEED}] {task.tensor.name} {task.expert}"
    (reader,) = src._readers.values()
    direct = read_bytes.get(reader._direct_fd, 0)
    src.close()
    assert len(phases) > 1  # the test did cover differing phases
    if reader._direct_ok:  # else the file system refused O_DIRECT reads
        assert direct > 0.9 * sum(t.numel() * 2 for t in tensors.values())


def test_staging_ring_reuses_buffers_and_close_wakes_a_waiting_reader():
    import threading

    ring = staging.PinnedRing(2, 1 << 12, pin=False)
    a, b = ring.acquire(), ring.acquire()
    assert a.numel() == 1 << 12 and a.data_ptr() != b.data_ptr()
    ring.release(a, None)
    assert ring.acquire().data_ptr() == a.data_ptr()  # reused, not allocated again
    raised = []

    def reader():  # both buffers are out: this waits until the scan closes the ring
        try:
            ring.acquire()
        except staging.RingClosed:
            raised.append(True)

    t = threading.Thread(target=reader)
    t.start()
    ring.close()
    t.join(timeout=10)
    assert not t.is_alive() and raised
    with pytest.raises(staging.RingClosed):
        ring.acquire()


def test_staging_ring_makes_the_first_buffer_at_once_and_the_rest_beside_the_reader():
    """The first acquire returns a buffer it made itself; a thread makes the others meanwhile, and
    later acquires hand those out; free() waits for that thread and lets go of every buffer."""
    ring = staging.PinnedRing(3, 1 << 12, pin=False)
    first = ring.acquire()
    rest = [ring.acquire(), ring.acquire()]
    assert len(ring._made) == 3 and len({b.data_ptr() for b in [first, *rest]}) == 3
    assert first.data_ptr() == ring._made[0].data_ptr()
    ring.free()
    assert not ring._made and ring._maker is None


def test_staging_ring_pins_the_first_buffer_while_the_reader_fills_it(monkeypatch):
    """The first acquire() returns its buffer before the maker thread has page-locked it; ready()
    waits for that, and a failure to page-lock it reaches the reader from ready() and acquire()."""
    import threading

    monkeypatch.setattr(staging, "PIN_FIRST_BESIDE_READ", True)
    gate, pinned = threading.Event(), []

    def pin_buffer(self, buf):
        gate.wait(timeout=10)
        if fail:
            raise RuntimeError("cudaHostRegister failed with CUDA error 2 (test)")
        pinned.append(buf.data_ptr())

    monkeypatch.setattr(staging.PinnedRing, "_pin_buffer", pin_buffer)
    for fail in (False, True):
        gate.clear()
        pinned.clear()
        ring = staging.PinnedRing(2, 1 << 12, pin=False)
        first = ring.acquire()
        assert not pinned  # handed out before it was page-locked
        if fail:
            gate.set()
            with pytest.raises(RuntimeError, match="CUDA error 2"):
                ring.ready(first)
            with pytest.raises(RuntimeError, match="CUDA error 2"):
                ring.acquire()
        else:
            waiter = threading.Thread(target=ring.ready, args=(first,))
            waiter.start()
            waiter.join(timeout=0.2)
            assert waiter.is_alive()  # ready() waits for the maker thread
            gate.set()
            waiter.join(timeout=10)
            assert not waiter.is_alive() and pinned[0] == first.data_ptr()
            second = ring.acquire()
            ring.ready(second)  # made page-locked before it was handed out
            assert pinned == [first.data_ptr(), second.data_ptr()]
        ring.free()
        assert not ring._made


def test_staging_ring_frees_on_a_thread_that_the_caller_can_wait_for():
    ring = staging.PinnedRing(2, 1 << 12, pin=False)
    ring.acquire()
    thread = ring.free_later()
    assert thread in staging.unpin_threads() or not thread.is_alive()
    thread.join(timeout=10)
    assert not thread.is_alive() and not ring._made and thread not in staging.unpin_threads()


def test_staging_ring_hands_a_failure_to_make_a_buffer_to_the_reader(monkeypatch):
    """A buffer the maker thread cannot make (pinned memory refused) must reach the reader as that
    error, every time it asks, not leave it waiting for a buffer forever."""
    import threading

    real, calls = staging.host_block, []

    def host_block(nbytes):
        calls.append(nbytes)
        if len(calls) > 1:
            raise RuntimeError("cudaHostRegister failed with CUDA error 2 (test)")
        return real(nbytes)

    monkeypatch.setattr(staging, "host_block", host_block)
    ring = staging.PinnedRing(3, 1 << 12, pin=False)
    ring.acquire()
    raised = []

    def reader():
        for _ in range(2):
            try:
                ring.acquire()
            except RuntimeError as e:
                raised.append(str(e))

    t = threading.Thread(target=reader)
    t.start()
    t.join(timeout=10)
    assert not t.is_alive() and len(raised) == 2 and all("CUDA error 2" in r for r in raised)
    ring.free()
    assert not ring._made


@pytest.mark.parametrize("setting, env, expected", [
    ("always [madvise] never\n", None, True), ("[always] madvise never\n", None, True),
    ("always madvise [never]\n", None, False), (None, None, False),
    ("always [madvise] never\n", "0", False), ("always madvise [never]\n", "1", True),
])
def test_staging_huge_pages_follow_the_kernel_setting_and_the_switch(tmp_path, monkeypatch, setting, env, expected):
    path = tmp_path / "enabled"
    if setting is not None:
        path.write_text(setting)
    monkeypatch.setattr(staging, "_THP_SETTING", path)
    if env is None:
        monkeypatch.delenv("SPECTRUM_FAST_STAGING_HUGE_PAGES", raising=False)
    else:
        monkeypatch.setenv("SPECTRUM_FAST_STAGING_HUGE_PAGES", env)
    assert staging._huge_pages_default() is expected


def test_staging_huge_pages_warn_on_a_bad_switch(tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "_THP_SETTING", tmp_path / "missing")
    monkeypatch.setenv("SPECTRUM_FAST_STAGING_HUGE_PAGES", "yes")
    with pytest.warns(UserWarning, match="SPECTRUM_FAST_STAGING_HUGE_PAGES='yes'"):
        assert staging._huge_pages_default() is False


@pytest.mark.parametrize("huge", [False, True])
def test_staging_host_block_is_writable_and_huge_page_aligned(monkeypatch, huge):
    monkeypatch.setattr(staging, "HUGE_PAGES", huge)
    block = staging.host_block(3 << 20)
    assert block.numel() == 3 << 20 and block.dtype == torch.uint8
    block.fill_(7)
    assert int(block[-1]) == 7
    if huge and hasattr(mmap, "MADV_HUGEPAGE"):
        assert block.data_ptr() % (2 << 20) == 0


@pytest.mark.parametrize("nbytes, offset", [(5 * 4096 + 17, 0), (3 * 4096, 100), (4096 * 40 + 1, 4095), (1, 7)])
def test_fault_in_writes_every_page_and_nothing_else(nbytes, offset):
    """One byte in every 4 KiB page the block spans (wherever the block starts in its page), the
    block's last byte among them; nothing outside the block."""
    whole = torch.full((nbytes + offset + 8192,), 0xAB, dtype=torch.uint8)
    block = whole[offset : offset + nbytes]
    staging.fault_in(block)
    first, last = block.data_ptr(), block.data_ptr() + nbytes - 1
    touched = set((block == 0).nonzero().flatten().tolist())
    pages = {(first + i) // 4096 for i in touched}
    assert pages == set(range(first // 4096, last // 4096 + 1)) and nbytes - 1 in touched
    assert (whole[:offset] == 0xAB).all() and (whole[offset + nbytes :] == 0xAB).all()


def test_staged_views_without_file_offsets_fill_slots_in_order():
    block = torch.empty(3 * staging.slot_bytes(5, 7, torch.float32), dtype=torch.uint8)
    views = staging.staged_views(block, [None, 3, None], 5, 7, torch.float32)  # 3: not a float32 phase
    ptrs = [v.data_ptr() for v in views]
    assert ptrs == sorted(ptrs) and all(v.shape == (5, 7) for v in views)
    for v, w in zip(views, views[1:]):
        assert v.data_ptr() + v.numel() * 4 <= w.data_ptr()  # no overlap
