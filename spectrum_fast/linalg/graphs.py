"""Repeated fixed-shape GPU work replayed as CUDA graphs, so its launches cost one host call.

The randomized SVD of one bf16 matrix is ~100 small torch ops; on the H100's host each costs
~25 us to launch, more than its kernel (bench/probes/cholesky_qr_ops_h100_b40d3b0.log), so a call
is host-bound. A function whose work is all on one CUDA device and never waits for it (no
``.item()``, no host copies, no checks that read device values) can be captured once and
replayed. ``GraphCache.run(key, fn, *inputs, in_place=(0,))``:
- the first call with a key runs ``fn`` eagerly: a shape seen once pays nothing;
- the second captures it (after a warm-up run on a side stream) on copies of the inputs;
- from then on the inputs are copied into those buffers and the graph replays.
Inputs listed in ``in_place`` (the SVD's A: 117 MB at 4096 x 14336 in bf16, a 70-280 us copy
on the H100) are read where they are instead, by a graph captured on their address: the second
call at the same address (the same tensor again, or a buffer the caller or torch's allocator
reuses) captures one, and later calls there replay it without copying. A graph reads that memory
when it replays, so it replays only while the input has that address, shape, strides and dtype:
then the memory holds the input. Calls at new addresses take the copying graph, and so do all
calls at further addresses once a key has had IN_PLACE_CAPTURES graphs captured in place (a
stream of inputs whose addresses recur irregularly would otherwise capture again and again, each
capture costing a few eager calls).
Outputs come back as clones: the graph's own buffers are overwritten by its next replay. Each
graph holds its input copies and its intermediates (a copying graph, a copy of A for the SVD),
so a cache keeps at most MAX_GRAPHS, dropping the least recently used. A capture that fails (an
op that waits for the device) leaves that key eager for good, with one warning.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

ENABLED = True
MAX_GRAPHS = 4


# Addresses remembered per cache (a call's first at an address only marks it): least recent dropped.
MAX_ADDRESSES = 64
# Graphs captured in place per key over the cache's life (until clear()).
IN_PLACE_CAPTURES = 2


class GraphCache:
    def __init__(self) -> None:
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self._eager: set[Hashable] = set()
        self._graphs: OrderedDict[Hashable, tuple[list[torch.Tensor | None], torch.cuda.CUDAGraph, tuple]] = OrderedDict()
        self._in_place_captures: dict[Hashable, int] = {}

    def clear(self) -> None:
        self._in_place_captures.clear()
        self._seen.clear()
        self._eager.clear()
        self._graphs.clear()

    def run(self, key: Hashable, fn: Callable[..., tuple[torch.Tensor, ...]], *inputs: torch.Tensor,
            in_place: tuple[int, ...] = ()) -> tuple:
        """fn(*inputs) (a tuple of tensors), replayed from a CUDA graph from the second call with ``key``
        on. ``key`` must determine everything fn's work depends on besides the inputs' values:
        their shapes, dtypes and device, and fn's own parameters. fn must not write to the inputs
        listed in ``in_place`` (read at their address by a graph captured there; module docstring)."""
        if not ENABLED or key in self._eager or not all(x.is_cuda for x in inputs):
            return fn(*inputs)
        if in_place:
            address = (key, "at") + tuple((i, inputs[i].data_ptr(), inputs[i].stride()) for i in in_place)
            if address in self._graphs:
                return self._replay(address, fn, inputs, in_place)
            if self._in_place_captures.get(key, 0) < IN_PLACE_CAPTURES and self._mark_seen(address):
                self._in_place_captures[key] = self._in_place_captures.get(key, 0) + 1
                return self._replay(address, fn, inputs, in_place)
        if key in self._graphs or self._mark_seen(key):
            return self._replay(key, fn, inputs, ())
        return fn(*inputs)

    def _mark_seen(self, key: Hashable) -> bool:
        """Whether ``key`` was seen before (then a graph is due); marks it seen."""
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        self._seen[key] = None
        while len(self._seen) > MAX_ADDRESSES + 4 * MAX_GRAPHS:
            self._seen.popitem(last=False)
        return False

    def _replay(self, key: Hashable, fn, inputs: tuple[torch.Tensor, ...], in_place: tuple[int, ...]) -> tuple:
        """Replay the graph of ``key``, captured first if it is not held."""
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = _capture(fn, inputs, in_place)
            except RuntimeError as e:
                self._eager.add(key[0] if in_place else key)
                warnings.warn(f"spectrum_fast: CUDA graph capture failed, running eagerly: {str(e).splitlines()[0]}",
                              RuntimeWarning, stacklevel=3)
                return fn(*inputs)
            self._graphs[key] = entry
            while len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        static_inputs, graph, static_outputs = entry
        for buffer, x in zip(static_inputs, inputs):
            if buffer is not None:
                buffer.copy_(x)
        graph.replay()
        return tuple(out.clone() for out in static_outputs)


def _capture(fn: Callable[..., tuple[torch.Tensor, ...]], inputs: tuple[torch.Tensor, ...], in_place: tuple[int, ...]):
    """(input buffers, None for the inputs read in place; the graph; its outputs)."""
    buffers = [None if i in in_place else x.clone() for i, x in enumerate(inputs)]
    static_inputs = [x if buffer is None else buffer for x, buffer in zip(inputs, buffers)]
    side = torch.cuda.Stream(device=inputs[0].device)
    side.wait_stream(torch.cuda.current_stream(inputs[0].device))
    with torch.cuda.stream(side):
        fn(*static_inputs)  # warm-up: library handles and workspaces are created outside the capture
    torch.cuda.current_stream(inputs[0].device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            outputs = fn(*static_inputs)
    except RuntimeError:
        _reset_generators_after_failed_capture(inputs[0].device)
        raise
    # A graph's first launch uploads it to the device: slow (H100: 12-37 ms for the randomized SVD's
    # first replays, bench/results/truncated_svd_h100_*.log, ms_runs), so it is done here.
    graph.replay()
    return buffers, graph, tuple(outputs)


def _reset_generators_after_failed_capture(device: torch.device) -> None:
    """A capture that fails leaves the device's default CUDA generator in capture mode (torch 2.11:
    its capture epilogue never ran), and the process's next random op on the device raises
    "Offset increment outside graph capture encountered unexpectedly". A capture that completes
    runs the prologue and epilogue again, which resets it."""
    graph = torch.cuda.CUDAGraph()
    scratch = torch.zeros(1, device=device)
    with torch.cuda.graph(graph):
        scratch.add_(1)
