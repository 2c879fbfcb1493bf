"""linalg.graphs.GraphCache on a GPU: eager first, then replays that give what eager calls give on
new inputs, whether the input is copied into the graph's buffer or read in place at its address
(the same tensor changed in place, a new tensor at a reused address, new addresses), the cap on
in-place captures, and a capture that cannot work running eagerly with one warning and leaving
torch's random generator usable."""

from __future__ import annotations

import pytest
import torch

from spectrum_fast.linalg import graphs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def work(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = a @ b
    return c, (c * c).sum(-1)


def fresh(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64).cuda()


def check(got, a, b, ctx):
    for x, y in zip(got, work(a, b)):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12, msg=lambda m: f"{ctx}: {m}")


def test_copies_of_new_inputs_replay_one_graph(seed):
    gen = torch.Generator().manual_seed(seed)
    cache = graphs.GraphCache()
    inputs = [(fresh(gen, 40, 30), fresh(gen, 30, 5)) for _ in range(5)]
    for i, (a, b) in enumerate(inputs):
        check(cache.run("k", work, a, b, in_place=(0,)), a, b, f"[seed={seed} call {i}]")
    assert list(cache._graphs) == ["k"], "new addresses should share the copying graph"


def test_in_place_graph_follows_the_memory_at_its_address(seed):
    """The same tensor again (changed in place between calls), then a new tensor of the same layout
    at that address (the allocator's reuse, forced by copying into the same storage)."""
    gen = torch.Generator().manual_seed(seed)
    cache = graphs.GraphCache()
    a, b = fresh(gen, 40, 30), fresh(gen, 30, 5)
    for i in range(4):
        a.copy_(fresh(gen, 40, 30))
        b = fresh(gen, 30, 5)
        check(cache.run("k", work, a, b, in_place=(0,)), a, b, f"[seed={seed} call {i}]")
    assert len(cache._graphs) == 1 and next(iter(cache._graphs))[0] == "k", list(cache._graphs)
    entry = next(iter(cache._graphs.values()))
    assert entry[0][0] is None and entry[0][1] is not None, "A should be read in place, b copied"
    other_view = a.view(-1).view(40, 30)  # another tensor object, same address and layout
    other_view.copy_(fresh(gen, 40, 30))
    check(cache.run("k", work, other_view, b, in_place=(0,)), other_view, b, f"[seed={seed} same address]")
    transposed = fresh(gen, 30, 40).mT  # same shape, other strides: not the in-place graph's layout
    check(cache.run("k", work, transposed, b, in_place=(0,)), transposed, b, f"[seed={seed} strided]")


def test_in_place_captures_are_capped(seed, monkeypatch):
    monkeypatch.setattr(graphs, "IN_PLACE_CAPTURES", 1)
    gen = torch.Generator().manual_seed(seed)
    cache = graphs.GraphCache()
    first, second = fresh(gen, 40, 30), fresh(gen, 40, 30)
    b = fresh(gen, 30, 5)
    for i in range(3):
        for a in (first, second):
            a.copy_(fresh(gen, 40, 30))
            check(cache.run("k", work, a, b, in_place=(0,)), a, b, f"[seed={seed} round {i}]")
    in_place = [key for key in cache._graphs if key != "k"]
    assert len(in_place) == 1, f"one in-place graph allowed, got {len(in_place)}"
    assert "k" in cache._graphs, "the second address should have taken the copying graph"


def test_a_capture_that_waits_for_the_device_runs_eagerly(seed):
    gen = torch.Generator().manual_seed(seed)
    cache = graphs.GraphCache()

    def waits(a, b):
        c, s = work(a, b)
        if float(s.sum()) < 0:  # reads the device: cannot be captured
            c = -c
        return c, s

    inputs = [(fresh(gen, 40, 30), fresh(gen, 30, 5)) for _ in range(3)]
    with pytest.warns(RuntimeWarning, match="capture failed"):
        for i, (a, b) in enumerate(inputs):
            check(cache.run("k", waits, a, b), a, b, f"[seed={seed} call {i}]")
    assert not cache._graphs
    torch.randn(4, device="cuda")  # the failed capture left the device's random generator usable
