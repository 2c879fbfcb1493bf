"""Each op of one orthonormalize.cholesky_qr pass on a GPU, timed alone (synchronized, host clock,
median of 20), for one tall fp32 matrix: where its fixed cost is.

    python3 bench/probes/cholesky_qr_ops.py [--shapes 4096x26 14336x26 4096x74]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpu_probe import timed  # noqa: E402
from run_info import run_info  # noqa: E402

from spectrum_fast.linalg.orthonormalize import cholesky_qr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["4096x26", "14336x26", "4096x74"])
    args = ap.parse_args()
    print(run_info(torch.device("cuda")), flush=True)
    for shape in args.shapes:
        p, c = map(int, shape.split("x"))
        y = torch.randn(1, p, c, device="cuda")
        q = y.double()
        gram = q.mT @ q
        chol = torch.linalg.cholesky(gram)
        eye = torch.eye(c, dtype=torch.float64, device="cuda").expand(1, -1, -1)
        eye_c = eye.contiguous()
        r_inv = torch.linalg.solve_triangular(chol.mT, eye, upper=True)
        ops = {
            "y.to(float64)": lambda: y.to(torch.float64),
            "q^T q (float64)": lambda: q.mT @ q,
            "q^T q via (q^T).contiguous()": lambda: q.mT.contiguous() @ q,
            "cholesky_ex batch 1": lambda: torch.linalg.cholesky_ex(gram),
            "cholesky_ex batch 2": lambda: torch.linalg.cholesky_ex(torch.cat([gram, eye_c])),
            "cholesky_ex on host": lambda: torch.linalg.cholesky_ex(gram.cpu()),
            "solve_triangular(R, expanded I)": lambda: torch.linalg.solve_triangular(chol.mT, eye, upper=True),
            "solve_triangular(R, contiguous I)": lambda: torch.linalg.solve_triangular(chol.mT, eye_c, upper=True),
            "inv_ex(R)": lambda: torch.linalg.inv_ex(chol.mT),
            "q @ R^-1 (float64)": lambda: q @ r_inv,
            "whole pass (cholesky_qr passes=1)": lambda: cholesky_qr(y, passes=1),
        }
        print(f"{shape}: " + ", ".join(f"{name} {timed(fn, 20):.3f} ms" for name, fn in ops.items()), flush=True)


if __name__ == "__main__":
    main()
