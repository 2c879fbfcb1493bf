"""Routes to a faster fast mode, measured on a GPU against the float64 eigenvalues of the same Grams:
- the count above the edge by a definiteness test: with c Ritz values above the shift and their
  vectors V_c, N = shift I - G + V_c diag(theta_c) V_c^T positive definite (one Cholesky) proves
  at most c eigenvalues above the shift (a PSD rank-c update moves at most c eigenvalues), and Ritz
  values are lower bounds (at least c): the count is c. Pass rate, counts and time of
  torch.linalg.cholesky_ex in float64 and float32; and Bunch-Kaufman LDL^T (ldl_factor_ex);
- the current count (linalg.inertia) and the subspace iteration replayed as CUDA graphs.

    python3 bench/probes/fast_routes.py [--cases 1536x5120:30 4096x14336:4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpu_probe import captured, cases, timed  # noqa: E402
from run_info import run_info  # noqa: E402
from workloads import generated_like, kind_of  # noqa: E402

from spectrum_fast.linalg import inertia, split_products  # noqa: E402
from spectrum_fast.linalg.orthonormalize import cholesky_qr  # noqa: E402
from spectrum_fast.ops import fast_snr  # noqa: E402
from spectrum_fast.ops.eigen import eigvalsh  # noqa: E402
from spectrum_fast.ops.gram import _full_fp32_matmul, gram  # noqa: E402
from spectrum_fast.ops.stats import threshold_factor  # noqa: E402


def iterate(g16: torch.Tensor, q: torch.Tensor, iterations: int) -> torch.Tensor:
    for i in range(iterations):
        q, _ = cholesky_qr(split_products.split_bmm(g16, q, 1), passes=2 if i + 1 == iterations else 1)
    return q


def ritz(g: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values descending [B, l] f64, vectors [B, k, l] f64) of fp32 g on the basis q."""
    with _full_fp32_matmul():
        gq = torch.bmm(g, q)
    q64 = q.to(torch.float64)
    small = q64.mT @ gq.to(torch.float64)
    evals, evecs = torch.linalg.eigh((small + small.mT) / 2)
    return evals.flip(-1), (q64 @ evecs).flip(-1)


