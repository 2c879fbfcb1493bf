"""scan(method="fast") against the exact scan on the same weights, same run: the second table of the
issue "Truncated SVD and MP-edge estimation".

Workloads (DESIGN.md section 4, bench/workloads.py, generated on the GPU and kept there, so both
modes time their computation, not reading): Llama-3-8B (--llama-layers of 32) and DeepSeek-V2's MoE
layers (--moe-layers of 59; 480 expert matrices per layer). Per workload:
- time: the exact scan at its defaults (estimator "spectrum", the fastest route), the exact scan
  with estimator "mp-moments", and the fast mode (median of --repeats, after one warm-up scan);
- against the exact "mp-moments" rows: the median and 95th percentile of the relative SNR
  difference, the per-type Spearman rank correlation (smallest and median over types), the
  selection overlap at 25% and 50% (|fast's selection & exact's| / |exact's|, all types);
- against Spectrum's own selection (the exact default, estimator "spectrum"): the same overlaps,
  reported as they come (nothing is tuned to them).

    python bench/fast_vs_exact.py --out $OUT [--llama-layers 32] [--moe-layers 4] [--repeats 3]
    python bench/fast_vs_exact.py --device cpu --llama-layers 1 --moe-layers 0 --small   # checks the script
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run_info import run_info  # noqa: E402
from workloads import LLAMA3_8B, deepseek_v2_moe_layout, generated_like, kind_of  # noqa: E402

import spectrum_fast  # noqa: E402


def resident_weights(layout: list[tuple[str, tuple[int, int]]], device: str) -> dict[str, torch.Tensor]:
    return {name: generated_like(shape, seed=i, kind=kind_of(i), device=device) for i, (name, shape) in enumerate(layout)}


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean of their positions), as Spearman's coefficient needs."""
    order = torch.argsort(x)
    r = torch.empty_like(x)
    r[order] = torch.arange(len(x), dtype=x.dtype)
    for v in torch.unique(x):  # ties are rare in SNRs; exact handling keeps the coefficient honest
        tied = x == v
        if tied.sum() > 1:
            r[tied] = r[tied].mean()
    return r


def spearman(a: list[float], b: list[float]) -> float:
    x, y = ranks(torch.tensor(a, dtype=torch.float64)), ranks(torch.tensor(b, dtype=torch.float64))
    x, y = x - x.mean(), y - y.mean()
    den = (x.norm() * y.norm()).item()
    return float((x @ y).item() / den) if den > 0 else float("nan")


def overlap(a: spectrum_fast.ScanResult, b: spectrum_fast.ScanResult, percent: float) -> float:
    sa, sb = set(a.select(percent)), set(b.select(percent))
    return len(sa & sb) / len(sb) if sb else float("nan")


def compare(fast: spectrum_fast.ScanResult, exact: spectrum_fast.ScanResult) -> dict:
    e = {r.name: r for r in exact.rows if r.status == "ok"}
    # Matrices whose exact SNR is 0 (no value above the edge: pure noise) have no relative error;
    # they count as agreeing when the fast mode gives 0 too, and are listed apart.
    pairs = [(r.snr, e[r.name].snr) for r in fast.rows if r.name in e and e[r.name].snr != 0]
    rel = [abs(f - x) / abs(x) for f, x in pairs if math.isfinite(f) and math.isfinite(x)]
    not_finite = len(pairs) - len(rel)
    zero_both = sum(1 for r in fast.rows if r.name in e and e[r.name].snr == 0 and r.snr == 0)
    zero_exact = sum(1 for r in fast.rows if r.name in e and e[r.name].snr == 0)
    by_type: dict[str, tuple[list[float], list[float]]] = {}
    for r in fast.rows:
        if r.name in e:
            xs, ys = by_type.setdefault(r.type, ([], []))
            xs.append(r.snr)
            ys.append(e[r.name].snr)
    rho = {t: spearman(xs, ys) for t, (xs, ys) in by_type.items() if len(xs) > 2}
    rel.sort()
    return {
        "exact_snr_zero": zero_exact, "fast_snr_zero_too": zero_both, "snr_not_finite": not_finite,
        "median_rel_snr_diff": statistics.median(rel),
        "p95_rel_snr_diff": rel[int(0.95 * (len(rel) - 1))],
        "spearman_min": min(rho.values()) if rho else float("nan"),
        "spearman_median": statistics.median(rho.values()) if rho else float("nan"),
        "spearman_by_type": rho,
        "overlap_25": overlap(fast, exact, 25),
        "overlap_50": overlap(fast, exact, 50),
    }


