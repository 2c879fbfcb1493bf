"""Rank search (spectrum_fast/rank_search.py): the rule with deterministic fake timers, the real timer
on tiny layers, and a CPU smoke run of bench/lowrank_training.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spectrum_fast.errors import SelectionError
from spectrum_fast.rank_search import best_rank_near, search_bounds, time_per_rank

ROOT = Path(__file__).resolve().parents[1]
N, M = 1024, 512  # largest saving rank (1024 * 512 - 1) // 1536 = 341


def fake_timer(seconds_of_rank):
    """A Timer that runs nothing and answers seconds_of_rank(layer.rank); records the ranks asked."""
    asked = []

    def timer(step, device, repeats, layer):
        asked.append(layer.rank)
        return seconds_of_rank(layer.rank)

    timer.asked = asked
    return timer


def search(start, timer, **kw):
    return best_rank_near(N, M, start, batch_tokens=4, timer=timer, **kw)


def test_tile_timer_picks_the_quantized_rank():
    # a rank off a multiple of 64 leaves a tile partly idle: 1.5x the time per rank, so 256 beats 250
    timer = fake_timer(lambda r: r * (1.0 if r % 64 == 0 else 1.5))
    result = search(250, timer, window=8, quantize=64)
    assert result.rank == 256
    assert result.allowed == (250, 258)
    assert sorted(timer.asked) == sorted(result.seconds) == [192, *range(242, 259)]
    assert result.speedup == pytest.approx(result.seconds[250] / result.seconds[256])


def test_quantized_rank_outside_the_window_is_still_a_candidate():
    timer = fake_timer(lambda r: 0.5 if r % 64 == 0 else 1.0)
    result = search(200, timer, window=4, quantize=64)
    assert result.allowed == (200, 256)
    assert 256 in result.seconds and result.rank == 256


def test_monotone_timer_picks_the_smallest_allowed_rank():
    timer = fake_timer(lambda r: float(r))
    assert search(100, timer, window=8, quantize=64).rank == 100  # energy kept: never below the start
    assert search(100, timer, window=8, quantize=64, keep_energy=False).rank == 92


def test_ties_go_to_the_smaller_rank():
    assert search(100, fake_timer(lambda r: 1.0), window=3, quantize=None).rank == 100


def test_bounds_respect_the_saving_cap():
    measured, allowed = search_bounds(N, M, 340, window=8, quantize=64)
    assert allowed == (340, 341) and max(measured) == 341
    assert min(measured) == 320  # the multiple of 64 below 340 is 320, below the window's 332
    measured, allowed = search_bounds(N, M, 3, window=8, quantize=64, keep_energy=False)
    assert allowed == (1, 64) and min(measured) == 1 and 64 in measured


@pytest.mark.parametrize("start, window, quantize", [(0, 8, 64), (342, 8, 64), (10, -1, 64), (10, 8, 0),
                                                      (10.0, 8, 64)])
def test_bad_requests_raise(start, window, quantize):
    with pytest.raises(SelectionError):
        search_bounds(N, M, start, window, quantize)


def test_time_per_rank_real_timer_on_tiny_layers():
    ranks = [4, 8, 8, 16]
    for train, freeze in ((True, None), (True, "first"), (True, "second"), (False, None)):
        seconds = time_per_rank(32, 24, ranks, batch_tokens=16, repeats=3, train=train, freeze=freeze)
        assert list(seconds) == [4, 8, 16]
        assert all(isinstance(s, float) and s > 0 for s in seconds.values())
    with pytest.raises(SelectionError):
        time_per_rank(32, 24, [25], batch_tokens=4)
    with pytest.raises(SelectionError):
        time_per_rank(32, 24, [4], batch_tokens=4, freeze="both")


def test_bench_smoke_on_cpu(tmp_path):
    pytest.importorskip("transformers")
    cmd = [sys.executable, str(ROOT / "bench" / "lowrank_training.py"), "--device", "cpu", "--layers", "2",
           "--hidden", "64", "--intermediate", "128", "--heads", "4", "--kv-heads", "2", "--vocab", "256",
           "--batch", "2", "--seq", "16", "--ranks", "8,16", "--search-start", "12", "--window", "2",
           "--quantize", "8", "--quant-ranks", "15,16,17", "--repeats", "2", "--warmup", "1", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "lowrank_training.json").read_text())
    assert list(result)[0] == "run_info"
    searched = result["rank_search"]["rank"]
    assert 12 <= searched <= 16
    expected = {(None, None)} | {(r, t) for r in {8, 16, searched} for t in (None, "first", "second")}
    assert {(v["rank"], v["trains"]) for v in result["variants"]} == expected
    for v in result["variants"]:
        assert v["step_s"] > 0 and v["inference_s"] > 0 and v["peak_gpu_bytes"] is None
        assert v["params"] < v["dense_params"] if v["rank"] else v["params"] == v["dense_params"]
    assert set(result["quantization"]["seconds"]) == {"15", "16", "17"}
    assert {f["rank"] for f in result["freezing_schedule"]} == {8, 16, searched}
    assert torch.__version__ in result["run_info"]["torch"]
