"""CI perf check: spectrum_fast's speedup over Spectrum's computation, per shape, against a baseline.

    python bench/check_regression.py --baseline bench/baselines/cpu.json                   # measure, compare
    python bench/check_regression.py --baseline bench/baselines/cpu.json --results shapes_cpu.json
    python bench/check_regression.py --baseline bench/baselines/cpu.json --update --runs 5  # rewrite baseline

Only ratios are compared, never absolute times: per shape, Spectrum's time per matrix (fp32 svdvals,
bench/spectrum_reference.py) over spectrum_fast's, both measured by bench/shapes.py on the same
machine in the same run. A CI box of the baseline's kind may be faster or slower; the ratio between
two computations sharing it moves far less. A shape fails when its speedup falls more than
``tolerance`` (25%) below the baseline's; a shape of the baseline missing from the fresh run fails
too. Gains pass (rewrite the baseline with --update to keep them).

The baseline file says how to measure (its "run": device, shapes, matrices per shape, repeats,
torch threads, clock), so a fresh run repeats the baseline's measurement. When measuring, a shape that
regressed is measured once more (--attempts) and fails only if it regressed every time: a burst of
load from a neighbour on a shared box must not fail CI, a real slowdown shows every time.
--update measures --runs times and records the median speedup per shape as the baseline, with every
run's numbers beside it (the spread).

Exit status: 0 pass, 1 regression (one line per regressed or missing shape), 2 unusable baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

SPECTRUM = "svdvals_fp32"  # the same name as methods.SPECTRUM (not imported: that pulls in torch)
OURS = "spectrum_fast"
DEFAULT_TOLERANCE = 0.25


@dataclass(frozen=True)
class Finding:
    shape: str
    status: str  # "ok", "regressed" or "missing"
    baseline: float
    fresh: float | None

    @property
    def change(self) -> float | None:
        return None if self.fresh is None else self.fresh / self.baseline - 1

    def line(self, tolerance: float) -> str:
        if self.status == "missing":
            return f"MISSING {self.shape}: no spectrum_fast/Spectrum speedup in the fresh run (baseline {self.baseline:.2f}x)"
        word = "REGRESSED" if self.status == "regressed" else "ok"
        return (f"{word} {self.shape}: speedup {self.fresh:.2f}x, baseline {self.baseline:.2f}x "
                f"({self.change:+.1%}, allowed -{tolerance:.0%})")


def speedups(results: dict) -> dict[str, float]:
    """bench/shapes.py results -> {shape: Spectrum's ms per matrix / spectrum_fast's}, where both ran."""
    out = {}
    for shape, entry in results.get("shapes", {}).items():
        ours = entry["methods"].get(OURS, {}).get("ms_per_matrix")
        ref = entry["methods"].get(SPECTRUM, {}).get("ms_per_matrix")
        if ours and ref:
            out[shape] = ref / ours
    return out


def compare(baseline: dict[str, float], fresh: dict[str, float], tolerance: float = DEFAULT_TOLERANCE) -> list[Finding]:
    """One finding per baseline shape; a loss of more than ``tolerance`` (a fraction) regresses."""
    findings = []
    for shape, base in baseline.items():
        now = fresh.get(shape)
        if now is None:
            findings.append(Finding(shape, "missing", base, None))
        else:
            findings.append(Finding(shape, "regressed" if now < base * (1 - tolerance) else "ok", base, now))
    return findings


def failed(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.status != "ok"]


def median_speedups(runs: list[dict[str, float]]) -> dict[str, float]:
    shapes = [s for s in runs[0] if all(s in r for r in runs)]
    return {s: statistics.median(r[s] for r in runs) for s in shapes}


def measure_speedups(run: dict, shapes: list[str] | None = None, out: Path | None = None, label: str = "run") -> dict[str, float]:
    """Run bench/shapes.py's measurement as the baseline's "run" says (Spectrum's computation and
    spectrum_fast only, no float64 truth) -> speedups; the results JSON goes to ``out`` if given."""
    import torch

    import shapes as shape_bench

    if run.get("threads"):
        torch.set_num_threads(run["threads"])
    device = torch.device(run["device"])
    methods = shape_bench.methods_for(device, [OURS, SPECTRUM])
    results = shape_bench.measure(shapes or run["shapes"], device, methods, run["count"], run["repeats"],
                                  accuracy=False, clock=run.get("clock", "wall"))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"check_{label}.json").write_text(json.dumps(results, indent=1))
    return speedups(results)


def check(baseline: dict, fresh: dict[str, float], remeasure, attempts: int) -> list[Finding]:
    """Compare; re-measure the regressed shapes (``remeasure(shapes) -> speedups``) up to
    ``attempts`` times in all, keeping each shape's best speedup: a shape fails only if every
    attempt regressed."""
    tolerance = baseline.get("tolerance", DEFAULT_TOLERANCE)
    best = dict(fresh)
    findings = compare(baseline["speedup"], best, tolerance)
    for _ in range(attempts - 1):
        again = [f.shape for f in findings if f.status == "regressed"]
        if not again:
            break
        print(f"re-measuring {', '.join(again)}", flush=True)
        for shape, value in remeasure(again).items():
            best[shape] = max(value, best.get(shape, value))
        findings = compare(baseline["speedup"], best, tolerance)
    return findings


def update(baseline: dict, runs: list[dict[str, float]], info: dict) -> dict:
    """The baseline rewritten from fresh runs: the median speedup per shape, and every run's."""
    median = median_speedups(runs)
    return {**baseline,
            "measured": info,
            "speedup": {s: round(v, 3) for s, v in median.items()},
            "spread": {s: [round(min(r[s] for r in runs), 3), round(max(r[s] for r in runs), 3)] for s in median},
            "runs": [{s: round(v, 3) for s, v in r.items()} for r in runs]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, type=Path)
    ap.add_argument("--results", nargs="+", type=Path,
                    help="bench/shapes.py JSON of earlier runs instead of measuring (with --update: one run each)")
    ap.add_argument("--update", action="store_true", help="rewrite the baseline from the fresh run(s)")
    ap.add_argument("--runs", type=int, default=5, help="with --update: fresh runs to take the median of")
    ap.add_argument("--attempts", type=int, default=2, help="measurements of a regressed shape before it fails")
    ap.add_argument("--save", type=Path, help="with --update: write the new baseline here, not over --baseline")
    ap.add_argument("--out", type=Path, help="write each fresh run's results JSON into this folder")
    args = ap.parse_args(argv)

    baseline = json.loads(args.baseline.read_text())
    run = baseline["run"]
    if args.update:
        if args.results:
            runs = [speedups(json.loads(p.read_text())) for p in args.results]
            info = {"from_results": [str(p) for p in args.results], **json.loads(args.results[0].read_text())["meta"]}
        else:
            runs = []
            for i in range(args.runs):
                runs.append(measure_speedups(run, out=args.out, label=f"update{i + 1}"))
                print(f"run {i + 1}/{args.runs}: " + ", ".join(f"{s} {v:.2f}x" for s, v in runs[-1].items()), flush=True)
            info = measurement_info(run, args)
        target = args.save or args.baseline
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(update(baseline, runs, info), indent=1) + "\n")
        print(f"wrote {target}")
        return 0

    if not baseline.get("speedup"):
        print(f"{args.baseline} holds no baseline numbers yet; measure them with: {baseline.get('command', '--update')}")
        return 2
    if args.results:
        fresh = median_speedups([speedups(json.loads(p.read_text())) for p in args.results])
        findings = check(baseline, fresh, remeasure=None, attempts=1)
    else:
        attempt = iter(range(2, args.attempts + 1))
        fresh = measure_speedups(run, out=args.out, label="1")
        findings = check(baseline, fresh, lambda shapes: measure_speedups(run, shapes, args.out, str(next(attempt))),
                         args.attempts)
    tolerance = baseline.get("tolerance", DEFAULT_TOLERANCE)
    for f in findings:
        print(f.line(tolerance))
    bad = failed(findings)
    print(f"perf check against {args.baseline}: " + (f"{len(bad)} of {len(findings)} shapes FAILED" if bad else
                                                       f"all {len(findings)} shapes within {tolerance:.0%}"))
    return 1 if bad else 0


def measurement_info(run: dict, args: argparse.Namespace) -> dict:
    import torch

    from run_info import run_info

    info = run_info(torch.device(run["device"]))
    info["runs"] = args.runs
    return info


if __name__ == "__main__":
    sys.exit(main())
