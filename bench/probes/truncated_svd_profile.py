"""Where truncated_svd's time goes at small k on a GPU: wall time (gpu_probe.timed; CUDA events in its
05bffc8 log) against the kernel time summed by torch.profiler, the top kernels and host ops, next to
torch.svd_lowrank's wall time on the same matrix (fp32 copy), bench/truncated_svd.py's settings
(oversample 10, 2 power iterations).

    python3 bench/probes/truncated_svd_profile.py [--cases 4096x14336:16 8192x28672:16 4096x14336:64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpu_probe import cases, profile, timed  # noqa: E402
from run_info import run_info  # noqa: E402
from workloads import trained_like  # noqa: E402

from spectrum_fast.linalg import truncated_svd  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["4096x14336:16", "8192x28672:16", "4096x14336:64"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(run_info(torch.device("cuda")), flush=True)
    for shape, n, m, k in cases(args.cases):
        a = trained_like(n, m, seed=7)
        a32 = a.float()
        ours = timed(lambda: truncated_svd(a, k, oversample=10, power_iters=2), args.repeats)
        lowrank = timed(lambda: torch.svd_lowrank(a32, q=k + 10, niter=2), args.repeats)
        print(f"{shape} k={k}: truncated_svd {ours:.3f} ms, svd_lowrank {lowrank:.3f} ms ({lowrank / ours:.2f}x)", flush=True)
        profile(lambda: truncated_svd(a, k, oversample=10, power_iters=2), 1)


if __name__ == "__main__":
    main()
