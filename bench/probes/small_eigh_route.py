"""Which route the truncated SVD's small l x l eigen solves should take on a GPU machine: truncated_svd
(bf16 route) timed with linalg.truncated_svd.SMALL_EIGH = host / numpy / device, same matrices, same
run (gpu_probe.timed: median of --repeats after a warm-up; CUDA events in its dba9e9d log).

    python3 bench/probes/small_eigh_route.py [--cases 4096x14336:16 ...]
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpu_probe import cases, timed  # noqa: E402
from run_info import run_info  # noqa: E402
from workloads import trained_like  # noqa: E402

from spectrum_fast.linalg import truncated_svd  # noqa: E402

svd_module = importlib.import_module("spectrum_fast.linalg.truncated_svd")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["4096x14336:16", "4096x14336:64", "4096x14336:256", "8192x28672:16"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(run_info(torch.device("cuda")), flush=True)
    for shape, n, m, k in cases(args.cases):
        a = trained_like(n, m, seed=7)
        a32 = a.float()
        line = [f"{shape} k={k}:"]
        for route in ("host", "numpy", "device"):
            svd_module.SMALL_EIGH = route
            line.append(f"{route} {timed(lambda: truncated_svd(a, k, oversample=10, power_iters=2), args.repeats):.3f} ms")
        line.append(f"svd_lowrank {timed(lambda: torch.svd_lowrank(a32, q=k + 10, niter=2), args.repeats):.3f} ms")
        print("  ".join(line), flush=True)


if __name__ == "__main__":
    main()
