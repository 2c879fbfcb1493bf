"""CPU benchmark: spectrum_fast.scan against Spectrum's computation (float32 torch.linalg.svdvals
per matrix) on trained-looking synthetic weights, same run, with SNR error against float64.

    python bench/cpu_vs_svdvals.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import spectrum_fast  # noqa: E402
from float64_reference import reference_stats  # noqa: E402
from spectrum_reference import spectrum_snr  # noqa: E402
from workloads import kind_of, trained_like  # noqa: E402

SHAPES = [(512, 512), (256, 1024), (1792, 512), (512, 1792), (1024, 1024)]
COUNT_PER_SHAPE = 4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for n, m in SHAPES:
        weights = {f"model.layers.{i}.mlp.w.weight": trained_like(n, m, seed=i + n + m, kind=kind_of(i), device="cpu")
                   for i in range(COUNT_PER_SHAPE)}
        fp32 = {k: v.float() for k, v in weights.items()}  # the reference holds fp32 weights
        ours, ref = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            result = spectrum_fast.scan(weights, device="cpu", progress=False, cache=False)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref_snr = [spectrum_snr(w) for w in fp32.values()]
            ref.append(time.perf_counter() - t)
        truth = [reference_stats(w)["snr"] for w in weights.values()]
        err_ours = max(abs(r.snr - t) / t for r, t in zip(result.rows, truth))
        err_ref = max(abs(r - t) / t for r, t in zip(ref_snr, truth))
        rows.append({"shape": f"{n}x{m}", "matrices": COUNT_PER_SHAPE, "spectrum_fast_s": statistics.median(ours),
                     "spectrum_svdvals_s": statistics.median(ref), "speedup": statistics.median(ref) / statistics.median(ours),
                     "err_spectrum_fast": err_ours, "err_spectrum": err_ref})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print("| shape | matrices | spectrum_fast s | Spectrum (svdvals fp32) s | speedup | max rel err ours | max rel err Spectrum |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['matrices']} | {r['spectrum_fast_s']:.3f} | {r['spectrum_svdvals_s']:.3f} | "
              f"{r['speedup']:.1f}x | {r['err_spectrum_fast']:.1e} | {r['err_spectrum']:.1e} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
