"""Micro-benchmarks of the operations behind a scan, with pytest-benchmark (not part of the test
suite: CI's regression check is bench/check_regression.py, which compares ratios).

    python3 -m pytest bench/test_bench_ops.py --benchmark-only [--benchmark-json out.json]

Each case runs on the CPU and, where present, on CUDA (synchronized inside the timed call).
Inputs are fresh random bf16 weights; results are checked against float64 once per case, so a
fast wrong answer cannot pass as a benchmark.
"""

from __future__ import annotations

import random

import pytest
import torch

import spectrum_fast
from spectrum_fast import ops
from spectrum_fast.ops.stats import snr_statistics_torch

SEED = random.SystemRandom().randrange(2**31)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPES = {"cpu": [(256, 1024), (512, 512)], "cuda": [(1024, 4096), (4096, 4096)]}


def _weights(n: int, m: int, device: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED + seed)
    w = torch.randn(n, m, generator=g) / m**0.5
    w[:, : max(1, m // 32)] *= 20  # a few strong directions, like trained weights
    return w.to(torch.bfloat16).to(device)


def _synced(fn, device: str):
    def run():
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out
    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which", [0, 1])
def test_gram_float64(benchmark, device, which):
    n, m = SHAPES[device][which]
    w = _weights(n, m, device, which)
    g = benchmark(_synced(lambda: ops.gram(w.unsqueeze(0)), device))
    a = w.double() if n <= m else w.double().T
    torch.testing.assert_close(g[0], a @ a.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("route", ["syevd", "two_stage"])
def test_eigvalsh(benchmark, device, route):
    if route == "two_stage" and (device == "cpu" or not ops.band_eigen.available()):
        pytest.skip("the two-stage route is for CUDA with scipy")
    n, m = SHAPES[device][1]
    g = ops.gram(_weights(n, m, device, 7).unsqueeze(0))
    ev = benchmark(_synced(lambda: ops.eigvalsh(g.clone(), route), device))
    torch.testing.assert_close(ev.cpu().reshape(-1), torch.linalg.eigvalsh(g.cpu()).reshape(-1), rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_snr_statistics(benchmark, device):
    k, batch = 1024, 256
    g = torch.Generator().manual_seed(SEED)
    eig = (torch.rand(batch, k, generator=g, dtype=torch.float64) ** 4).sort(dim=-1).values.to(device)
    stats = benchmark(_synced(lambda: ops.snr_statistics(eig, k, 4 * k), device))
    want = snr_statistics_torch(eig.cpu(), k, 4 * k)
    torch.testing.assert_close(stats.snr.cpu(), want[:, -1], rtol=1e-14, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_scan_of_a_dict(benchmark, device):
    n, m = SHAPES[device][0]
    weights = {f"model.layers.{i}.mlp.w.weight": _weights(n, m, device, 100 + i) for i in range(8)}
    result = benchmark(_synced(lambda: spectrum_fast.scan(weights, device=device, progress=False, cache=False), device))
    assert len(result.rows) == 8 and all(r.status == "ok" for r in result.rows)
