"""Probe (device tool): the compiled bulge chase (csrc/bulge_chase.cu) with 1..8 blocks (a
cluster) per matrix, and the count the kernel chooses (0), per matrix, on random float64 bands in
lower band storage, fresh every run; median of --repeats after a warm-up; one row per case and
--lags value (sweeps 3 or 2 time steps apart; 0: the kernel picks). Also checks that every split
and lag gives the one-block, lag-3 tridiagonal bit for bit.

    python bench/probes/chase_split.py --cases 2048:32 4096:32 4096:8 8192:4 8192:1 [--width 32] [--lags 3 2 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from run_info import cuda_kernels_or_exit  # noqa: E402
from timing import median_timed  # noqa: E402


def random_bands(batch: int, n: int, b: int) -> torch.Tensor:
    bands = torch.zeros(batch, n, 2 * b, device="cuda", dtype=torch.float64)
    bands[:, :, : b + 1] = torch.randn(batch, n, b + 1, device="cuda", dtype=torch.float64)
    for d in range(1, b + 1):
        bands[:, n - d :, d] = 0.0  # past the matrix's end
    return bands


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["2048:32", "4096:32", "4096:8", "8192:4", "8192:1"])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--splits", nargs="+", type=int, default=[1, 2, 3, 4, 6, 8, 0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lags", nargs="+", type=int, default=[3])
    args = ap.parse_args()
    ext = cuda_kernels_or_exit("chase_split.py")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    print("| n | batch | lag | " + " | ".join(f"split {s or 'auto'} ms/matrix" for s in args.splits) + " | same bits |")
    print("|---|---|---|" + "---|" * (len(args.splits) + 1))
    for case in args.cases:
        n, batch = (int(x) for x in case.split(":"))
        bands = random_bands(batch, n, args.width)
        reference = ext.band_to_tridiagonal_(bands.clone(), args.width, 1, 3)
        for lag in args.lags:
            cells, same = [], True
            for split in args.splits:
                work = bands.clone()

                def run(work=work, split=split, lag=lag):
                    work.copy_(bands)
                    return ext.band_to_tridiagonal_(work, args.width, split, lag)

                seconds, out = median_timed(run, torch.device("cuda"), args.repeats)
                same &= torch.equal(out[0], reference[0]) and torch.equal(out[1], reference[1])
                cells.append(f"{1e3 * seconds / batch:.2f}")
            print(f"| {n} | {batch} | {lag or 'auto'} | " + " | ".join(cells) + f" | {'yes' if same else 'NO'} |",
                  flush=True)


if __name__ == "__main__":
    main()
