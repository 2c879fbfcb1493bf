"""Probe (device tool): where the exact scan of model-shaped weights already on the GPU spends its
time (bench/gpu_scan_vs_spectrum.py's "compute alone" for --workload llama3-8b, gpu_workloads.py's
"weights on the GPU" for deepseek-v2-moe), and how it moves with the GPU memory budget (batch
sizes) and module switches (--variants).

Weights: generated on the GPU (no disk): --layers of Llama-3-8B (bench/workloads.py's 8B layers,
7 matrices each) or of DeepSeek-V2's MoE layers (480 expert matrices each, generated_like). Per --budgets GiB and
variant: the scan's wall time (median of --repeats after a warm-up, the variants interleaved), the
eigen batches it made (n x batch, route); then, for the first budget and variant, one scan under
torch.profiler: the top --top CUDA kernels by total time, the sum of all kernel time (streams
overlap, so the sum can exceed the wall), and the timeline: how long the GPU ran any kernel, and
each stream's busy time. A variant is "default" (the package as it is) or comma-separated
MODULE.NAME=VALUE settings of spectrum_fast.ops.band, ops.eigen or engine (VALUE a Python literal).

    python bench/probes/scan_profile.py --layers 32 --budgets 1.5 3 \
        --variants default band.STAGE1_IN_CPP=True,band.STAGE1_PANELS_PER_UPDATE=1 eigen.CHASE_POOL_MATRICES=32
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import spectrum_fast  # noqa: E402
from spectrum_fast import engine, ops  # noqa: E402
from spectrum_fast.ops import band, eigen  # noqa: E402
from eigen_engine import module_switches  # noqa: E402
from timing import timed  # noqa: E402
from workloads import deepseek_v2_moe_layout, generated_like, kind_of, llama3_8b_layer  # noqa: E402


def scan_seconds(weights: dict, budget: int) -> float:
    return timed(lambda: spectrum_fast.scan(weights, device="cuda", progress=False, cache=False, max_gpu_memory=budget),
                 torch.device("cuda"))[0]


MODULES = {"band": band, "eigen": eigen, "engine": engine}


def parse_variant(settings: str) -> dict:
    """"default" -> {}; "MODULE.NAME=VALUE,..." -> {module: {NAME: value}} (names checked)."""
    parsed: dict = {}
    for item in [] if settings == "default" else settings.split(","):
        target, value = item.split("=", 1)
        module_name, name = target.strip().split(".", 1)
        module = MODULES[module_name]
        if not hasattr(module, name):
            raise SystemExit(f"scan_profile: {module_name} has no setting {name}")
        parsed.setdefault(module, {})[name] = ast.literal_eval(value.strip())
    return parsed


@contextlib.contextmanager
def variant(settings: str):
    """The variant's settings applied inside the block (eigen_engine.module_switches), restored after it."""
    with contextlib.ExitStack() as stack:
        for module, switches in parse_variant(settings).items():
            stack.enter_context(module_switches(module, switches))
        yield


def model_weights(workload: str, layers: int) -> dict[str, torch.Tensor]:
    """The workload's first ``layers`` layers, bf16 on the GPU."""
    if workload == "llama3-8b":
        weights = {}
        for layer in range(layers):
            weights.update(llama3_8b_layer(layer))
        return weights
    return {name: generated_like(shape, seed=i, kind=kind_of(i))
            for i, (name, shape) in enumerate(deepseek_v2_moe_layout(layers))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=["llama3-8b", "deepseek-v2-moe"], default="llama3-8b")
    ap.add_argument("--layers", type=int, default=32, help="layers scanned (MoE layers for deepseek-v2-moe)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[1.5], help="max_gpu_memory values, GiB")
    ap.add_argument("--variants", nargs="+", default=["default"],
                    help='"default" or MODULE.NAME=VALUE[,MODULE.NAME=VALUE...] (modules: band, eigen, engine)')
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    for v in args.variants:  # a misspelt setting stops here, before the weights are made
        parse_variant(v)
    print(torch.cuda.get_device_name(), torch.__version__, args.workload, args.layers, "layers",
          spectrum_fast.kernels_available(), flush=True)
    weights = model_weights(args.workload, args.layers)
    torch.cuda.synchronize()
    warm_up = dict(list(weights.items())[:7])
    spectrum_fast.scan(warm_up, device="cuda", progress=False, cache=False)  # warm-up: CUDA, cuSOLVER, Triton

    batches: collections.Counter = collections.Counter()
    solve = ops.eigvalsh_deferred

    def counted(g, route="auto"):
        taken = eigen.choose_route(g.shape[-1], g.device, g.dtype) if route == "auto" else route
        batches[(g.shape[-1], g.shape[0], taken)] += 1
        return solve(g, route)

    for gib in args.budgets:
        budget = int(gib * (1 << 30))
        times: dict[str, list[float]] = {v: [] for v in args.variants}
        plans: dict[str, str] = {}
        for _ in range(args.repeats):
            for v in args.variants:
                with variant(v):
                    batches.clear()
                    ops.eigvalsh_deferred = counted
                    try:
                        times[v].append(scan_seconds(weights, budget))
                    finally:
                        ops.eigvalsh_deferred = solve
                    plans[v] = ", ".join(f"{n}x{b} {route} ({count})" for (n, b, route), count in sorted(batches.items()))
        for v in args.variants:
            print(f"budget {gib} GiB, {v}: {statistics.median(times[v]):.2f} s (all "
                  f"{', '.join(f'{x:.2f}' for x in times[v])}); eigen batches n x batch route (count): {plans[v]}",
                  flush=True)

    budget = int(args.budgets[0] * (1 << 30))
    with variant(args.variants[0]), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        wall = scan_seconds(weights, budget)
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in kernels) / 1e6
    print(f"profiled scan at {args.budgets[0]} GiB, {args.variants[0]}: wall {wall:.2f} s (profiler on), "
          f"kernel time summed {total:.2f} s")
    for e in sorted(kernels, key=lambda e: -e.device_time_total)[: args.top]:
        print(f"  {e.device_time_total / 1e6:7.3f} s  {e.count:6d} calls  {e.key[:110]}")
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        timeline(json.loads(trace.read_text()))


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (microseconds in) -> seconds."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total / 1e6


def timeline(trace: dict) -> None:
    kernels = [e for e in trace.get("traceEvents", []) if e.get("cat") == "kernel" and "dur" in e]
    if not kernels:
        print("timeline: no kernel events in the trace")
        return
    span = (max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)) / 1e6
    by_stream = collections.defaultdict(list)
    for e in kernels:
        by_stream[e.get("args", {}).get("stream", e.get("tid"))].append((e["ts"], e["ts"] + e["dur"]))
    every = [iv for ivs in by_stream.values() for iv in ivs]
    print(f"timeline: first kernel to last {span:.2f} s, some kernel running {busy_seconds(every):.2f} s")
    for stream, ivs in sorted(by_stream.items(), key=lambda kv: -busy_seconds(kv[1])):
        print(f"  stream {stream}: busy {busy_seconds(ivs):.2f} s, {len(ivs)} kernels")


if __name__ == "__main__":
    main()
