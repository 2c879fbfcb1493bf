"""truncated_svd's bf16 route phase by phase on a GPU (the device synchronized after each phase,
host clock), to find a fixed cost: the same steps as linalg.truncated_svd._randomized_svd_split.

    python3 bench/probes/truncated_svd_phases.py [--cases 4096x14336:16 8192x28672:16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpu_probe import cases, timed  # noqa: E402
from run_info import run_info  # noqa: E402
from workloads import trained_like  # noqa: E402

from spectrum_fast.linalg import split_products, truncated_svd  # noqa: E402
from spectrum_fast.linalg.orthonormalize import cholesky_qr  # noqa: E402


def phases(a: torch.Tensor, k: int, l: int, iters: int) -> dict[str, float]:
    out = {}
    clock = time.perf_counter

    def mark(name, t0):
        torch.cuda.synchronize()
        out[name] = out.get(name, 0.0) + (clock() - t0) * 1e3
        return clock()

    t = clock()
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64).item())
    generator = torch.Generator(device=a.device).manual_seed(seed)
    t = mark("seed + generator", t)
    omega = torch.randn(1, a.shape[-1], l, generator=generator, device=a.device, dtype=a.dtype)
    t = mark("randn", t)
    y = split_products.split_bmm(a, omega, 1)
    t = mark("sketch product", t)
    q, failed = cholesky_qr(y, passes=1)
    t = mark("cholesky_qr", t)
    for i in range(iters):
        z = split_products.split_bmm(a.mT, q, 1)
        y = split_products.split_bmm(a, z, 1)
        t = mark("iteration products", t)
        q, bad = cholesky_qr(y, passes=2 if i + 1 == iters else 1)
        t = mark("cholesky_qr", t)
    small = split_products.split_bmm_left(q.mT, a, 3)
    t = mark("final projection (3 parts)", t)
    small64 = small.to(torch.float64)
    gram = small64 @ small64.mT
    t = mark("small gram", t)
    host = gram.cpu()
    t = mark("to host", t)
    evals, evecs = torch.linalg.eigh(host)
    t = mark("host eigh", t)
    evals, evecs = evals.flip(-1)[..., :k].to(a.device), evecs.flip(-1)[..., :k].to(a.device)
    vh = (evecs.mT @ small64) / evals.clamp_min(0).sqrt().unsqueeze(-1)
    u = q.to(torch.float64) @ evecs
    t = mark("assembly", t)
    bool(failed.any())
    mark("failed check", t)
    del vh, u
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["4096x14336:16", "8192x28672:16"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(run_info(torch.device("cuda")), flush=True)
    for shape, n, m, k in cases(args.cases):
        a = trained_like(n, m, seed=7).unsqueeze(0)
        runs = [phases(a, k, k + 10, 2) for _ in range(args.repeats + 1)][1:]
        total = timed(lambda: truncated_svd(a[0], k, oversample=10, power_iters=2), args.repeats)
        print(f"{shape} k={k}: truncated_svd {total:.3f} ms (host clock); phases (median ms):")
        for name in runs[0]:
            print(f"    {statistics.median(r[name] for r in runs):7.3f}  {name}")


if __name__ == "__main__":
    main()
