"""Micro benchmark of stage 2 of the exact eigen route, on a CUDA GPU: the bands that stage 1
(ops.band.reduce_to_band_) leaves, taken to eigenvalues by
- ``bulge_gpu``: the Triton bulge-chasing kernel (spectrum_fast.kernels.bulge, one program per
  matrix, all the batch at once) to tridiagonal, then LAPACK dsterf on the host threads;
- ``all_gpu``: the same chase, then bisection on the GPU (spectrum_fast.kernels.tridiagonal);
- ``dsbev_host``: what the scan does today (ops.band_eigen: LAPACK dsbev on the host threads);
- ``syevd``: cuSOLVER on the dense Gram (torch.linalg.eigvalsh), for scale (on up to 8 of them);
- where spectrum_fast._C has its CUDA kernels: the compiled chase with the sweeps pipelined
  (csrc/bulge_chase.cu), alone and with the GPU bisection, printed under each case's row.
Same bands, same run; time per matrix = wall time of the batch / batch, device synchronized,
median of --repeats after a warm-up (which compiles the kernel). The kernel's part is also timed
alone, and once per --num-warps value (warps per program). A case can take long if the kernel
is slow: give the command a timeout; the JSON is rewritten after each case. Eigenvalues are compared with dsbev's (largest |difference| / largest eigenvalue).

    python bench/kernels_bulge.py --out $OUT [--cases 1024:32:64 4096:16:32 ...] [--repeats 3]

Cases are n:bandwidth:batch. The chase takes about n^2 / (2b) sequential steps of b x b work each,
so on the GPU a wider band may pay where on the host (dsbev, ~n^2 b) it costs: the 4096 cases try
16, 32 and 64. Writes kernels_bulge.json into --out after each case (a run cut short keeps them).
(SPECTRUM_FAST_COMMIT names the commit when the checkout has no .git, as on the device tool.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spectrum_fast import _extension  # noqa: E402
from spectrum_fast.kernels import bulge, tridiagonal  # noqa: E402
from spectrum_fast.ops import band, band_eigen  # noqa: E402
from run_info import git_commit  # noqa: E402
from timing import median_timed  # noqa: E402

DEVICE = "cuda"  # --device cpu runs it under TRITON_INTERPRET=1 on tiny cases, to check the script
DEV = torch.device(DEVICE)


CASES = ("1024:32:64", "1536:32:32", "2048:32:32", "4096:16:8", "4096:16:32", "4096:32:32", "4096:64:32", "4096:16:132")


def grams(batch: int, n: int, seed: int) -> torch.Tensor:
    """[batch, n, n] float64 Grams of trained-looking weights (noise plus n/16 spikes), made 8
    at a time so the weights never all sit on the GPU."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    out = torch.empty(batch, n, n, device=DEVICE, dtype=torch.float64)
    r = max(1, n // 16)
    s = 8.0 * torch.arange(1, r + 1, device=DEVICE, dtype=torch.float64) ** -0.7
    for k in range(0, batch, 8):
        m = min(8, batch - k)
        w = torch.randn(m, n, 2 * n, generator=g, device=DEVICE, dtype=torch.float64) / (2 * n) ** 0.5
        u = torch.linalg.qr(torch.randn(m, n, r, generator=g, device=DEVICE, dtype=torch.float64))[0]
        w[..., :r] += u * s
        torch.matmul(w, w.mT, out=out[k : k + m])
    return out


def dsterf_all(d: np.ndarray, e: np.ndarray, pool: ThreadPoolExecutor) -> np.ndarray:
    from scipy.linalg import lapack

    def one(k):
        w, info = lapack.dsterf(d[k].copy(), e[k].copy())
        if info != 0:
            raise RuntimeError(f"dsterf info={info}")
        return w

    return np.stack(list(pool.map(one, range(d.shape[0]))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=list(CASES), help="n:bandwidth:batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--num-warps", nargs="*", type=int, default=[1, 2, 4],
                    help="warps per program to compare for the chase kernel (CUDA only)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    global DEVICE, DEV
    DEVICE, DEV = args.device, torch.device(args.device)
    res = {"date": time.strftime("%Y-%m-%d"),
           "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (Triton interpreter)", "torch": torch.__version__,
           "commit": os.environ.get("SPECTRUM_FAST_COMMIT") or git_commit(), "command": " ".join(sys.argv),
           "host_workers": band_eigen.host_workers(), "rows": []}
    print(res["gpu"], res["torch"], "host workers", res["host_workers"], flush=True)
    pool = ThreadPoolExecutor(band_eigen.host_workers())
    print("| n | band | batch | bulge kernel ms/matrix | + dsterf (host) ms/matrix | + bisection (GPU) ms/matrix | "
          "dsbev host ms/matrix | syevd ms/matrix | max eig diff vs dsbev: dsterf / bisection |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        n, b, batch = map(int, case.split(":"))
        g = grams(batch, n, seed=n + batch)
        dense_band = band.reduce_to_band_(g.clone(), b)
        rows = band.lower_band(dense_band, b).cpu().numpy()
        bands = band.lower_band(dense_band, 2 * b)  # with room for the bulges
        del dense_band

        kernel_s = median_timed(lambda: bulge.band_to_tridiagonal(bands.clone(), b), DEV, args.repeats)[0]
        by_warps = {w: 1e3 * median_timed(lambda: bulge.band_to_tridiagonal(bands.clone(), b, num_warps=w), DEV, 1)[0] / batch
                    for w in args.num_warps} if DEVICE == "cuda" else {}
        if by_warps:
            print(f"  n={n} b={b} batch={batch}: kernel ms/matrix by warps per program "
                  + ", ".join(f"{w}: {t:.2f}" for w, t in by_warps.items()), flush=True)

        def bulge_route():
            d, e = bulge.band_to_tridiagonal(bands.clone(), b)
            return dsterf_all(d.cpu().numpy(), e.cpu().numpy(), pool)

        def dsbev_route():
            return np.stack(list(pool.map(lambda k: band_eigen.band_eigvalsh(rows[k].copy()), range(batch))))

        def all_gpu_route():
            d, e = bulge.band_to_tridiagonal(bands.clone(), b)
            return tridiagonal.tridiagonal_eigvalsh(d, e)

        compiled = _extension.cuda_ops() if DEVICE == "cuda" else None
        if compiled is not None and b <= compiled.bulge_chase_max_bandwidth():  # csrc/bulge_chase.cu, sweeps pipelined
            def compiled_route():
                return tridiagonal.tridiagonal_eigvalsh(*compiled.band_to_tridiagonal_(bands.clone(), b))

            chase_ms = 1e3 * median_timed(lambda: compiled.band_to_tridiagonal_(bands.clone(), b), DEV, args.repeats)[0] / batch
            route_ms = 1e3 * median_timed(compiled_route, DEV, args.repeats)[0] / batch
            reference = np.sort(dsbev_route(), axis=-1)
            compiled_diff = float(np.abs(compiled_route().cpu().numpy() - reference).max() / np.abs(reference).max())
            res.setdefault("compiled_chase", []).append({"n": n, "bandwidth": b, "batch": batch, "chase_ms": chase_ms,
                                                         "all_gpu_ms": route_ms, "max_eig_diff": compiled_diff})
            print(f"  n={n} b={b} batch={batch}: compiled pipelined chase {chase_ms:.2f} ms/matrix, + bisection "
                  f"{route_ms:.2f} ms/matrix, max eig diff vs dsbev {compiled_diff:.1e}", flush=True)

        bulge_s = median_timed(bulge_route, DEV, args.repeats)[0]
        all_gpu_s = median_timed(all_gpu_route, DEV, args.repeats)[0]
        dsbev_s = median_timed(dsbev_route, DEV, args.repeats)[0]
        few = min(batch, 8)  # syevd for scale only: a few matrices are enough
        syevd_s = median_timed(lambda: torch.linalg.eigvalsh(g[:few]), DEV, args.repeats)[0] * batch / few
        ours, theirs = np.sort(bulge_route(), axis=-1), dsbev_route()
        diff = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        all_gpu = all_gpu_route().cpu().numpy()
        diff_all_gpu = float(np.abs(all_gpu - theirs).max() / np.abs(theirs).max())
        row = {"n": n, "bandwidth": b, "batch": batch, "kernel_ms": 1e3 * kernel_s / batch,
               "bulge_dsterf_ms": 1e3 * bulge_s / batch, "dsbev_host_ms": 1e3 * dsbev_s / batch,
               "kernel_ms_by_num_warps": by_warps, "all_gpu_ms": 1e3 * all_gpu_s / batch, "syevd_ms": 1e3 * syevd_s / batch,
               "max_eig_diff": diff, "max_eig_diff_all_gpu": diff_all_gpu}
        res["rows"].append(row)
        print(f"| {n} | {b} | {batch} | {row['kernel_ms']:.2f} | {row['bulge_dsterf_ms']:.2f} | {row['all_gpu_ms']:.2f} | "
              f"{row['dsbev_host_ms']:.2f} | {row['syevd_ms']:.2f} | {diff:.1e} / {diff_all_gpu:.1e} |", flush=True)
        del g, bands
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "kernels_bulge.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