def definite_test(g: torch.Tensor, values: torch.Tensor, vectors: torch.Tensor, shift: torch.Tensor,
                  dtype: torch.dtype, lift: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(passed [B], c [B]): N = shift I - G + V_c diag(lift theta_c) V_c^T by Cholesky in ``dtype``."""
    above = values > shift.unsqueeze(-1)
    d = torch.where(above, lift * values, 0.0)
    n_mat = (vectors * d.unsqueeze(-2)) @ vectors.mT - g.to(torch.float64)
    n_mat.diagonal(dim1=-2, dim2=-1).add_(shift.unsqueeze(-1))
    _, info = torch.linalg.cholesky_ex(n_mat.to(dtype))
    return info == 0, above.sum(-1)


def ldl_counts(g64: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """#{eigenvalues > shift} from Bunch-Kaufman LDL^T (ldl_factor_ex) of G - shift I: D's inertia."""
    s = g64.clone()
    s.diagonal(dim1=-2, dim2=-1).sub_(shift.unsqueeze(-1))
    ld, piv, _ = torch.linalg.ldl_factor_ex(s)
    out = []
    for b in range(s.shape[0]):
        d = ld[b].diagonal().cpu().tolist()
        sub = ld[b].diagonal(-1).cpu().tolist()
        p = piv[b].cpu().tolist()
        i, pos, n = 0, 0, len(d)
        while i < n:
            if p[i] < 0 and i + 1 < n:  # a 2x2 block (lower storage: rows i, i+1)
                det = d[i] * d[i + 1] - sub[i] * sub[i]
                pos += 1 if det < 0 else (2 if d[i] > 0 else 0)
                i += 2
            else:
                pos += d[i] > 0
                i += 1
        out.append(pos)
    return torch.tensor(out, device=g64.device)


def attempt(label: str, fn) -> str:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a probe: report and go on
        tb = traceback.format_exc().strip().splitlines()
        return f"{label} FAILED: {type(e).__name__}: {str(e)[:200]} | at {' / '.join(tb[-4:-1])[:300]}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["1536x5120:30", "4096x14336:4"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(run_info(torch.device("cuda")), flush=True)
    for shape, n, m, batch in cases(args.cases):
        k, big = min(n, m), max(n, m)
        w = torch.stack([generated_like((n, m), seed=700 + i, kind=kind_of(i)) for i in range(batch)])
        per = lambda ms: f"{ms / batch:.3f} ms/matrix"  # noqa: E731
        g = gram(w, "float32")
        g64 = g.to(torch.float64)
        t = fast_snr.START_VALUES
        width = t + fast_snr.OVERSAMPLE
        q0 = torch.randn(batch, k, width, device=g.device, generator=torch.Generator(g.device).manual_seed(3))
        g16 = g.to(torch.bfloat16)
        q = iterate(g16, q0, fast_snr.ITERATIONS)
        values, vectors = ritz(g, q)
        frob2 = torch.linalg.vector_norm(w.reshape(batch, -1), dim=-1, dtype=torch.float64).square()
        sigma = fast_snr._spikes(frob2, values[:, :t].clamp_min(0).sqrt(), k, big).sigma
        shift = (sigma * threshold_factor(k, big)) ** 2
        ev = eigvalsh(gram(w, "float64")).to(g.device, torch.float64)
        truth = (ev > shift.unsqueeze(-1)).sum(-1)
        lines = [f"{shape} x {batch}: truth counts {truth.tolist()}"]
        lines.append("iteration eager " + per(timed(lambda: iterate(g16, q0, fast_snr.ITERATIONS), args.repeats)))

        def graph_iter():
            graph, out = captured(lambda: iterate(g16, q0, fast_snr.ITERATIONS))
            same = float((out - iterate(g16, q0, fast_snr.ITERATIONS)).abs().max())
            return "iteration graph " + per(timed(graph.replay, args.repeats)) + f" (max diff to eager {same:.1e})"
        lines.append(attempt("iteration graph", graph_iter))
        lines.append("ritz (device eigh) " + per(timed(lambda: ritz(g, q), args.repeats)))
        lines.append("count_above eager " + per(timed(lambda: inertia.count_above(g, shift), args.repeats)))

        def graph_count():
            graph, out = captured(lambda: inertia.count_above(g, shift)[0])
            return "count_above graph " + per(timed(graph.replay, args.repeats)) + \
                f" (counts right {int((out == truth).sum())}/{batch})"
        lines.append(attempt("count_above graph", graph_count))
        for dtype in (torch.float64, torch.float32):
            for lift in (1.0, 2.0):
                def definite():
                    passed, c = definite_test(g, values, vectors, shift, dtype, lift)
                    ms = timed(lambda: definite_test(g, values, vectors, shift, dtype, lift), args.repeats)
                    wrong = int((passed & (c != truth)).sum())
                    return (f"definite test {str(dtype)[6:]} lift {lift}: {per(ms)}, passed {int(passed.sum())}/{batch}, "
                            f"passed but wrong {wrong}, c < truth {int((c < truth).sum())}")
                lines.append(attempt("definite test", definite))
        chol = lambda dt: (lambda: torch.linalg.cholesky_ex(g64.to(dt) + k * torch.eye(k, device=g.device, dtype=dt)))  # noqa: E731
        lines.append("cholesky_ex f64 alone " + per(timed(chol(torch.float64), args.repeats)))
        lines.append("cholesky_ex f32 alone " + per(timed(chol(torch.float32), args.repeats)))

        def ldl():
            c = ldl_counts(g64, shift)
            s = g64.clone()
            ms = timed(lambda: torch.linalg.ldl_factor_ex(s), args.repeats)
            return f"ldl_factor_ex f64 {per(ms)}, counts right {int((c == truth).sum())}/{batch}"
        lines.append(attempt("ldl", ldl))
        lines.append("fast_snr_statistics " + per(timed(lambda: fast_snr.fast_snr_statistics(w, seed=1), args.repeats)))
        print("\n  ".join(lines), flush=True)


if __name__ == "__main__":
    main()
