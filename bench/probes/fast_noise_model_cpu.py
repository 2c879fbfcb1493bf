"""How much of the fast mode's SNR error is the model, not the truncated SVD (CPU, float64).

For bench/workloads.py's generated matrices: the exact "mp-moments" row (every value from the
float64 Gram) against the fast mode's table (ops.fast_snr._table) fed the EXACT top values, so
only its modelled parts differ (sigma from ||W||_F^2 and the top values; the noise sum from the MP
law's expectation), and fed the exact values scaled by (1 - e) with e uniform in [0, err] (a
truncated SVD's error, mostly low), to see how the count above the edge reacts.

    python3 bench/probes/fast_noise_model_cpu.py [--matrices 6] [--shapes 1536x5120 5120x1536 1024x4096]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from workloads import generated_like, kind_of  # noqa: E402

from spectrum_fast.ops import fast_snr  # noqa: E402
from spectrum_fast.ops.stats import snr_statistics, threshold_factor  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--matrices", type=int, default=6)
    p.add_argument("--shapes", nargs="+", default=["1536x5120", "5120x1536", "1024x4096"])
    p.add_argument("--errors", type=float, nargs="*", default=[1e-4, 1e-3, 3e-3])
    p.add_argument("--settings", nargs="*", default=[],
                   help="fast-mode settings to try, each START:OVERSAMPLE:ITERATIONS (default: the module's)")
    args = p.parse_args()
    settings = [tuple(map(int, x.split(":"))) for x in args.settings] or [
        (fast_snr.START_VALUES, fast_snr.OVERSAMPLE, fast_snr.ITERATIONS)]
    torch.manual_seed(0)
    print("shape idx kind: exact(n_signal, snr) | oracle fast rel diff (n_signal) | with value errors ...")
    for shape in args.shapes:
        n, m = map(int, shape.split("x"))
        k, big = min(n, m), max(n, m)
        exact_snrs, fast_snrs = [], {e: [] for e in [0.0] + list(args.errors) + [f"fast {a}:{b}:{c}" for a, b, c in settings]}
        for idx in range(args.matrices):
            kind = kind_of(idx)
            w = generated_like((n, m), seed=1000 + idx, kind=kind, device="cpu").to(torch.float64)
            g = w @ w.T if n <= m else w.T @ w
            ev = torch.linalg.eigvalsh(g)  # ascending
            st = snr_statistics(ev.unsqueeze(0), n, m, "mp-moments")
            ex_snr, ex_count = float(st.snr[0]), int(st.n_signal[0])
            s = ev.clamp_min(0).sqrt().flip(-1)
            frob2 = (w * w).sum().reshape(1)
            t = min(k, max(64, 2 * ex_count + 32))
            exact_snrs.append(ex_snr)
            line = [f"{shape} {idx} {kind:14s}: exact ({ex_count}, {ex_snr:.4g})"]
            for err in [0.0] + list(args.errors):
                top = s[:t].clone() * (1 - err * torch.rand(t, dtype=torch.float64))
                top = top.sort(descending=True).values.unsqueeze(0)
                sigma = fast_snr._spikes(frob2, top, k, big).sigma
                full = torch.full((1, k), float("nan"), dtype=torch.float64)
                full[:, :t] = top
                above = (top > (sigma * threshold_factor(k, big)).unsqueeze(-1)).sum(-1)  # from the values themselves
                row = fast_snr._table(full, torch.tensor([t]), above, sigma, k, big, frob2)[0]
                fast_snrs[err].append(float(row[6]))
                rel = (float(row[6]) - ex_snr) / ex_snr if ex_snr else float("nan")
                line.append(f"err {err:g}: {rel:+.2%} ({int(row[5])})")
            for start, over, iters in settings:
                fast_snr.START_VALUES, fast_snr.OVERSAMPLE, fast_snr.ITERATIONS = start, over, iters
                row = fast_snr.fast_snr_statistics(w.to(torch.bfloat16).unsqueeze(0))[0]
                fast_snrs[f"fast {start}:{over}:{iters}"].append(float(row[6]))
                rel = (float(row[6]) - ex_snr) / ex_snr if ex_snr else float("nan")
                line.append(f"fast {start}:{over}:{iters}: {rel:+.2%} ({int(row[5])})")
            print(" | ".join(line), flush=True)
        rho = {e: spearman(exact_snrs, v) for e, v in fast_snrs.items()}
        print(f"{shape}: Spearman against exact over {len(exact_snrs)} matrices: "
              + ", ".join(f"{e if isinstance(e, str) else 'err %g' % e}: {r:.3f}" for e, r in rho.items()), flush=True)


if __name__ == "__main__":
    main()
