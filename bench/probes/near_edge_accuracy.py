"""How exactly each truncated-SVD method finds the singular values just above the MP edge, where the
fast mode's count of signal values is decided: the largest relative error of the top 30 values of
trained-looking weights (bench/workloads.py generated_like, 768 x 2560: about 23 above the edge)
against float64 truth, for the randomized method (the fast mode's settings), Golub-Kahan-Lanczos,
and randomized block Krylov (the whole Krylov space of a block kept; float64, a throwaway here).

    python bench/probes/near_edge_accuracy.py [--matrices 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from run_info import run_info  # noqa: E402
from workloads import generated_like  # noqa: E402

from spectrum_fast.linalg import truncated_svd  # noqa: E402


def block_krylov_values(a: torch.Tensor, block: int, steps: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = a.double()
    y = torch.linalg.qr(a @ torch.randn(a.shape[1], block, generator=g, dtype=torch.float64))[0]
    blocks = [y]
    for _ in range(steps):
        y = a @ (a.T @ y)
        basis = torch.cat(blocks, 1)
        for _ in range(2):
            y = y - basis @ (basis.T @ y)
        blocks.append(torch.linalg.qr(y)[0])
    q = torch.cat(blocks, 1)
    return torch.linalg.svdvals(q.T @ a)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--matrices", type=int, default=3)
    args = ap.parse_args()
    info = run_info(torch.device("cpu"))
    print(f"# {info['device']}, {info['date']}, commit {info['commit']}: {info['command']}")
    print("| matrix | method | products with A (vectors) | max rel error, top 30 |")
    print("|---|---|---|---|")
    for i in range(args.matrices):
        w = generated_like((768, 2560), seed=i, kind="spiked", device="cpu")
        truth = torch.linalg.svdvals(w.double())[:30]
        runs = {
            "randomized, 64 + 64, 6 iterations": (lambda: truncated_svd(w, 64, oversample=64, power_iters=6, seed=1)[1], 14 * 128),
            "lanczos, 128 steps": (lambda: truncated_svd(w, 64, method="lanczos", oversample=64, seed=1)[1], 2 * 128),
            "lanczos, 80 steps": (lambda: truncated_svd(w, 40, method="lanczos", oversample=40, seed=1)[1], 2 * 80),
            "block krylov, 32 x 5": (lambda: block_krylov_values(w, 32, 4, 1), 10 * 32),
        }
        for name, (fn, products) in runs.items():
            s = fn().double()[:30]
            print(f"| {i} | {name} | {products} | {((s - truth) / truth).abs().max().item():.2e} |")


if __name__ == "__main__":
    main()
