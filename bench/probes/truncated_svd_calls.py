"""truncated_svd call by call on a GPU (4096 x 14336 bf16, trained-like): the wall time of each of
seven calls per k (the first with a shape runs eagerly, the second captures the CUDA graphs, the
rest replay them), the small eigen solve on the host against the device at k = 64, and a kernel
table of one replayed call at k = 16.

    python3 bench/probes/truncated_svd_calls.py
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpu_probe import profile  # noqa: E402
from workloads import trained_like  # noqa: E402

from spectrum_fast.linalg import truncated_svd  # noqa: E402

svd_module = importlib.import_module("spectrum_fast.linalg.truncated_svd")


def call_ms(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    a = trained_like(4096, 14336, seed=5, device="cuda")
    for k in (16, 64, 16, 64):
        times = [call_ms(lambda: truncated_svd(a, k, oversample=10, power_iters=2)) for _ in range(7)]
        print(f"k={k}: " + " ".join(f"{t:.2f}" for t in times) + f" ms; graphs held {len(svd_module._GRAPHS._graphs)}",
              flush=True)
    gram = torch.eye(74, dtype=torch.float64, device="cuda").unsqueeze(0)
    for route in ("host", "device"):
        svd_module.SMALL_EIGH = route
        times = [call_ms(lambda: truncated_svd(a, 64, oversample=10, power_iters=2)) for _ in range(5)]
        alone = [call_ms(lambda: svd_module._small_eigh(gram)) for _ in range(5)]
        print(f"k=64, small eigh on the {route}: " + " ".join(f"{t:.2f}" for t in times)
              + " ms; the 74 x 74 eigh alone " + " ".join(f"{t:.2f}" for t in alone), flush=True)
    svd_module.SMALL_EIGH = "auto"
    profile(lambda: truncated_svd(a, 16, oversample=10, power_iters=2), 1)


if __name__ == "__main__":
    main()
