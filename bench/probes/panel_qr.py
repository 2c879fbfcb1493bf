"""Probe (device tool): does the compiled batched panel QR (csrc/householder_panels.cu) speed up
stage 1 of the exact eigen route (ops.band.reduce_to_band_), and the route as a whole?

Per case n:width:batch, float64 Grams of spiked random weights, median of --repeats after a
warm-up, device synchronized:
- the panel QR alone on the first (largest) panel: torch.geqrf against _C.householder_panels_;
- stage 1 (dense -> band) with each (ops.band.PANEL_KERNEL off / on);
- the whole two_stage_gpu route with each, and torch.linalg.eigvalsh (cuSOLVER syevd) for scale;
- the largest eigenvalue difference against syevd's, relative to the largest eigenvalue.
With --scan-moe-layers / --scan-llama-layers: whole scans (DeepSeek-V2 MoE layers generated as a
checkpoint's tensors; Llama-3-8B layers already on the GPU), PANEL_KERNEL off and on alternating,
--rounds times, after a warm-up of each.
Needs the extension built with CUDA first: `pip install --no-build-isolation -e .`.

    python bench/probes/panel_qr.py [--cases 1024:32:64 4096:32:8 ...] [--repeats 3]
    python bench/probes/panel_qr.py --cases --scan-moe-layers 4 --scan-llama-layers 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spectrum_fast.ops import band, eigen  # noqa: E402
from eigen_engine import grams  # noqa: E402
from run_info import cuda_kernels_or_exit  # noqa: E402
from timing import median_timed  # noqa: E402

CUDA = torch.device("cuda")
CASES = ("1024:32:64", "2048:32:32", "4096:32:8", "4096:32:32", "4096:16:8", "8192:32:2")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scan-moe-layers", type=int, default=0)
    ap.add_argument("--scan-llama-layers", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    ext = cuda_kernels_or_exit("panel_qr.py")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    print("| n | width | batch | panel QR torch / kernel ms | stage 1 torch / kernel ms per matrix | "
          "two_stage_gpu torch / kernel ms per matrix | syevd ms per matrix | max eig diff (kernel route) |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        n, width, batch = (int(x) for x in case.split(":"))
        g = grams(batch, n, "cuda")
        truth = torch.linalg.eigvalsh(g)
        panel = g[:, width:, :width]
        qr_torch = median_timed(lambda: torch.geqrf(panel), CUDA, args.repeats)[0]
        qr_kernel = median_timed(lambda: ext.householder_panels_(panel.clone(memory_format=torch.contiguous_format)), CUDA, args.repeats)[0]
        stage1, route = {}, {}
        eigen.GPU_BANDWIDTH = width
        for on in (False, True):
            band.PANEL_KERNEL = on
            stage1[on] = median_timed(lambda: band.reduce_to_band_(g.clone(), width), CUDA, args.repeats)[0] / batch
            route[on] = median_timed(lambda: eigen.eigvalsh_deferred(g.clone(), "two_stage_gpu").result(), CUDA, args.repeats)[0] / batch
        got = eigen.eigvalsh_deferred(g.clone(), "two_stage_gpu").result()
        diff = ((got - truth.cpu()).abs().max() / truth.abs().max().cpu()).item()
        syevd = median_timed(lambda: torch.linalg.eigvalsh(g[: min(batch, 8)]), CUDA, args.repeats)[0] / min(batch, 8)
        print(f"| {n} | {width} | {batch} | {qr_torch * 1e3:.2f} / {qr_kernel * 1e3:.2f} | "
              f"{stage1[False] * 1e3:.2f} / {stage1[True] * 1e3:.2f} | {route[False] * 1e3:.2f} / {route[True] * 1e3:.2f} | "
              f"{syevd * 1e3:.2f} | {diff:.1e} |", flush=True)
        g = truth = panel = None  # freed before the next case allocates
        torch.cuda.empty_cache()
    scans(args)


def scans(args) -> None:
    import spectrum_fast
    from workloads import GeneratedSource, deepseek_v2_moe_layout, llama3_8b_layer

    sources = {}
    if args.scan_moe_layers:
        sources["deepseek-v2-moe"] = lambda: GeneratedSource(deepseek_v2_moe_layout(args.scan_moe_layers), "moe")
    if args.scan_llama_layers:
        resident = {}
        for layer in range(args.scan_llama_layers):
            resident.update(llama3_8b_layer(layer))
        sources["llama3-8b on the GPU"] = lambda: resident
    for label, make in sources.items():
        times: dict[bool, list[float]] = {False: [], True: []}
        snr: dict[bool, dict[str, float]] = {}
        for r in range(args.rounds + 1):  # round 0 warms up
            for on in (False, True):
                band.PANEL_KERNEL = on
                torch.cuda.synchronize()
                t = time.perf_counter()
                result = spectrum_fast.scan(make(), device="cuda", progress=False, cache=False)
                seconds = time.perf_counter() - t
                if r:
                    times[on].append(seconds)
                snr[on] = {row.name: row.snr for row in result.rows}
        diff = max(abs(snr[True][k] - v) / abs(v) for k, v in snr[False].items())
        print(f"{label}, {len(snr[False])} matrices: PANEL_KERNEL off {', '.join(f'{t:.2f}' for t in times[False])} s, "
              f"on {', '.join(f'{t:.2f}' for t in times[True])} s; max rel SNR diff {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
