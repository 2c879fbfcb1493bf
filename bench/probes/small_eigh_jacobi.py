"""The small Jacobi eigen solver (csrc/small_eigh_jacobi.cu: cuSOLVER's batched Jacobi,
syevjBatched; at 5693118 and 8a1df9c a kernel of our own behind the same op, slower, not kept) on
the randomized SVD's own l x l Grams B B^T (4096 x 14336 bf16 trained-like, k = 16 and 20, l = 26
and 30, one matrix): the time of one solve replayed from a CUDA graph (with the op's small output
fills), by tolerance and sweep limit, its accuracy (largest eigenvalue error against float64
eigvalsh on the host, relative to the largest eigenvalue and to the k-th) and convergence flags;
then the kernels of torch.linalg.eigh on a batch of two of them, for comparison in the same run.

    python3 bench/probes/small_eigh_jacobi.py
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpu_probe import captured, profile  # noqa: E402
from run_info import run_info  # noqa: E402
from workloads import trained_like  # noqa: E402

from spectrum_fast import _extension  # noqa: E402

svd_module = importlib.import_module("spectrum_fast.linalg.truncated_svd")
REPLAYS = 50


def replayed_us(graph) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPLAYS):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / REPLAYS * 1e3


def main() -> None:
    print(run_info(torch.device("cuda")), flush=True)
    ext = _extension.cuda_ops()
    a = trained_like(4096, 14336, seed=5, device="cuda").unsqueeze(0)
    for k in (16, 20):
        l = k + 10
        omega = torch.randn(1, a.shape[-1], l, device="cuda", dtype=a.dtype)
        gram = svd_module._split_from_omega(a, omega, power_iters=2)[2]
        truth = torch.linalg.eigvalsh(gram.cpu())
        top, kth = truth[0, -1].item(), truth[0, -k].item()
        print(f"l = {l}: eigenvalues {truth[0, 0].item():.3e} .. {top:.3e}, k-th {kth:.3e}", flush=True)
        for tolerance in (0.0, 1e-12):
            for sweeps in (100, 8, 6, 5, 4):
                graph, (values, _, info) = captured(lambda: ext.small_eigh_jacobi(gram, tolerance, sweeps))
                us = replayed_us(graph)
                error = (values.cpu() - truth).abs().max().item()
                print(f"  tolerance {tolerance:.0e} max sweeps {sweeps:3d}: {us:7.1f} us per solve; max error "
                      f"{error / top:.1e} of the largest, {error / kth:.1e} of the k-th; converged "
                      f"{bool((info == 0).all())}", flush=True)
        print(f"  torch.linalg.eigh on two of them ({l} x {l}):", flush=True)
        pair = gram.expand(2, l, l).contiguous()
        profile(lambda: torch.linalg.eigh(pair), 2)


if __name__ == "__main__":
    main()
