"""Where the fast mode's time goes: cProfile (host) of one scan(method="fast") of resident weights,
after a warm-up scan. Prints the run's time and the top functions by cumulative time.

    python bench/probes/fast_profile.py [--workload deepseek-v2-moe|llama3-8b] [--layers 1] [--top 30]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from run_info import run_info  # noqa: E402
from workloads import deepseek_v2_moe_layout, generated_like, kind_of, llama3_8b_layout  # noqa: E402

import spectrum_fast  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="deepseek-v2-moe")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    info = run_info(torch.device("cuda"))
    print(f"# {info['device']}, {info['date']}, commit {info['commit']}: {info['command']}")
    if args.workload == "llama3-8b":
        layout = llama3_8b_layout(args.layers)
    else:
        layout = deepseek_v2_moe_layout(args.layers)
    weights = {name: generated_like(shape, seed=i, kind=kind_of(i)) for i, (name, shape) in enumerate(layout)}
    spectrum_fast.scan(weights, progress=False, cache=False, method="fast")
    for label, kwargs in (("exact", {}), ("fast", {"method": "fast"})):
        torch.cuda.synchronize()
        t = time.perf_counter()
        spectrum_fast.scan(weights, progress=False, cache=False, **kwargs)
        torch.cuda.synchronize()
        print(f"{label}: {time.perf_counter() - t:.2f} s for {len(weights)} matrices")
    prof = cProfile.Profile()
    prof.enable()
    spectrum_fast.scan(weights, progress=False, cache=False, method="fast")
    torch.cuda.synchronize()
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
