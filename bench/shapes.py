"""Per-shape benchmark: time per matrix of spectrum_fast and of the SVD / eigen alternatives, and the
SNR error of each against float64, on trained-looking bf16 weights already on the device.

    python bench/shapes.py [--device cuda|cpu] [--shapes 4096x4096 1024x4096 ...] [--quick]
                           [--count 3] [--repeats 5] [--methods NAME ...] [--threads N]
                           [--clock wall|cpu] [--no-accuracy] [--out DIR]

Methods (bench/methods.py), each from the same bf16 weights to one SNR per matrix:
- spectrum_fast: ``spectrum_fast.scan`` on a dict of the device tensors, exact defaults (float64
  Gram, eigen route "auto", statistics). The product is scan(), not the bare ops: scan adds the
  batch copy, the finiteness check and, on CUDA, the overlap of GPU band reductions with host band
  solves; reading files is left out here (bench/gpu_scan_vs_spectrum.py times a scan from disk).
  With only --count matrices per shape there is little to overlap, so a whole-model scan moves
  faster per matrix than this.
- svdvals_fp32: Spectrum's computation (bench/spectrum_reference.py: fp32 svdvals with the default
  driver, then its statistics), one matrix at a time. Every speedup is against this one.
- svdvals_fp32_gesvd, svdvals_fp32_gesvda: the same with those cuSOLVER drivers (CUDA only).
- svd_full_fp32: torch.linalg.svd(full_matrices=True) in fp32, Spectrum's statistics on its S.
- gram_eigvalsh_fp32: fp32 Gram (TF32 off, spectrum_fast.ops.gram) + fp32 torch.linalg.eigvalsh.
The fp32 copies the SVDs take are made before timing (the reference script holds its model in fp32).

Weights: --count per shape from workloads.trained_like, generated on the device at each run with
seeds fixed by shape and index. Each method runs once untimed on one matrix (warm-up: CUDA context,
solver handles, thread pools). Then each repeat runs every method once over the shape's matrices,
the methods interleaved so that a slow spell of a shared machine hits all of them alike; time per
matrix = median over --repeats of (repeat time / count), with the device synchronized around each
timed call. --clock cpu times CPU seconds instead of wall seconds (bench/timing.py: for
single-threaded CPU runs on a shared machine, as CI's perf check does). The SNR error is the largest |snr - truth| / truth over the shape's matrices, truth
from tests/float64_reference.py (float64 svdvals of the same bf16 weights, on the device).

Prints a table and writes <out>/shapes_<device type>.json (rewritten after each shape, so a run
cut short keeps what it measured), with the date, device, torch version, commit
(SPECTRUM_FAST_COMMIT or git) and command line.

On CPU the default shapes are the ones with a short side of at most 1536 (the others take minutes
per matrix on a few cores); --shapes takes any. On an H100 the two 8192-wide shapes take minutes
each with every method: give them their own command where a command's time is limited.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH.parent))

from float64_reference import reference_stats  # noqa: E402
from methods import METHODS, SPECTRUM, Method  # noqa: E402
from run_info import run_info  # noqa: E402
from timing import timed  # noqa: E402
from workloads import kind_of, trained_like  # noqa: E402

DEFAULT_SHAPES = ["1024x4096", "4096x4096", "14336x4096", "4096x14336", "1536x5120", "5120x1536",
                  "8192x8192", "28672x8192"]
CPU_MAX_SHORT_SIDE = 1536
# The small CPU set (CI's perf check uses it, bench/baselines/cpu.json): wide, tall and square, each
# matrix a few ms to ~150 ms at one thread on the CI box, so a repeat is long against timer and
# scheduler noise while the whole set stays at a few seconds per repeat.
QUICK_SHAPES = ["256x1024", "1024x256", "512x512", "512x2048", "2048x512", "1024x1024"]


def parse_shape(text: str) -> tuple[int, int]:
    n, _, m = text.lower().partition("x")
    if not (n.isdigit() and m.isdigit()):
        raise argparse.ArgumentTypeError(f"shape {text!r} is not NxM (e.g. 4096x14336)")
    return int(n), int(m)


def shape_list(items: Iterable[str]) -> list[str]:
    """'--shapes 1024x4096,4096x4096 512x512' -> normalized 'NxM' strings, in order."""
    out = []
    for item in items:
        for part in filter(None, item.split(",")):
            n, m = parse_shape(part)
            out.append(f"{n}x{m}")
    return out


def default_shapes(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return list(DEFAULT_SHAPES)
    return [s for s in DEFAULT_SHAPES if min(parse_shape(s)) <= CPU_MAX_SHORT_SIDE]


def methods_for(device: torch.device, names: Iterable[str] | None = None) -> list[Method]:
    chosen = [METHODS[n] for n in (names or METHODS)]
    return [m for m in chosen if device.type == "cuda" or not m.cuda_only]


def seeded_weights(n: int, m: int, count: int, device: torch.device) -> list[torch.Tensor]:
    # Fixed seeds per shape and index: every run, on every machine, times the same matrices.
    return [trained_like(n, m, seed=n * 7919 + m * 31 + i, kind=kind_of(i), device=str(device)) for i in range(count)]


def max_relative_error(snrs: list[float], truth: list[float]) -> float:
    return max(abs(s - t) / abs(t) for s, t in zip(snrs, truth))


def measure_shape(n: int, m: int, device: torch.device, methods: list[Method], count: int, repeats: int,
                  accuracy: bool = True, clock: str = "wall") -> dict:
    """Time every method on ``count`` n x m matrices; -> the shape's entry of the results JSON."""
    weights = seeded_weights(n, m, count, device)
    prepared: dict[Callable, object] = {}  # one fp32 copy of the weights, shared by the SVD methods
    inputs, errors = {}, {}
    for method in methods:
        try:
            if method.prepare not in prepared:
                prepared[method.prepare] = method.prepare(weights)
            method.run(method.prepare(weights[:1]))  # warm-up, untimed
            inputs[method.name] = prepared[method.prepare]
        except RuntimeError as exc:  # a driver that refuses the shape, or out of memory
            errors[method.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    per_matrix_s: dict[str, list[float]] = {name: [] for name in inputs}
    snrs: dict[str, list[float]] = {}
    for _ in range(repeats):
        for method in methods:
            if method.name not in inputs:
                continue
            try:
                seconds, snrs[method.name] = timed(lambda: method.run(inputs[method.name]), device, clock)
            except RuntimeError as exc:
                errors[method.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                del inputs[method.name]
                continue
            per_matrix_s[method.name].append(seconds / count)
    truth = [reference_stats(w.double())["snr"] for w in weights] if accuracy else None
    entry: dict = {"n": n, "m": m, "count": count, "methods": {}}
    for method in methods:
        if method.name in errors:
            entry["methods"][method.name] = {"error": errors[method.name]}
            continue
        runs = per_matrix_s[method.name]
        entry["methods"][method.name] = {
            "ms_per_matrix": 1e3 * statistics.median(runs),
            "runs_ms": [1e3 * s for s in runs],
            "max_rel_err": max_relative_error(snrs[method.name], truth) if truth else None,
        }
    entry["speedup"] = speedups_against_spectrum(entry["methods"])
    del weights, prepared, inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry


def speedups_against_spectrum(methods: dict) -> dict[str, float]:
    """Spectrum's time per matrix / each method's, for the methods that ran (empty without Spectrum's)."""
    ref = methods.get(SPECTRUM, {}).get("ms_per_matrix")
    if ref is None:
        return {}
    return {name: ref / r["ms_per_matrix"] for name, r in methods.items() if "ms_per_matrix" in r}


def measure(shapes: list[str], device: torch.device, methods: list[Method], count: int, repeats: int,
            accuracy: bool = True, clock: str = "wall", on_shape: Callable[[dict], None] | None = None) -> dict:
    """All shapes -> the results JSON ({"meta": ..., "shapes": {"NxM": entry}}); ``on_shape(results)``
    after each shape."""
    results = {"meta": {**run_info(device), "count": count, "repeats": repeats,
                        "methods": [m.name for m in methods], "accuracy": accuracy, "clock": clock},
               "shapes": {}}
    for shape in shapes:
        n, m = parse_shape(shape)
        results["shapes"][shape] = measure_shape(n, m, device, methods, count, repeats, accuracy, clock)
        if on_shape is not None:
            on_shape(results)
    return results


def table(results: dict) -> str:
    lines = ["| shape | method | ms per matrix | speedup vs Spectrum | max SNR error |", "|---|---|---|---|---|"]
    for shape, entry in results["shapes"].items():
        for name, r in entry["methods"].items():
            if "error" in r:
                lines.append(f"| {shape} | {name} | {r['error']} | | |")
                continue
            err = "-" if r["max_rel_err"] is None else f"{r['max_rel_err']:.1e}"
            speedup = entry["speedup"].get(name)
            lines.append(f"| {shape} | {name} | {r['ms_per_matrix']:.1f} | "
                         f"{'-' if speedup is None else f'{speedup:.2f}x'} | {err} |")
    return "\n".join(lines)


def shape_summary(shape: str, entry: dict) -> str:
    parts = [f"{name} {r['ms_per_matrix']:.1f} ms" if "ms_per_matrix" in r else f"{name} failed"
             for name, r in entry["methods"].items()]
    return f"{shape}: " + ", ".join(parts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", nargs="+", help="NxM shapes, space or comma separated")
    ap.add_argument("--quick", action="store_true", help=f"the small CPU set: {' '.join(QUICK_SHAPES)}")
    ap.add_argument("--count", type=int, default=3, help="matrices per shape")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), help="default: all that run on the device")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: CPU seconds of this process (single-threaded CPU runs on a shared machine)")
    ap.add_argument("--no-accuracy", action="store_true", help="skip the float64 truth (timing only)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type == "cuda":
        ap.error("--clock cpu does not see GPU work: time CUDA runs on the wall clock")
    shapes = shape_list(args.shapes) if args.shapes else (QUICK_SHAPES if args.quick else default_shapes(device))
    methods = methods_for(device, args.methods)
    out = Path(args.out) / f"shapes_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(results: dict) -> None:
        shape = next(reversed(results["shapes"]))
        print(shape_summary(shape, results["shapes"][shape]), flush=True)
        out.write_text(json.dumps(results, indent=1))

    meta = run_info(device)
    print(f"{meta['date']}, {meta['device']}, torch {meta['torch']}, {meta['threads']} threads, commit "
          f"{meta['commit']}; {args.count} matrices per shape, median of {args.repeats}, {args.clock} clock", flush=True)
    results = measure(shapes, device, methods, args.count, args.repeats, not args.no_accuracy, args.clock, on_shape=save)
    print(table(results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
