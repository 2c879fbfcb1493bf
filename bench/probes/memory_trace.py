"""Probe (device tool): where the GPU peak of a scan comes from. Wraps each step of the engine
(batch to device, Gram, eigen solve per route) and prints, per step and batch shape, the memory
allocated before it and the peak during it.

    python bench/probes/memory_trace.py --folder /tmp/llama3-8b [--budget-mib 768]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import spectrum_fast  # noqa: E402
from spectrum_fast import engine, ops  # noqa: E402
from spectrum_fast.ops import eigen  # noqa: E402
from workloads import write_llama3_8b  # noqa: E402

MiB = 2**20
worst: dict[tuple, tuple[float, float]] = defaultdict(lambda: (0.0, 0.0))


def traced(label, fn, shape_of):
    def wrapper(*args, **kwargs):
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn(*args, **kwargs)
        peak = torch.cuda.max_memory_allocated()
        key = (label, shape_of(args, out))
        worst[key] = max(worst[key], (peak / MiB, before / MiB))
        return out
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/llama3-8b")
    ap.add_argument("--budget-mib", type=int, default=None)
    ap.add_argument("--route", default="auto", choices=["auto", "syevd", "two_stage"])
    args = ap.parse_args()
    folder = Path(args.folder)
    if not (folder / "model.safetensors.index.json").exists():
        write_llama3_8b(folder)
    engine._Loaded.take = traced("to device", engine._Loaded.take, lambda a, out: tuple(out.shape))
    ops.gram = traced("gram", ops.gram, lambda a, out: tuple(a[0].shape))
    route_of = {"last": args.route}

    def choose(n, device, dtype, _orig=eigen.choose_route):  # records the route "auto" takes
        route_of["last"] = _orig(n, device, dtype) if args.route == "auto" else args.route
        return route_of["last"]

    eigen.choose_route = choose
    ops.eigvalsh_deferred = traced("eigen", ops.eigvalsh_deferred,
                                   lambda a, out: (tuple(a[0].shape), route_of.get("last")))
    budget = args.budget_mib << 20 if args.budget_mib else None
    r = spectrum_fast.scan(folder, device="cuda", progress=False, cache=False, max_batch_bytes=budget, eigen_route=args.route)
    print(torch.cuda.get_device_name(), "budget MiB", args.budget_mib or "default", "route", args.route,
          "matrices", len(r.rows))
    print("| step | shape | allocated before MiB | peak during MiB |")
    print("|---|---|---|---|")
    for (label, shape), (peak, before) in sorted(worst.items(), key=lambda kv: -kv[1][0]):
        print(f"| {label} | {shape} | {before:.0f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
