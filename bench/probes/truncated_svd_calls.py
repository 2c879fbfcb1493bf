"""truncated_svd call by call on a GPU (4096 x 14336 bf16, trained-like): the wall time of each of
seven calls per k (the first with a shape runs eagerly, the second captures the CUDA graphs, the
rest replay them), the small eigen solve's routes at k = 16 (the device's Jacobi solver inside
one graph, or the host between two) and at k = 64 (host or device), calls on a new tensor each
(new addresses: the graph copies A in) against the same tensor (read in place), the call's
(last) graph replayed alone, back to back (the GPU's time for it, gaps between its kernels
included), and a kernel table of one replayed call at k = 16.

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

from spectrum_fast.linalg import small_eigh, truncated_svd  # noqa: E402

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
    for k, routes in ((16, ("jacobi", "host")), (64, ("host", "device"))):
        gram = torch.eye(k + 10, dtype=torch.float64, device="cuda").unsqueeze(0)
        for route in routes:
            if route == "jacobi" and small_eigh.jacobi_max_size(gram.device) < k + 10:
                print("k=16, jacobi: not built (no cuSOLVER at build time)", flush=True)
                continue
            svd_module.SMALL_EIGH = route
            times = [call_ms(lambda: truncated_svd(a, k, oversample=10, power_iters=2)) for _ in range(7)]
            alone = [call_ms(lambda: small_eigh.small_eigh(gram, route)) for _ in range(5)]
            print(f"k={k}, small eigh {route}: " + " ".join(f"{t:.2f}" for t in times)
                  + f" ms; the {k + 10} x {k + 10} eigh alone " + " ".join(f"{t:.2f}" for t in alone), flush=True)
    svd_module.SMALL_EIGH = "auto"
    for k in (16, 64):
        truncated_svd(a, k, oversample=10, power_iters=2)  # its graphs most recently used
        key = next(reversed(svd_module._GRAPHS._graphs))
        graph = svd_module._GRAPHS._graphs[key][1]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        print(f"k={k}: its last graph replayed alone, 20 back to back: {start.elapsed_time(end) / 20:.3f} ms per replay",
              flush=True)
    for k in (16, 64):
        held = []  # kept alive: every call at a new address
        times = []
        for _ in range(7):
            held.append(a.clone())
            times.append(call_ms(lambda: truncated_svd(held[-1], k, oversample=10, power_iters=2)))
        print(f"k={k}, a new tensor per call: " + " ".join(f"{t:.2f}" for t in times) + " ms", flush=True)
        held.clear()
    profile(lambda: truncated_svd(a, 16, oversample=10, power_iters=2), 1)


if __name__ == "__main__":
    main()
