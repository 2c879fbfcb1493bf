"""Accuracy of the noise-scale estimators (spectrum_fast.ops.noise_edge) on matrices of known sigma,
CPU, float64.

    python3 bench/noise_estimators.py [--k 512] [--trials 20] [--seed 20240501] [--out DIR]

For beta in {1/8, 1/4, 1/2, 1}: k x k/beta matrices of Gaussian noise (entry std s, so sigma =
s sqrt(M) in Spectrum's units), pure and with 3 rank-one spikes of strength 4, 6 and 8 sigma
(random unit vectors). Per estimator: relative bias (mean of sigma_hat / sigma - 1), spread (std),
the largest |error|, the mean count of singular values above its threshold tau = sigma_hat
(1 + sqrt beta) (Spectrum's n_signal: 0 is right for pure noise up to Tracy-Widom stragglers at the
edge, 3 with the spikes) and its time per matrix (estimator only, singular values given, after a
warm-up call).
Trial i of a cell uses seed base + 1000 * cell + i; the base is printed. Prints a markdown table;
--out DIR also writes noise_estimators.log (the same text) and noise_estimators.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run_info import cpu_name, git_commit  # noqa: E402
from spectrum_fast.ops.noise_edge import ESTIMATORS, estimate_sigma  # noqa: E402
from spectrum_fast.ops.stats import threshold_factor  # noqa: E402

BETAS = (1 / 8, 1 / 4, 1 / 2, 1.0)
SPIKE_STRENGTHS = (4.0, 6.0, 8.0)  # in units of sigma; the BBP threshold is beta^(1/4) <= 1
ENTRY_STD = 0.02


def singular_values(k: int, big: int, spikes: bool, seed: int) -> tuple[torch.Tensor, float]:
    """Ascending singular values [k] of one k x big test matrix, and its true sigma."""
    g = torch.Generator().manual_seed(seed)
    w = ENTRY_STD * torch.randn(k, big, generator=g, dtype=torch.float64)
    sigma = ENTRY_STD * math.sqrt(big)
    if spikes:
        for strength in SPIKE_STRENGTHS:
            u = torch.randn(k, 1, generator=g, dtype=torch.float64)
            v = torch.randn(1, big, generator=g, dtype=torch.float64)
            w += strength * sigma * (u / u.norm()) * (v / v.norm())
    return torch.linalg.svdvals(w).flip(-1), sigma


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=512, help="the smaller size; the larger is k / beta")
    ap.add_argument("--trials", type=int, default=20, help="matrices per beta and kind")
    ap.add_argument("--seed", type=int, default=20240501, help="base seed")
    ap.add_argument("--out", default=None, help="folder for noise_estimators.log and .json")
    args = ap.parse_args()
    command = shlex.join(["python3", *sys.argv])
    lines = [f"# {cpu_name()}, {time.strftime('%Y-%m-%d')}, commit {git_commit()}: {command}",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, k = {args.k}, "
             f"{args.trials} matrices per row, base seed {args.seed}, spikes {SPIKE_STRENGTHS} sigma",
             "",
             "| beta | shape | matrix | estimator | bias | std | max abs err | mean n_signal | ms/matrix |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    rows = []
    cell = 0
    for beta in BETAS:
        big = round(args.k / beta)
        for spikes in (False, True):
            spectra = [singular_values(args.k, big, spikes, args.seed + 1000 * cell + i) for i in range(args.trials)]
            cell += 1
            s = torch.stack([sv for sv, _ in spectra])
            sigma = torch.tensor([sg for _, sg in spectra], dtype=torch.float64)
            for est in ESTIMATORS:
                estimate_sigma(s[:1], args.k, big, est)  # warm-up: the MP median per beta is computed once, cached
                t = time.perf_counter()
                sigma_hat = estimate_sigma(s, args.k, big, est)
                ms = 1e3 * (time.perf_counter() - t) / args.trials
                rel = (sigma_hat / sigma - 1).tolist()
                tau = sigma_hat * threshold_factor(args.k, big)
                n_signal = (s > tau.unsqueeze(-1)).sum(-1).double().mean().item()
                row = {"beta": beta, "shape": f"{args.k}x{big}", "matrix": "spiked" if spikes else "noise",
                       "estimator": est, "bias": statistics.fmean(rel), "std": statistics.stdev(rel),
                       "max_abs_err": max(map(abs, rel)), "mean_n_signal": n_signal, "ms_per_matrix": ms}
                rows.append(row)
                line = (f"| {beta:g} | {row['shape']} | {row['matrix']} | {est} | {row['bias']:+.4f} | "
                        f"{row['std']:.4f} | {row['max_abs_err']:.4f} | {n_signal:.2f} | {ms:.3f} |")
                lines.append(line)
                print(line, flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "noise_estimators.log").write_text("\n".join(lines) + "\n")
        meta = {"cpu": cpu_name(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(),
                "command": command, "torch": torch.__version__, "threads": torch.get_num_threads(), "k": args.k,
                "trials": args.trials, "seed": args.seed, "spike_strengths": SPIKE_STRENGTHS,
                "entry_std": ENTRY_STD}
        (out / "noise_estimators.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