def timed_scan(weights, device: str, repeats: int, **kwargs) -> tuple[float, spectrum_fast.ScanResult]:
    times, result = [], None
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        result = spectrum_fast.scan(weights, device=device, progress=False, cache=False, **kwargs)
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def run(label: str, weights: dict, device: str, repeats: int) -> dict:
    # DeepSeek-V2's types are per expert (one matrix per layer each): pooled, as for its published
    # Spectrum result, so that each type has enough matrices for a rank correlation and a selection.
    pool = {"pool_experts": label.startswith("deepseek")}
    spectrum_fast.scan(dict(list(weights.items())[:4]), device=device, progress=False, method="fast")  # warm-up
    t_exact, exact = timed_scan(weights, device, repeats, **pool)
    t_moments, moments = timed_scan(weights, device, repeats, estimator="mp-moments", **pool)
    t_fast, fast = timed_scan(weights, device, repeats, method="fast", **pool)
    out = {"matrices": len(fast.rows), "exact_s": t_exact, "exact_mp_moments_s": t_moments, "fast_s": t_fast,
           "speedup_vs_exact": min(t_exact, t_moments) / t_fast,
           "vs_exact_mp_moments": compare(fast, moments),
           "vs_spectrum_selection": {"overlap_25": overlap(fast, exact, 25), "overlap_50": overlap(fast, exact, 50)}}
    print(label, json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-layers", type=int, default=32)
    ap.add_argument("--moe-layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="shapes divided by 16 (checks the script on a CPU)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    info = run_info(torch.device(args.device))
    print(f"# {info['device']} ({info['host_cpu']}), {info['date']}, commit {info['commit']}: {info['command']}")
    shrink = 16 if args.small else 1
    layouts = {
        "llama3-8b": [(f"model.layers.{i}.{suffix}.weight", (n // shrink, m // shrink))
                      for i in range(args.llama_layers) for suffix, n, m in LLAMA3_8B],
        "deepseek-v2-moe": [(name, (n // shrink, m // shrink))
                            for name, (n, m) in deepseek_v2_moe_layout(args.moe_layers)] if args.moe_layers else [],
    }
    results = {"info": info}
    for label, layout in layouts.items():
        if not layout:
            continue
        weights = resident_weights(layout, args.device)
        results[label] = run(label, weights, args.device, args.repeats)
        del weights
    print("\n| workload | matrices | exact s (spectrum / mp-moments) | fast s | speedup | median rel SNR diff "
          "(p95) | Spearman per type: min, median | overlap 25% / 50% vs exact mp-moments | overlap 25% / 50% "
          "vs Spectrum's selection |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in layouts:
        if label not in results:
            continue
        r = results[label]
        c, s = r["vs_exact_mp_moments"], r["vs_spectrum_selection"]
        print(f"| {label} | {r['matrices']} | {r['exact_s']:.2f} / {r['exact_mp_moments_s']:.2f} | {r['fast_s']:.2f} | "
              f"{r['speedup_vs_exact']:.1f}x | {c['median_rel_snr_diff']:.2%} ({c['p95_rel_snr_diff']:.2%}) | "
              f"{c['spearman_min']:.3f}, {c['spearman_median']:.3f} | {c['overlap_25']:.2f} / {c['overlap_50']:.2f} | "
              f"{s['overlap_25']:.2f} / {s['overlap_50']:.2f} |")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "fast_vs_exact.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
