"""GPU benchmark (device tool): the models too big for the device's disk, generated on the GPU tensor
by tensor while the scan reads them (bench/workloads.py GeneratedSource), against Spectrum's
computation on a sample, same run.

    python bench/gpu_workloads.py --out $OUT [--llama-layers 8] [--moe-layers 6] [--moe-sample 300]

- llama3-70b (80 layers of 8192-wide attention and 28672x8192 MLP): peak GPU memory of the scan
  and time per layer; Spectrum's computation timed on layer 0's seven matrices.
- deepseek-v2-moe (59 MoE layers x 160 experts x gate/up 1536x5120, down 5120x1536): time per
  matrix; Spectrum's computation on an evenly spread sample of matrices.
The weights are generated on the GPU in blocks of rows and handed to the scan in host memory, as a
checkpoint's tensors are (so the scan runs its file path: pinned staging, memory planner). The
scan's time includes that generation, in its reader thread; the generation alone is timed too.
Then the first --resident-layers layers' weights are put on the GPU first and scanned from there
(compute alone, the way Spectrum's computation is timed: its weights are on its GPUs), per matrix.
SNR errors against float64 on a sample.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import spectrum_fast  # noqa: E402
from float64_reference import reference_stats  # noqa: E402
from spectrum_reference import spectrum_snr  # noqa: E402
from workloads import GeneratedSource, deepseek_v2_moe_layout, llama3_70b_layout  # noqa: E402
from run_info import git_commit  # noqa: E402




def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


def run_workload(label: str, src: GeneratedSource, sample: list, truth_sample: list, resident_layers: int,
                 budget: dict) -> dict:
    """``budget``: keyword arguments for spectrum_fast.scan ({} or {"max_gpu_memory": bytes})."""
    infos = src.tensors()
    def generate_all():  # generation alone: every tensor once, none kept
        for info in infos:
            src.read(info)

    _, gen_s = timed(generate_all)
    torch.cuda.empty_cache()
    r, scan_s = timed(lambda: spectrum_fast.scan(src, device="cuda", progress=False, cache=False, **budget))
    res = {"matrices": len(r.rows), "tensors": len(infos), "scan_s": scan_s, "generate_s": gen_s,
           "peak_gpu_bytes": r.peak_gpu_bytes, "peak_host_bytes": r.peak_host_bytes,
           "read_s": r.read_seconds, "compute_s": r.compute_seconds}
    print(label, res, flush=True)
    snr = {row.name: row.snr for row in r.rows}
    del r
    torch.cuda.empty_cache()

    ref_s, ref_snr = 0.0, {}
    for info in sample:
        w = src.read(info).to("cuda", torch.float32)  # the reference holds fp32 weights on its GPUs
        torch.cuda.synchronize()
        t = time.perf_counter()
        ref_snr[info.name] = spectrum_snr(w)  # .item() synchronizes
        ref_s += time.perf_counter() - t
    res["reference_sample"] = len(sample)
    res["reference_s_per_matrix"] = ref_s / len(sample)
    res["scan_s_per_matrix"] = scan_s / res["matrices"]
    res["speedup_per_matrix"] = res["reference_s_per_matrix"] / res["scan_s_per_matrix"]

    if resident_layers > 0:
        first = {f"model.layers.{i}." for i in range(resident_layers)}
        chosen = [i for i in infos if any(i.name.startswith(p) for p in first)]
        resident = {i.name: src.read(i).to("cuda") for i in chosen}
        torch.cuda.empty_cache()
        times = [timed(lambda: spectrum_fast.scan(resident, device="cuda", progress=False, cache=False, **budget))[1] for _ in range(2)]
        del resident
        torch.cuda.empty_cache()
        res["resident_matrices"] = len(chosen)
        res["resident_s_all"] = times
        res["resident_s_per_matrix"] = min(times) / len(chosen)
        res["resident_speedup_per_matrix"] = res["reference_s_per_matrix"] / res["resident_s_per_matrix"]

    acc = []
    for info in truth_sample:
        name = info.name.removesuffix(".weight")
        truth = reference_stats(src.read(info).to("cuda", torch.float64))["snr"]
        row = {"matrix": name, "shape": list(info.shape), "truth": truth,
               "spectrum_fast": abs(snr[name] - truth) / truth}
        if info.name in ref_snr:
            row["spectrum_fp32_svdvals"] = abs(ref_snr[info.name] - truth) / truth
        acc.append(row)
        print(row, flush=True)
    res["accuracy"] = acc
    print(label, {k: v for k, v in res.items() if k != "accuracy"}, flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-layers", type=int, default=8, help="llama3-70b layers scanned (80 in the model)")
    ap.add_argument("--moe-layers", type=int, default=59, help="deepseek-v2-moe MoE layers scanned (59)")
    ap.add_argument("--moe-sample", type=int, default=300, help="matrices timed for Spectrum's computation")
    ap.add_argument("--resident-layers", type=int, default=2,
                    help="layers of each model also scanned with their weights on the GPU first (0: none)")
    ap.add_argument("--max-gpu-memory", type=float, help="GiB, passed to every scan (default: the package's)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    budget = {} if args.max_gpu_memory is None else {"max_gpu_memory": int(args.max_gpu_memory * (1 << 30))}
    res = {"date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "commit": os.environ.get("SPECTRUM_FAST_COMMIT") or git_commit(), "command": " ".join(sys.argv)}

    # One-time process start-up (CUDA context, cuBLAS/cuSOLVER handles, the Triton compiles of the
    # GPU eigen route), paid by the first scan of a process: taken on two small matrices, apart.
    t = time.perf_counter()
    spectrum_fast.scan({f"model.layers.0.mlp.{p}.weight": torch.randn(1024, 4096, device="cuda", dtype=torch.bfloat16)
                        for p in ("up_proj", "down_proj")}, device="cuda", progress=False, cache=False)
    res["process_warmup_s"] = time.perf_counter() - t
    print(f"process warm-up: {res['process_warmup_s']:.1f} s", flush=True)

    llama = GeneratedSource(llama3_70b_layout(args.llama_layers), "synthetic/llama3-70b-shaped")
    layer0 = [i for i in llama.tensors() if i.name.startswith("model.layers.0.")]
    kv = [i for i in layer0 if "k_proj" in i.name or "v_proj" in i.name]
    res["llama3-70b"] = run_workload("llama3-70b", llama, layer0, kv, min(args.resident_layers, args.llama_layers), budget)
    res["llama3-70b"]["layers"] = args.llama_layers
    res["llama3-70b"]["scan_s_per_layer"] = res["llama3-70b"]["scan_s"] / args.llama_layers
    res["llama3-70b"]["reference_s_per_layer"] = res["llama3-70b"]["reference_s_per_matrix"] * len(layer0)

    moe = GeneratedSource(deepseek_v2_moe_layout(args.moe_layers), "synthetic/deepseek-v2-moe-shaped")
    infos = moe.tensors()
    step = max(1, len(infos) // args.moe_sample)
    sample = infos[::step][: args.moe_sample]
    res["deepseek-v2-moe"] = run_workload("deepseek-v2-moe", moe, sample, sample[:6], min(args.resident_layers, args.moe_layers), budget)
    res["deepseek-v2-moe"]["layers"] = args.moe_layers

    print("\n| workload | matrices | scan s (incl. generation) | generation alone s | peak GPU MiB | "
          "s per matrix: ours / Spectrum's | speedup per matrix | weights on the GPU: ms per matrix (speedup) | "
          "max SNR error ours / Spectrum's |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in ("llama3-70b", "deepseek-v2-moe"):
        w = res[label]
        err = max(a["spectrum_fast"] for a in w["accuracy"])
        ref_err = max((a.get("spectrum_fp32_svdvals", 0.0) for a in w["accuracy"]), default=0.0)
        resident = (f"{w['resident_s_per_matrix'] * 1e3:.2f} ({w['resident_speedup_per_matrix']:.1f}x, "
                    f"{w['resident_matrices']} matrices)" if "resident_s_per_matrix" in w else "-")
        print(f"| {label} | {w['matrices']} | {w['scan_s']:.1f} | {w['generate_s']:.1f} | "
              f"{w['peak_gpu_bytes'] / 2**20:.0f} | {w['scan_s_per_matrix'] * 1e3:.2f} ms / "
              f"{w['reference_s_per_matrix'] * 1e3:.1f} ms | {w['speedup_per_matrix']:.1f}x | {resident} | {err:.1e} / {ref_err:.1e} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_workloads.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
