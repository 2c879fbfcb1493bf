"""The inertia count (linalg.inertia) on a GPU: its pivot-block routes ("lu": torch's LU without
pivoting; "kernel": csrc/ldlt_unpivoted.cu, pivot blocks of 128 or 64 in panels of 128), counts checked against float64 eigenvalues (the first
log, at 4227733, compared a batched trsm per column block with L^-T applied by a GEMM); which of its ops a CUDA graph capture refuses at a batch; a kernel table. And how
often the fast mode's spike-edge check (ops.fast_snr._settle_spike_count) fires by its 1% band
against a Ritz residual test (|theta - cut^2| <= ||G x - theta x||), and how often it moves r.

    python3 bench/probes/inertia_routes.py [--cases 1536x5120:30 4096x4096:8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fast_routes import attempt, iterate  # noqa: E402
from gpu_probe import captured, cases, profile, timed  # noqa: E402
from run_info import run_info  # noqa: E402
from workloads import generated_like, kind_of  # noqa: E402

from spectrum_fast.linalg import inertia  # noqa: E402
from spectrum_fast.ops import fast_snr, noise_edge  # noqa: E402
from spectrum_fast.ops.eigen import eigvalsh  # noqa: E402
from spectrum_fast.ops.gram import _full_fp32_matmul, gram  # noqa: E402
from spectrum_fast.ops.stats import threshold_factor  # noqa: E402


def ritz_with_residuals(g: torch.Tensor, q: torch.Tensor):
    """(values descending f64, residual norms ||G x - theta x|| f64), fp32 G, basis q."""
    with _full_fp32_matmul():
        gq = torch.bmm(g, q).to(torch.float64)
    q64 = q.to(torch.float64)
    small = q64.mT @ gq
    evals, evecs = torch.linalg.eigh((small + small.mT) / 2)
    r = gq @ evecs - (q64 @ evecs) * evals.unsqueeze(-2)
    return evals.flip(-1), torch.linalg.vector_norm(r, dim=-2).flip(-1)


def capture_ops(batch: int, device: torch.device) -> list[str]:
    """Which ops of count_above a graph capture takes at this batch (128 x 128 pivot blocks)."""
    a = torch.randn(batch, 128, 128, dtype=torch.float64).to(device)  # the default CUDA generator may be
    # left in capture state by a failed capture above
    a = a @ a.mT + 128 * torch.eye(128, dtype=torch.float64, device=device)
    lu = torch.linalg.lu_factor_ex(a, pivot=False)[0]
    eye = torch.eye(128, dtype=torch.float64, device=device).expand_as(a)
    c = torch.randn(batch, 1000, 128, dtype=torch.float64).to(device)
    ops = {
        "lu_factor_ex(pivot=False)": lambda: torch.linalg.lu_factor_ex(a, pivot=False)[0],
        "solve_triangular(L^T, I)": lambda: torch.linalg.solve_triangular(lu.mT, eye, upper=True, unitriangular=True),
        "solve_triangular right (tall C)": lambda: torch.linalg.solve_triangular(lu.mT, c, upper=True, left=False,
                                                                                 unitriangular=True),
        "bmm": lambda: c @ a,
    }
    out = []
    for name, fn in ops.items():
        out.append(attempt(f"capture {name}", lambda: (captured(fn), f"capture {name}: ok")[1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["1536x5120:30", "1536x5120:64", "4096x4096:8", "4096x14336:4"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    print(run_info(torch.device("cuda")), flush=True)
    for shape, n, m, batch in cases(args.cases):
        k, big = min(n, m), max(n, m)
        w = torch.stack([generated_like((n, m), seed=700 + i, kind=kind_of(i)) for i in range(batch)])
        per = lambda ms: f"{ms / batch:.3f} ms/matrix"  # noqa: E731
        g = gram(w, "float32")
        t = fast_snr.START_VALUES
        q0 = torch.randn(batch, k, t + fast_snr.OVERSAMPLE, device=g.device,
                         generator=torch.Generator(g.device).manual_seed(3))
        q = iterate(g.to(torch.bfloat16), q0, fast_snr.ITERATIONS)
        theta, resid = ritz_with_residuals(g, q)
        s = theta[:, :t].clamp_min(0).sqrt()
        frob2 = torch.linalg.vector_norm(w.reshape(batch, -1), dim=-1, dtype=torch.float64).square()
        spikes = fast_snr._spikes(frob2, s, k, big)
        shift = (spikes.sigma * threshold_factor(k, big)) ** 2
        ev = eigvalsh(gram(w, "float64")).to(g.device, torch.float64)
        truth = (ev > shift.unsqueeze(-1)).sum(-1)
        lines = [f"{shape} x {batch}:"]
        for elimination, block in (("lu", 128), ("kernel", 128), ("kernel", 64)):
            inertia.PIVOT_BLOCK["cuda"] = elimination
            inertia.BLOCK = block
            elimination = f"{elimination} block {block}"
            ms = timed(lambda: inertia.count_above(g, shift), args.repeats)
            c, r = inertia.count_above(g, shift)
            lines.append(f"count_above {elimination}: {per(ms)} (counts right {int((c == truth).sum())}/{batch}, "
                         f"reliable {int(r.sum())}/{batch})")

            def graph_count():
                graph, out = captured(lambda: inertia.count_above(g, shift)[0])
                return f"count_above {elimination} graph " + per(timed(graph.replay, args.repeats)) + \
                    f" (counts right {int((out == truth).sum())}/{batch})"
            lines.append(attempt("graph", graph_count))
        lines += capture_ops(batch, g.device)
        # The spike-edge check: which matrices the 1% band and the residual test send to a count,
        # and where the exact count at the cut differs from the found r.
        cut = spikes.sigma * noise_edge.spike_edge_factor(k, big)
        band = ((s - cut.unsqueeze(-1)).abs() <= fast_snr.SPIKE_EDGE_BAND * cut.unsqueeze(-1)).any(-1)
        cut2 = (cut * cut).unsqueeze(-1)
        by_residual = ((theta[:, :t] - cut2).abs() <= resid[:, :t]).any(-1)
        r_exact = (ev > cut2).sum(-1)
        moves = (r_exact != spikes.n_spikes) & (r_exact < t)
        lines.append(f"spike-edge check: band 1% fires {int(band.sum())}/{batch}, residual test fires "
                     f"{int(by_residual.sum())}/{batch}; exact r differs from found r in {int(moves.sum())} "
                     f"(missed by the residual test: {int((moves & ~by_residual).sum())}, by the band: "
                     f"{int((moves & ~band).sum())})")
        rel = (resid[:, :t] / theta[:, :t].clamp_min(1e-30))
        lines.append(f"Ritz residual / theta over the found values: median {float(rel.median()):.1e}, "
                     f"max {float(rel.max()):.1e}")
        for block in (128, 64):  # the kernel route
            inertia.BLOCK = block
            ms = timed(lambda: fast_snr.fast_snr_statistics(w, seed=1), args.repeats)
            lines.append(f"fast_snr_statistics ({inertia.PIVOT_BLOCK['cuda']}, block {block}) {per(ms)}")
        print("\n  ".join(lines), flush=True)
        if args.profile:
            attempt("profile", lambda: profile(lambda: inertia.count_above(g, shift), batch))


if __name__ == "__main__":
    main()
