"""spectrum_fast.linalg.truncated_svd against torch.svd_lowrank and torch.linalg.svd, same run: the
table of the issue "Truncated SVD and MP-edge estimation".

Per shape (a trained-looking bf16 weight from bench/workloads.py, fresh every run) and k:
- ``randomized`` / ``lanczos``: truncated_svd(A, k, method=...) on the bf16 weight, defaults;
  ``randomized, fused sketch`` (FUSED_SKETCH on: the Triton kernel draws Omega inside the product)
  and ``randomized, fp32 products`` (SPLIT_PRODUCTS off: A upcast, fp32 GEMMs without TF32);
- ``svd_lowrank``: torch.svd_lowrank(A.float(), q=k + oversample, niter=power_iters) on a float32
  copy made before timing (the upcast is not counted against it), the same q and iterations;
- ``svd``: torch.linalg.svd(A.float(), full_matrices=False), timed once (--no-full-svd skips it).
Accuracy of the top k: the largest relative error of the singular values against float64 truth
(the float64 Gram's eigenvalues), and the largest residual of the triplets,
max(|A v_i - s_i u_i|, |A^T u_i - s_i v_i|) / s_1.
Median of --repeats after two warm-up calls (truncated_svd's bf16 route: a shape's first call runs
eagerly, the second captures CUDA graphs; both times are in the JSON, first_ms); the device is
synchronized around each timing.

    python bench/truncated_svd.py --out $OUT [--shapes 8192x28672 4096x14336] [--ks 16 64 256]
    python bench/truncated_svd.py --device cpu --shapes 300x500 --ks 8 --repeats 1   # checks the script only

(SPECTRUM_FAST_COMMIT names the commit when the checkout has no .git, as on the device tool.)
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run_info import run_info  # noqa: E402
from timing import timed  # noqa: E402
from workloads import trained_like  # noqa: E402

from spectrum_fast import ops  # noqa: E402
from spectrum_fast.linalg import truncated_svd  # noqa: E402

svd_module = importlib.import_module("spectrum_fast.linalg.truncated_svd")  # its switches (the package's name is the function)

OVERSAMPLE = 10
POWER_ITERS = 2
METHOD_NAMES = ("randomized", "randomized, fused sketch", "randomized, fp32 products", "lanczos", "svd_lowrank")


def true_singular_values(a: torch.Tensor) -> torch.Tensor:
    """All singular values, descending, float64 (the Gram of the short side in float64, eigvalsh)."""
    g = ops.gram(a.unsqueeze(0), "float64")[0]
    return torch.linalg.eigvalsh(g).clamp_min(0).sqrt().flip(-1)


def accuracy(a: torch.Tensor, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, truth: torch.Tensor) -> dict:
    k = s.shape[-1]
    s64 = s.double()
    rel = ((s64 - truth[:k]) / truth[:k]).abs().max().item()
    # max(|A v_i - s_i u_i|, |A^T u_i - s_i v_i|) / s_1 over the triplets, in float64 (A is bf16:
    # exact in float64). Both sides: a Rayleigh-Ritz step makes one of them vanish by construction
    # (which one depends on the side it projects), so one side alone says nothing.
    a64, u64, v64 = a.double(), u.double(), vh.double().T
    right = (a64 @ v64 - u64 * s64).norm(dim=0)
    left = (a64.T @ u64 - v64 * s64).norm(dim=0)
    residual = torch.maximum(right, left).max().item() / truth[0].item()
    return {"max_rel_sv_error": rel, "max_residual": residual}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["8192x28672", "4096x14336"])
    ap.add_argument("--ks", nargs="+", type=int, default=[16, 64, 256])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-full-svd", action="store_true", help="skip torch.linalg.svd (seconds per matrix)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=list(METHOD_NAMES),
                    help="which to time (the ratio column needs randomized and svd_lowrank)")
    args = ap.parse_args()
    device = torch.device(args.device)
    info = run_info(device)
    print(f"# {info['device']} ({info['host_cpu']}), {info['date']}, commit {info['commit']}: {info['command']}")
    results = []
    for shape in args.shapes:
        n, m = map(int, shape.split("x"))
        a = trained_like(n, m, seed=random.randrange(2**31), device=str(device))
        a32 = a.float()
        truth = true_singular_values(a)
        full = None
        if not args.no_full_svd:
            secs, (u, s, vh) = timed(lambda: torch.linalg.svd(a32, full_matrices=False), device)
            full = (secs, u, s, vh)
        for k in args.ks:
            row = {"shape": shape, "k": k}
            def randomized(**switches):
                def run():
                    saved = {name: getattr(svd_module, name) for name in switches}
                    for name, value in switches.items():
                        setattr(svd_module, name, value)
                    try:
                        return truncated_svd(a, k, method="randomized", oversample=OVERSAMPLE, power_iters=POWER_ITERS)
                    finally:
                        for name, value in saved.items():
                            setattr(svd_module, name, value)
                return run

            runs = {
                "randomized": randomized(),
                "randomized, fused sketch": randomized(FUSED_SKETCH=True),
                "randomized, fp32 products": randomized(SPLIT_PRODUCTS=False),
                "lanczos": lambda: truncated_svd(a, k, method="lanczos", oversample=OVERSAMPLE),
                "svd_lowrank": lambda: torch.svd_lowrank(a32, q=min(k + OVERSAMPLE, min(n, m)), niter=POWER_ITERS),
            }
            for name, fn in ((x, runs[x]) for x in args.methods):
                # Two warm-up calls for every method: truncated_svd's bf16 route runs a shape's first call
                # eagerly and captures its CUDA graphs on the second (linalg.graphs); their times are kept.
                first_ms = [round(timed(fn, device)[0] * 1e3, 3) for _ in range(2)]
                runs_ms, result = [], None
                for _ in range(args.repeats):
                    secs, result = timed(fn, device)
                    runs_ms.append(secs * 1e3)
                secs, (u, s, v) = statistics.median(runs_ms) / 1e3, result
                if name == "svd_lowrank":  # returns V, not Vh, and q >= k columns
                    u, s, v = u[:, :k], s[:k], v[:, :k].T
                row[name] = {"ms": secs * 1e3, **accuracy(a, u, s, v, truth), "ms_runs": [round(x, 3) for x in runs_ms],
                             "first_ms": first_ms}
            if full is not None:
                secs, u, s, vh = full
                row["svd"] = {"ms": secs * 1e3, **accuracy(a, u[:, :k], s[:k], vh[:k], truth)}
            results.append(row)
            print(json.dumps(row))
    names = list(args.methods) + ([] if args.no_full_svd else ["svd"])
    print("\n| shape | k | " + " | ".join(f"{x}: ms, max rel sv error, max residual" for x in names)
          + " | svd_lowrank ms / randomized ms |")
    print("|---|---|" + "---|" * len(names) + "---|")
    for r in results:
        cells = [f"{r[x]['ms']:.2f}, {r[x]['max_rel_sv_error']:.1e}, {r[x]['max_residual']:.1e}" for x in names]
        both = "svd_lowrank" in r and "randomized" in r
        ratio = f"{r['svd_lowrank']['ms'] / r['randomized']['ms']:.2f}x" if both else "-"
        print(f"| {r['shape']} | {r['k']} | " + " | ".join(cells) + f" | {ratio} |")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "truncated_svd.json").write_text(json.dumps({"info": info, "results": results}, indent=1))


if __name__ == "__main__":
    main()
