"""GPU benchmark (device tool): the Triton triangle Gram kernel against torch's fp32-output GEMMs.

    python bench/kernels_gram.py --out $OUT

(SPECTRUM_FAST_COMMIT names the commit when the checkout has no .git, as on the device tool.)

For each (B, k, L), input dtype (bf16, fp32) and layout (A contiguous [B, k, L], or the [B, k, L]
view of a contiguous [B, L, k]: what ops.gram passes for a tall W), G = A A^T in fp32 by:
- triton:          spectrum_fast.kernels.gram.gram_fp32_triton(a, poison=False), as ops.gram calls it
- triton_poison:   the same with the NaN-filled output (the default; the fill's cost)
- mm_loop:         torch.mm(x, x.mT, out_dtype=float32) per matrix, then torch.stack: what ops.gram's
                   float32 path does today for bf16 (fp32 inputs: torch.mm in fp32, TF32 off;
                   ops.gram then uses the batched matmul, bmm_fp32)
- bmm_out_fp32:    torch.bmm(a, a.mT, out_dtype=float32) (bf16 only; where this torch has it)
- bmm_fp32:        torch.bmm in fp32, TF32 off (bf16 inputs are upcast inside the timing)
Timing: CUDA events around each call, after warm-up (which includes Triton's autotuning), median
of --reps. TFLOP/s counts the useful flops of a full Gram, 2 k^2 L per matrix, for every method
(the triangle kernel does about half of them). Error: on matrix 0, max |G - G64| / sqrt(G64_ii
G64_jj) against a float64 Gram (that denominator bounds sum |a_i||a_j|); fp32 accumulation of L
terms keeps it below about L 2^-24. Prints a table, writes kernels_gram.json to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spectrum_fast.kernels import gram as kgram  # noqa: E402
from run_info import git_commit  # noqa: E402

SHAPES = [(1, 4096, 4096), (1, 4096, 14336), (8, 1024, 4096), (64, 1536, 5120), (1, 8192, 28672)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
LAYOUTS = ["contiguous", "transposed"]




def make_input(batch: int, k: int, length: int, dtype: torch.dtype, layout: str) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(batch * 7919 + k * 31 + length)
    shape = (batch, length, k) if layout == "transposed" else (batch, k, length)
    x = torch.randn(shape, device="cuda", dtype=dtype, generator=g)
    return x.mT if layout == "transposed" else x


def median_ms(fn, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def methods(a: torch.Tensor) -> dict:
    """name -> callable computing the fp32 Gram of every matrix of a (all return [B, k, k])."""
    out = {
        "triton": lambda: kgram.gram_fp32_triton(a, poison=False),
        "triton_poison": lambda: kgram.gram_fp32_triton(a, poison=True),
    }
    if a.dtype == torch.float32:
        out["mm_loop"] = lambda: torch.stack([torch.mm(x, x.mT) for x in a])
    else:
        out["mm_loop"] = lambda: torch.stack([torch.mm(x, x.mT, out_dtype=torch.float32) for x in a])
        try:
            torch.bmm(a[:1, :8, :8], a[:1, :8, :8].mT, out_dtype=torch.float32)
            out["bmm_out_fp32"] = lambda: torch.bmm(a, a.mT, out_dtype=torch.float32)
        except (TypeError, RuntimeError):
            pass  # this torch has no out_dtype for bmm
    out["bmm_fp32"] = lambda: (lambda a32: torch.bmm(a32, a32.mT))(a.float())
    return out


def max_relative_error(g: torch.Tensor, a: torch.Tensor) -> float:
    a64 = a.double()
    exact = a64 @ a64.mT
    d = exact.diagonal().sqrt()
    return ((g.double() - exact).abs() / (d[:, None] * d[None, :])).max().item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--shapes", default="", help="e.g. 1x4096x4096,8x1024x4096 (default: the five above)")
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES

    # Precision traps (DESIGN.md): TF32 off for every fp32 matmul here.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    import triton

    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": torch.cuda.get_device_name(),
                 "torch": torch.__version__, "triton": triton.__version__,
                 "commit": os.environ.get("SPECTRUM_FAST_COMMIT") or git_commit(), "command": " ".join(sys.argv),
                 "tf32": torch.backends.cuda.matmul.allow_tf32, "reps": args.reps, "rows": []}
    print(f"{res['date']}  {res['gpu']}  torch {res['torch']}  triton {res['triton']}  commit {res['commit']}")
    print(f"command: {res['command']}")
    header = f"{'B x k x L':>16} {'dtype':>5} {'layout':>10} {'method':>14} {'ms':>9} {'TFLOP/s':>8} {'max rel err':>11} {'vs mm_loop':>10}"
    print(header)
    print("-" * len(header))
    for batch, k, length in shapes:
        for dname in args.dtypes.split(","):
            for layout in args.layouts.split(","):
                a = make_input(batch, k, length, DTYPES[dname], layout)
                flops = 2.0 * k * k * length * batch
                rows = []
                for name, fn in methods(a).items():
                    try:
                        ms = median_ms(fn, args.reps, args.warmup)
                        err = max_relative_error(fn()[0], a[0])
                    except torch.cuda.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        ms, err = float("nan"), float("nan")
                    row = {"batch": batch, "k": k, "L": length, "dtype": dname, "layout": layout, "method": name,
                           "ms": ms, "tflops": flops / (ms * 1e-3) / 1e12, "max_rel_err": err,
                           "fp32_bound": length * 2.0**-24}
                    if name.startswith("triton"):  # the config the autotuner picked for this key
                        row["config"] = str(getattr(kgram._gram_autotuned, "best_config", None))
                    rows.append(row)
                    torch.cuda.empty_cache()
                base = next(r["ms"] for r in rows if r["method"] == "mm_loop")
                for row in rows:
                    row["speedup_vs_mm_loop"] = base / row["ms"]
                    print(f"{f'{batch}x{k}x{length}':>16} {dname:>5} {layout:>10} {row['method']:>14} "
                          f"{row['ms']:9.3f} {row['tflops']:8.1f} {row['max_rel_err']:11.2e} "
                          f"{row['speedup_vs_mm_loop']:9.2f}x  {row.get('config', '')}", flush=True)
                res["rows"].extend(rows)
                del a
                torch.cuda.empty_cache()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "kernels_gram.json"
    path.write_text(json.dumps(res, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
