"""The eigen engine against torch.linalg.eigvalsh (cuSOLVER syevd) on the same matrices, same run:
the table of the issue "csrc: a batched CUDA symmetric eigenvalue engine that beats cuSOLVER".

Per case n x batch (float64 Grams of spiked random weights, fresh every run): time per matrix of
- ``syevd``: torch.linalg.eigvalsh on the whole batch (one call);
- ``ours``: spectrum_fast.ops.eigen.eigvalsh(route="two_stage_gpu") with the package's defaults;
- where spectrum_fast._C has its CUDA kernels, the same with one of ops.band's switches changed:
  ``Triton chase, torch.geqrf`` (no compiled kernel, the route before them), ``no panel kernel``
  (torch.geqrf), ``panels streamed`` (ops.band.PANEL_CLUSTER off: one block per panel streaming
  it, under the batch rule), ``stage 1 ungrouped`` (ops.band.STAGE1_PANELS_PER_UPDATE 1: one
  trailing update per panel), ``chase on one block per matrix`` (no cluster), ``V and T in one
  launch`` (ops.band.COMPACT_WY_KERNEL), ``stage 1 loop in C++`` (ops.band.STAGE1_IN_CPP);
  --variants picks some of them;
the throughput ratio of each against syevd, and its largest eigenvalue error relative to the
largest eigenvalue, against float64 LAPACK on the host (numpy) for n <= 2048 and against syevd
above (both backward stable to ~1e-15; LAPACK on 8192 would take minutes per matrix here).
Median of --repeats after a warm-up; the device is synchronized around each timing.

    python bench/eigen_engine.py --out $OUT [--cases 1024:64 2048:32 4096:8] [--repeats 3] [--variants ours]
    python bench/eigen_engine.py --dtype float32 --out $OUT   # float32 matrices, against float32 syevd
    python bench/eigen_engine.py --device cpu --cases 64:2 --repeats 1   # checks the script only

(SPECTRUM_FAST_COMMIT names the commit when the checkout has no .git, as on the device tool.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spectrum_fast import _extension  # noqa: E402
from spectrum_fast.ops import band, eigen  # noqa: E402
from run_info import git_commit  # noqa: E402
from timing import median_timed  # noqa: E402

CASES = ("1024:64", "1536:32", "2048:32", "4096:8", "4096:32", "8192:4")
# The targets: throughput against syevd, by n.
TARGETS = {1024: 8.0, 1536: 5.0, 2048: 5.0, 4096: 3.0, 8192: 2.0}


def grams(batch: int, n: int, device: str) -> torch.Tensor:
    w = torch.randn(batch, n, n + n // 2, device=device, dtype=torch.float64)
    w[:, : max(1, n // 16)] *= 30.0  # a spiked spectrum, as trained weights have
    return w @ w.mT



def variants(device: str) -> dict[str, tuple[str, dict]]:
    """name -> (route, ops.band switches set for it; the others keep the package's defaults)."""
    if device != "cuda":
        return {"ours": ("auto", {})}
    out = {"ours": ("two_stage_gpu", {})}
    if _extension.cuda_ops() is not None:
        out.update({"Triton chase, torch.geqrf": ("two_stage_gpu", {"PANEL_KERNEL": False, "CHASE_KERNEL": False}),
                    "no panel kernel": ("two_stage_gpu", {"PANEL_KERNEL": False}),
                    "panels streamed": ("two_stage_gpu", {"PANEL_CLUSTER": False}),
                    "stage 1 ungrouped": ("two_stage_gpu", {"STAGE1_PANELS_PER_UPDATE": 1}),
                    "chase on one block per matrix": ("two_stage_gpu", {"CHASE_BLOCKS_PER_MATRIX": 1}),
                    "V and T in one launch": ("two_stage_gpu", {"COMPACT_WY_KERNEL": True}),
                    "stage 1 loop in C++": ("two_stage_gpu", {"STAGE1_IN_CPP": True})})
    return out


@contextlib.contextmanager
def module_switches(module, switches: dict):
    """``module``'s switches (module-level settings) set to ``switches`` inside the block, restored
    after it."""
    saved = {name: getattr(module, name) for name in switches}
    for name, value in switches.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def band_switches(switches: dict):
    """ops.band's switches set to ``switches`` inside the block, restored after it."""
    return module_switches(band, switches)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=list(CASES), help="n:batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                    help="the matrices' type (float32: against float32 syevd; errors against the float32 matrix's float64 eigenvalues)")
    ap.add_argument("--variants", nargs="+", help="the variants to time (default: all there are; 'ours' is one)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    device = args.device
    chosen = variants(device)
    if args.variants:
        unknown = sorted(set(args.variants) - set(chosen))
        if unknown:
            sys.exit(f"eigen_engine: no variant {', '.join(map(repr, unknown))} here; there are {', '.join(map(repr, chosen))}")
        chosen = {name: chosen[name] for name in args.variants}
    res = {"date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu",
           "torch": torch.__version__, "commit": os.environ.get("SPECTRUM_FAST_COMMIT") or git_commit(),
           "command": " ".join(sys.argv), "extension": _extension.kernels_available(), "dtype": args.dtype, "rows": []}
    print(res["gpu"], res["torch"], res["extension"], flush=True)
    names = list(chosen)
    print("| n | batch | syevd ms/matrix | " + " | ".join(f"{v} ms/matrix (x syevd)" for v in names)
          + " | max eig error (rel.) | syevd's error | target |")
    print("|---|---|---|" + "---|" * len(names) + "---|---|---|")
    for case in args.cases:
        n, batch = (int(x) for x in case.split(":"))
        g = grams(batch, n, device).to(getattr(torch, args.dtype))
        syevd_s, syevd_vals = median_timed(lambda: torch.linalg.eigvalsh(g), torch.device(device), args.repeats)
        if n <= 2048:
            few = min(batch, 2)
            truth = torch.from_numpy(np.linalg.eigvalsh(g[:few].double().cpu().numpy()))
        elif args.dtype == "float64":
            few, truth = batch, syevd_vals.cpu()
        else:
            few = min(batch, 2)
            truth = torch.linalg.eigvalsh(g[:few].double()).cpu()
        syevd_err = float(((syevd_vals[:few].double().cpu() - truth).abs().max() / truth.abs().max()).item())
        row = {"n": n, "batch": batch, "syevd_ms": 1e3 * syevd_s / batch, "syevd_max_rel_err": syevd_err, "variants": {}}
        cells = []
        for name, (route, switches) in chosen.items():
            with band_switches(switches):
                seconds, vals = median_timed(lambda: eigen.eigvalsh(g.clone(), route), torch.device(device), args.repeats)
            vals = vals.cpu()[:few].double()
            err = float(((vals - truth).abs().max() / truth.abs().max()).item())
            ms = 1e3 * seconds / batch
            row["variants"][name] = {"ms": ms, "vs_syevd": syevd_s / seconds, "max_rel_err": err}
            cells.append(f"{ms:.2f} ({syevd_s / seconds:.1f}x)")
        worst = max(v["max_rel_err"] for v in row["variants"].values())
        res["rows"].append(row)
        print(f"| {n} | {batch} | {row['syevd_ms']:.2f} | " + " | ".join(cells)
              + f" | {worst:.1e} | {syevd_err:.1e} | {f'{TARGETS[n]:.0f}x' if n in TARGETS else '-'} |", flush=True)
        g = None  # freed before the next case allocates
        if device == "cuda":
            torch.cuda.empty_cache()
        Path(args.out).mkdir(parents=True, exist_ok=True)
        name = "eigen_engine.json" if args.dtype == "float64" else f"eigen_engine_{args.dtype}.json"
        (Path(args.out) / name).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
