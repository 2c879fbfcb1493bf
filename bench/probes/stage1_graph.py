"""Probe (device tool): what stage 1 of the eigen route would gain if its launches were replayed
from a CUDA graph instead of queued from Python, before building that into the package.

The 8B scan is bound by the host queueing stage 1's small operations (csrc/NOTES.md: ~75 ATen
calls per panel). Per case n:batch (float64 Grams of spiked random weights, fresh every run), with
the package's defaults (and --switch settings), same run, median of --repeats after a warm-up:
- eager: ops.band.reduce_to_band_ + lower_band on a copy of the Grams, as the route runs them;
- queue only: the same call's wall time without waiting for the GPU (the host's part);
- graph: the Grams copied into a static buffer, then one replay of those calls captured once;
and the bands of the two compared (they must agree to rounding; a capture that breaks shows here).

    python bench/probes/stage1_graph.py --cases 4096:8 4096:5 1536:32 1024:64 [--switch COMPACT_WY_KERNEL=True]
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spectrum_fast.ops import band  # noqa: E402
from eigen_engine import band_switches, grams  # noqa: E402
from run_info import cuda_kernels_or_exit  # noqa: E402
from timing import median_timed  # noqa: E402


def stage1(a: torch.Tensor, width: int) -> torch.Tensor:
    return band.lower_band(band.reduce_to_band_(a, width), 2 * width)


def queue_seconds(fn, repeats: int) -> float:
    """Median wall time of fn() without waiting for the GPU at the end (the device idle before)."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    torch.cuda.synchronize()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["4096:8", "4096:5", "1536:32", "1024:64"])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--switch", nargs="*", default=[], help="ops.band NAME=VALUE settings")
    args = ap.parse_args()
    cuda_kernels_or_exit("stage1_graph.py")
    switches = {k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in args.switch)}
    print(torch.cuda.get_device_name(), torch.__version__, "switches:", switches or "none", flush=True)
    print("| n x batch | eager ms/matrix | queue only ms/matrix | graph ms/matrix (x eager) | max band difference (rel.) |")
    print("|---|---|---|---|---|")
    with band_switches(switches):
        for case in args.cases:
            n, batch = (int(x) for x in case.split(":"))
            print(run_case(n, batch, args.width, args.repeats), flush=True)
            torch.cuda.empty_cache()


def run_case(n: int, batch: int, width: int, repeats: int) -> str:
    """One table row: eager, queue only, graph replay, and how far the graph's bands are from eager's."""
    cuda = torch.device("cuda")
    g = grams(batch, n, "cuda")
    eager_s, eager_bands = median_timed(lambda: stage1(g.clone(), width), cuda, repeats)
    queue_s = queue_seconds(lambda: stage1(g.clone(), width), repeats)

    static = g.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs asks
        stage1(static.clone(), width)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_bands = stage1(static, width)

    def replay() -> torch.Tensor:
        static.copy_(g)
        graph.replay()
        return graph_bands

    graph_s, got = median_timed(replay, cuda, repeats)
    diff = ((got - eager_bands).abs().max() / eager_bands.abs().max()).item()
    return (f"| {n} x {batch} | {1e3 * eager_s / batch:.2f} | {1e3 * queue_s / batch:.2f} | "
            f"{1e3 * graph_s / batch:.2f} ({eager_s / graph_s:.2f}x) | {diff:.1e} |")

if __name__ == "__main__":
    main()
