"""Repeated fixed-shape GPU work replayed as CUDA graphs, so its launches cost one host call.

The randomized SVD of one bf16 matrix is ~100 small torch ops; on the H100's host each costs
~25 us to launch, more than its kernel (bench/probes/cholesky_qr_ops_h100_b40d3b0.log), so a call
is host-bound. A function whose work is all on one CUDA device and never waits for it (no
``.item()``, no host copies, no checks that read device values) can be captured once and
replayed. ``GraphCache.run(key, fn, *inputs)``:
- the first call with a key runs ``fn`` eagerly: a shape seen once pays nothing;
- the second captures it (after a warm-up run on a side stream) on copies of the inputs;
- from then on the inputs are copied into those buffers and the graph replays.
Outputs come back as clones: the graph's own buffers are overwritten by its next replay. Each
graph holds its input copies and its intermediates (a copy of A, for the SVD), so a cache keeps at
most MAX_GRAPHS, dropping the least recently used. A capture that fails (an op that waits for the
device) leaves that key eager for good, with one warning.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

ENABLED = True
MAX_GRAPHS = 4


class GraphCache:
    def __init__(self) -> None:
        self._seen: set[Hashable] = set()
        self._eager: set[Hashable] = set()
        self._graphs: OrderedDict[Hashable, tuple[list[torch.Tensor], torch.cuda.CUDAGraph, tuple]] = OrderedDict()

    def clear(self) -> None:
        self._seen.clear()
        self._eager.clear()
        self._graphs.clear()

    def run(self, key: Hashable, fn: Callable[..., tuple[torch.Tensor, ...]], *inputs: torch.Tensor) -> tuple:
        """fn(*inputs) (a tuple of tensors), replayed from a CUDA graph from the second call with ``key``
        on. ``key`` must determine everything fn's work depends on besides the inputs' values:
        their shapes, dtypes and device, and fn's own parameters."""
        if not ENABLED or key in self._eager or not all(x.is_cuda for x in inputs):
            return fn(*inputs)
        entry = self._graphs.get(key)
        if entry is None:
            if key not in self._seen:
                self._seen.add(key)
                return fn(*inputs)
            try:
                entry = _capture(fn, inputs)
            except RuntimeError as e:
                self._eager.add(key)
                warnings.warn(f"spectrum_fast: CUDA graph capture failed, running eagerly: {str(e).splitlines()[0]}",
                              RuntimeWarning, stacklevel=2)
                return fn(*inputs)
            self._graphs[key] = entry
            while len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        static_inputs, graph, static_outputs = entry
        for buffer, x in zip(static_inputs, inputs):
            buffer.copy_(x)
        graph.replay()
        return tuple(out.clone() for out in static_outputs)


def _capture(fn: Callable[..., tuple[torch.Tensor, ...]], inputs: tuple[torch.Tensor, ...]):
    static_inputs = [x.clone() for x in inputs]
    side = torch.cuda.Stream(device=inputs[0].device)
    side.wait_stream(torch.cuda.current_stream(inputs[0].device))
    with torch.cuda.stream(side):
        fn(*static_inputs)  # warm-up: library handles and workspaces are created outside the capture
    torch.cuda.current_stream(inputs[0].device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn(*static_inputs)
    # A graph's first launch uploads it to the device: slow (H100: 12-37 ms for the randomized SVD's
    # first replays, bench/results/truncated_svd_h100_*.log, ms_runs), so it is done here.
    graph.replay()
    return static_inputs, graph, tuple(outputs)
