"""Micro benchmark of the statistics step ([B, k] Gram eigenvalues -> [B, 7] table), on a CUDA GPU:
the Triton kernel (spectrum_fast.kernels.stats) against snr_statistics_torch on the GPU and the
C++ extension on the CPU (plain torch on the CPU when the extension is not built), same run.

    python bench/kernels_stats.py --out $OUT

Eigenvalues are trained-looking spectra (a noise bulk plus k/16 heavy-tailed spikes, every third
matrix with a rank-deficient bottom third), fixed seeds, float64 and float32. Times are wall
clock with the device synchronized, median of --repeats after one warm-up call (which compiles
the kernel); the CPU backend is timed on eigenvalues already in host memory, and the copy that
would bring them there is timed on its own (d2h). Outputs are compared too: the largest relative
difference of every column against the Triton table, and whether sigma_max, sigma, threshold and
n_signal are bit-identical. Prints a table and writes kernels_stats.json into --out.
(SPECTRUM_FAST_COMMIT names the commit when the checkout has no .git, as on the device tool.)
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

from spectrum_fast import _extension  # noqa: E402
from spectrum_fast.kernels import stats as kernel_stats  # noqa: E402
from spectrum_fast.ops.stats import SpectrumStats, snr_statistics_torch  # noqa: E402
from run_info import git_commit  # noqa: E402

BATCHES = (64, 1024, 28320)  # 28,320 = DeepSeek-V2's expert matrices (DESIGN.md section 4)
KS = (1024, 1536, 4096)
BIT_EXACT = ("sigma_max", "sigma", "threshold", "n_signal")




def trained_like_eigenvalues(batch: int, k: int, device: str, seed: int) -> torch.Tensor:
    """[batch, k] ascending float64 eigenvalues: bulk of random width and scale, k/16 spikes."""
    g = torch.Generator(device=device).manual_seed(seed)
    scale = 10 ** (4 * torch.rand(batch, 1, generator=g, device=device, dtype=torch.float64) - 2)
    width = 0.2 + 1.5 * torch.rand(batch, 1, generator=g, device=device, dtype=torch.float64)
    s = scale * (1 + width * (2 * torch.rand(batch, k, generator=g, device=device, dtype=torch.float64) - 1))
    r = max(1, k // 16)
    c = 2 + 398 * torch.rand(batch, 1, generator=g, device=device, dtype=torch.float64)
    s[:, :r] += scale * c * torch.arange(1, r + 1, device=device, dtype=torch.float64) ** -0.7
    # Jittered off exact squares, as real eigenvalues are (square roots of squares are rounding-easy).
    eig = s**2 * (1 + 1e-9 * torch.rand(batch, k, generator=g, device=device, dtype=torch.float64))
    bottom = k // 3
    eig[2::3, :bottom] = 1e-13 * scale[2::3] ** 2 * (torch.rand(eig[2::3, :bottom].shape, generator=g, device=device,
                                                                dtype=torch.float64) - 0.3)
    return eig.sort(dim=-1).values


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: Triton compile, allocator
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def max_relative_difference(got: torch.Tensor, want: torch.Tensor) -> dict[str, float]:
    """Per column: max |got - want| / |want| (0 where both are 0)."""
    got, want = got.cpu(), want.cpu()
    diff = (got - want).abs()
    rel = torch.where(diff == 0, torch.zeros_like(diff), diff / want.abs())
    return {name: rel[:, j].max().item() for j, name in enumerate(SpectrumStats.FIELDS)}


def bit_exact(got: torch.Tensor, want: torch.Tensor) -> bool:
    cols = [SpectrumStats.FIELDS.index(name) for name in BIT_EXACT]
    return torch.equal(got.cpu()[:, cols], want.cpu()[:, cols])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for kernels_stats.json")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--ks", default=",".join(map(str, KS)))
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--cpu-repeats", type=int, default=5, help="the CPU backend takes up to seconds a call")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run under TRITON_INTERPRET=1")
    args = ap.parse_args()
    device = torch.device(args.device)
    if not kernel_stats.available(device):
        sys.exit(f"the Triton kernel can't run on {device} (needs triton and CUDA, or TRITON_INTERPRET=1 on the CPU)")
    ext = _extension.load()
    cpu_backend = "csrc" if ext is not None else "torch_cpu"

    def cpu_table(eig_cpu: torch.Tensor, n: int, m: int) -> torch.Tensor:
        if ext is not None:
            return ext.snr_statistics(eig_cpu.to(torch.float64).contiguous(), n, m)
        return snr_statistics_torch(eig_cpu, n, m)

    import triton

    res: dict = {"date": time.strftime("%Y-%m-%d"), "commit": os.environ.get("SPECTRUM_FAST_COMMIT") or git_commit(),
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)",
                 "torch": torch.__version__, "triton": triton.__version__, "cpu_threads": torch.get_num_threads(),
                 "cpu_backend": cpu_backend, "repeats": args.repeats, "cpu_repeats": args.cpu_repeats,
                 "command": " ".join(sys.argv), "rows": []}
    print(f"commit {res['commit']}, {res['device']}, torch {res['torch']}, triton {res['triton']}, "
          f"CPU backend {cpu_backend} ({res['cpu_threads']} threads), median of {args.repeats} "
          f"({args.cpu_repeats} on the CPU)", flush=True)
    header = ("| B | k | dtype | triton ms | torch GPU ms | CPU ms | d2h ms | triton vs torch GPU: bit-exact, "
              "max rel | triton vs CPU: bit-exact, max rel |")
    print(header)
    print("|---" * 9 + "|")
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for k in map(int, args.ks.split(",")):
            for batch in map(int, args.batches.split(",")):
                n, m = k, 4 * k  # beta = 1/4, like a k_proj or an expert's gate
                eig = trained_like_eigenvalues(batch, k, args.device, seed=batch + k).to(dtype)
                eig_cpu = eig.cpu()
                triton_table = kernel_stats.snr_statistics_triton(eig, n, m)
                torch_table = snr_statistics_torch(eig, n, m)
                cpu_out = cpu_table(eig_cpu, n, m)
                row = {
                    "batch": batch, "k": k, "dtype": dtype_name,
                    "triton_ms": median_ms(lambda: kernel_stats.snr_statistics_triton(eig, n, m), device, args.repeats),
                    "torch_gpu_ms": median_ms(lambda: snr_statistics_torch(eig, n, m), device, args.repeats),
                    "cpu_ms": median_ms(lambda: cpu_table(eig_cpu, n, m), torch.device("cpu"), args.cpu_repeats),
                    "d2h_ms": median_ms(lambda: eig.cpu(), device, args.repeats),
                    "bit_exact_vs_torch_gpu": bit_exact(triton_table, torch_table),
                    "max_rel_vs_torch_gpu": max_relative_difference(triton_table, torch_table),
                    "bit_exact_vs_cpu": bit_exact(triton_table, cpu_out),
                    "max_rel_vs_cpu": max_relative_difference(triton_table, cpu_out),
                    "nan_in_triton_output": bool(triton_table.isnan().any()),
                }
                res["rows"].append(row)
                print(f"| {batch} | {k} | {dtype_name} | {row['triton_ms']:.3f} | {row['torch_gpu_ms']:.3f} | "
                      f"{row['cpu_ms']:.2f} | {row['d2h_ms']:.2f} | {row['bit_exact_vs_torch_gpu']}, "
                      f"{max(row['max_rel_vs_torch_gpu'].values()):.1e} | {row['bit_exact_vs_cpu']}, "
                      f"{max(row['max_rel_vs_cpu'].values()):.1e} |", flush=True)
                del eig, eig_cpu, triton_table, torch_table, cpu_out
    out = Path(args.out) / "kernels_stats.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
