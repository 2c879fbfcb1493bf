"""Probe (device tool): formulations of the exact float64 Gram (ops.gram's float64 path) of bf16
weights, timed side by side in one run, for the scan's batch shapes.

- k_chunks: the whole batch in slices along the long side L (ops.gram before 2026-11-26);
- whole_matrices: chunks of whole matrices, each product the full depth (ops.gram now);
- per_matrix: one addmm per matrix, full depth;
- per_matrix_lt: as per_matrix with the upcast matrix stored transposed (L x k, contiguous), so
  cuBLAS sees the other layout;
- halves: per matrix, the 2 x 2 block triangle (3 products of k/2: 75% of the flops), mirrored;
- ops_gram: spectrum_fast.ops.gram as it is (whole matrices per chunk, block triangle on CUDA).
Each against a float64 product of the same matrices (max relative error), TF/s = 2 k^2 L / time.

    python bench/probes/gram_f64.py --cases 1536:5120:36 4096:14336:8 4096:4096:8 1024:4096:64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from spectrum_fast.ops.gram import _CHUNK_BYTES as CHUNK, gram  # noqa: E402
from timing import timed  # noqa: E402


def k_chunks(a):
    b, k, length = a.shape
    step = max(1, min(length, CHUNK // (8 * k * b)))
    out = torch.zeros(b, k, k, dtype=torch.float64, device=a.device)
    for s in range(0, length, step):
        c = a[..., s : s + step].to(torch.float64)
        out.baddbmm_(c, c.mT)
    return out


def whole_matrices(a):
    b, k, length = a.shape
    group = max(1, CHUNK // (8 * k * length))
    out = torch.zeros(b, k, k, dtype=torch.float64, device=a.device)
    for i in range(0, b, group):
        c = a[i : i + group].to(torch.float64)
        out[i : i + group].baddbmm_(c, c.mT)
    return out


def per_matrix(a):
    b, k, length = a.shape
    out = torch.empty(b, k, k, dtype=torch.float64, device=a.device)
    for i in range(b):
        c = a[i].to(torch.float64)
        torch.mm(c, c.T, out=out[i])
    return out


def per_matrix_lt(a):
    b, k, length = a.shape
    out = torch.empty(b, k, k, dtype=torch.float64, device=a.device)
    for i in range(b):
        ct = a[i].T.to(torch.float64, memory_format=torch.contiguous_format)  # [L, k] contiguous
        torch.mm(ct.T, ct, out=out[i])
    return out


def halves(a):
    b, k, length = a.shape
    h = k // 2
    out = torch.empty(b, k, k, dtype=torch.float64, device=a.device)
    for i in range(b):
        c = a[i].to(torch.float64)
        top, bottom = c[:h], c[h:]
        torch.mm(top, top.T, out=out[i, :h, :h])
        torch.mm(bottom, top.T, out=out[i, h:, :h])
        torch.mm(bottom, bottom.T, out=out[i, h:, h:])
        out[i, :h, h:] = out[i, h:, :h].T
    return out


def ops_gram(a):
    return gram(a)


VARIANTS = {"k_chunks": k_chunks, "whole_matrices": whole_matrices, "per_matrix": per_matrix,
            "per_matrix_lt": per_matrix_lt, "halves": halves, "ops_gram": ops_gram}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["1536:5120:36", "4096:14336:8", "4096:4096:8", "1024:4096:64"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__)
    print("| k x L x batch | " + " | ".join(f"{v} ms/matrix (TF/s)" for v in VARIANTS) + " | max rel. error |")
    print("|---" * (len(VARIANTS) + 2) + "|")
    for case in args.cases:
        k, length, batch = map(int, case.split(":"))
        a = (torch.randn(batch, k, length, device=dev) / length ** 0.5).to(torch.bfloat16)
        truth = torch.stack([x.double() @ x.double().T for x in a])
        cells, worst = [], 0.0
        for name, fn in VARIANTS.items():
            g = fn(a)
            worst = max(worst, ((g - truth).abs().max() / truth.abs().max()).item())
            del g
            times = sorted(timed(lambda: fn(a), dev)[0] for _ in range(args.repeats))
            t = times[len(times) // 2] / batch
            cells.append(f"{t * 1e3:.3f} ({2 * k * k * length / t / 1e12:.1f})")
        print(f"| {k} x {length} x {batch} | " + " | ".join(cells) + f" | {worst:.1e} |", flush=True)
        a = truth = None  # freed before the next case
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
