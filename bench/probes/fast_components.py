"""The fast mode's parts, timed one by one on a GPU (gpu_probe.timed: host clock, GPU synchronized,
median of --repeats; CUDA events in the logs before the review mends of 2026-11-26), per matrix, for
batches of bench/workloads.py matrices; and its inertia counts checked against the float64
eigenvalues of the same Grams (ops.eigen, the exact mode's route) at the fast mode's edge.

    python3 bench/probes/fast_components.py [--cases 1536x5120:64 4096x14336:4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpu_probe import captured, cases, profile, timed  # noqa: E402
from run_info import run_info  # noqa: E402
from workloads import generated_like, kind_of  # noqa: E402

from spectrum_fast.linalg import inertia  # noqa: E402
from spectrum_fast.ops import fast_snr  # noqa: E402
from spectrum_fast.ops.eigen import eigvalsh  # noqa: E402
from spectrum_fast.ops.gram import gram  # noqa: E402
from spectrum_fast.ops.stats import threshold_factor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["1536x5120:64", "5120x1536:64", "4096x4096:8", "4096x14336:4"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--panels", type=int, nargs="+", default=[128])
    ap.add_argument("--pivots", nargs="+", default=["lu"])
    ap.add_argument("--blocks", type=int, nargs="+", default=[32], help="pivot block sizes (inertia.BLOCK) to time")
    ap.add_argument("--profile", action="store_true", help="kernel table of one fast_snr_statistics call per case")
    ap.add_argument("--graph", action="store_true", help="also time the inertia count replayed as one CUDA graph")
    args = ap.parse_args()
    print(run_info(torch.device("cuda")), flush=True)
    for shape, n, m, batch in cases(args.cases):
        k, big = min(n, m), max(n, m)
        w = torch.stack([generated_like((n, m), seed=500 + i, kind=kind_of(i)) for i in range(batch)])
        per = lambda ms: f"{ms / batch:.3f} ms"  # noqa: E731
        g = gram(w, "float32")
        line = [f"{shape} x {batch}:"]
        line.append("gram fp32 " + per(timed(lambda: gram(w, "float32"), args.repeats)))
        line.append("gram f64 " + per(timed(lambda: gram(w, "float64"), args.repeats)))
        for iters in (8, 16, 24):
            fast_snr.ITERATIONS = iters
            line.append(f"top {fast_snr.START_VALUES} ({iters} it) "
                        + per(timed(lambda: fast_snr.top_eigenvalues(g, fast_snr.START_VALUES, seed=1), args.repeats)))
        fast_snr.ITERATIONS = 16
        values, _ = fast_snr.top_eigenvalues(g, fast_snr.START_VALUES, seed=1)
        frob2 = torch.linalg.vector_norm(w.reshape(batch, -1), dim=-1, dtype=torch.float64).square()
        sigma = fast_snr._spikes(frob2, values.clamp_min(0).sqrt(), k, big).sigma
        shift = (sigma * threshold_factor(k, big)) ** 2
        ev = eigvalsh(gram(w, "float64")).to(g.device, torch.float64)
        truth = (ev > shift.unsqueeze(-1)).sum(-1)
        for pivot in args.pivots:
            inertia.PIVOT_BLOCK["cuda"] = pivot
            for panel in args.panels:
                for block in args.blocks:
                    inertia.PANEL, inertia.BLOCK = panel, min(block, panel)
                    ms = timed(lambda: inertia.count_above(g, shift), args.repeats)
                    c, r = inertia.count_above(g, shift)
                    line.append(f"inertia {pivot} panel {panel} block {inertia.BLOCK} {per(ms)} "
                                f"(counts right {int((c == truth).sum())}/{batch}, reliable {int(r.sum())}/{batch})")
        inertia.PANEL, inertia.BLOCK, inertia.PIVOT_BLOCK["cuda"] = 128, 32, "lu"
        if args.graph:
            try:
                graph, graph_counts = captured(lambda: inertia.count_above(g, shift)[0])
                line.append("inertia lu panel 128, one CUDA graph " + per(timed(graph.replay, args.repeats))
                            + f" (counts as eager: {bool((graph_counts == inertia.count_above(g, shift)[0]).all())})")
            except Exception as e:  # noqa: BLE001 - a probe: report and go on
                line.append(f"inertia as a CUDA graph failed: {type(e).__name__}: {str(e)[:120]}")
        counts, reliable = inertia.count_above(g, shift)
        line.append("fast_snr_statistics " + per(timed(lambda: fast_snr.fast_snr_statistics(w, seed=1), args.repeats)))
        line.append("exact eigvalsh (f64 Gram) " + per(timed(lambda: eigvalsh(gram(w, "float64")), args.repeats)))
        gaps = ((ev - shift.unsqueeze(-1)).abs() / shift.unsqueeze(-1)).amin(-1)
        line.append(f"inertia counts = f64 eigenvalue counts: {int((counts == truth).sum())}/{batch}, "
                    f"reliable {int(reliable.sum())}/{batch}, smallest gap to the shift {float(gaps.min()):.1e}")
        print("\n  ".join(line), flush=True)
        if args.profile:
            try:
                profile(lambda: fast_snr.fast_snr_statistics(w, seed=1), batch)
            except Exception as e:  # noqa: BLE001 - a probe: the timings above stand
                print(f"  profile failed: {type(e).__name__}: {e}")



if __name__ == "__main__":
    main()
