"""GPU benchmark (device tool): a Llama-3-8B-shaped checkpoint on disk, spectrum_fast.scan against
a faithful re-implementation of Spectrum's computation, in the same run.

    python bench/gpu_scan_vs_spectrum.py --folder /tmp/llama3-8b --out $OUT

(SPECTRUM_FAST_COMMIT names the commit when the checkout has no .git, as on the device tool.)

1. writes the synthetic checkpoint (32 layers x 7 matrices, bf16, 15 GB; bench/workloads.py);
2. warms the process up (first scan: CUDA, cuSOLVER, Triton) on layer 0, timed apart;
3. --repeats times, interleaved: the scan's loader alone (read into pinned memory + copy to the
   GPU, no compute) and the exact scan from disk, cold page cache (when /proc/sys/vm/drop_caches
   is writable), then both warm, then the same weights already on the GPU (compute alone);
   medians are compared: scan time against max(read alone, compute alone);
   then once each, warm: cuSOLVER syevd forced, and the float32 option;
4. Spectrum's computation: per layer the weights are loaded to the GPU as float32 (not timed, the
   reference holds the fp32 model on its GPUs), then svdvals + statistics per matrix (timed);
5. SNR error of both against float64 truth (svdvals in float64, gesvd) on a sample of matrices.
Prints a table, writes results JSON.
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

import spectrum_fast  # noqa: E402
from spectrum_reference import spectrum_snr  # noqa: E402
from workloads import LLAMA3_8B, LLAMA3_8B_LAYERS, write_llama3_8b  # noqa: E402
from run_info import git_commit  # noqa: E402


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False




def warm_page_cache(folder: Path) -> None:
    """Read every shard through the page cache, as after a download or a save: cold scans read
    uncached ranges with O_DIRECT, which leaves the cache as it was, so "warm" must be made."""
    for shard in sorted(folder.glob("*.safetensors")):
        with open(shard, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass


def read_alone(folder: Path) -> float:
    """Seconds to read every scanned matrix into pinned host memory and copy it to the GPU with the
    scan's own loader (same batches, same IO threads, same read-ahead), computing nothing."""
    from spectrum_fast import engine
    from spectrum_fast.scan import DEFAULT_MAX_GPU_MEMORY
    from spectrum_fast.sources import open_source
    from spectrum_fast.targets import plan_tasks

    src = open_source(folder)
    tasks, _ = plan_tasks(src.tensors(), "auto", False)
    batches = engine.plan_batches(tasks, engine.gpu_batch_plan(DEFAULT_MAX_GPU_MEMORY))
    device = torch.device("cuda")
    torch.cuda.synchronize()
    t = time.perf_counter()
    for loaded in engine._prefetched(src, batches, device):
        loaded.take()
    torch.cuda.synchronize()
    src.close()
    return time.perf_counter() - t


def truth_snr(w: torch.Tensor) -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from float64_reference import reference_stats

    return reference_stats(w.double())["snr"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/llama3-8b")
    ap.add_argument("--layers", type=int, default=LLAMA3_8B_LAYERS)
    ap.add_argument("--reference-layers", type=int, default=LLAMA3_8B_LAYERS,
                    help="layers timed for Spectrum's computation (all by default)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the read, scan and compute timings")
    ap.add_argument("--extra-routes", nargs="*", default=[], help="eigen routes also timed once, warm (two_stage: host bands only; two_stage_gpu)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    folder = Path(args.folder)
    res: dict = {"date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                 "commit": os.environ.get("SPECTRUM_FAST_COMMIT") or git_commit(), "layers": args.layers, "command": " ".join(sys.argv)}

    t = time.perf_counter()
    res["bytes"] = write_llama3_8b(folder, args.layers)
    res["write_s"] = time.perf_counter() - t
    print(f"wrote {res['bytes'] / 1e9:.1f} GB in {res['write_s']:.1f} s", flush=True)

    # One-time process start-up (CUDA context, cuBLAS/cuSOLVER handles, Triton compiles), paid by
    # the first scan of a process: taken here on one layer's matrices so that the timed scans and
    # "compute alone" below all run in a warm process, and reported on its own.
    from safetensors import safe_open

    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    layer0 = [n for n in index if n.startswith("model.layers.0.")]
    with safe_open(str(folder / index[layer0[0]]), framework="pt", device="cuda") as f:
        warm = {n: f.get_tensor(n) for n in layer0 if n in f.keys()}
    t = time.perf_counter()
    spectrum_fast.scan(warm, device="cuda", progress=False, cache=False)
    torch.cuda.synchronize()
    res["process_warmup_s"] = time.perf_counter() - t
    for route in ("syevd", *args.extra_routes):  # the routes timed once below: their own start-up too
        spectrum_fast.scan(warm, device="cuda", progress=False, cache=False, eigen_route=route)
    print(f"process warm-up (first scan, layer 0 on the GPU): {res['process_warmup_s']:.1f} s", flush=True)
    del warm
    torch.cuda.synchronize()
    # Compute alone: the same weights already on the GPU (a dict of device tensors), no reading.
    from safetensors.torch import load_file

    resident = {}
    for shard in sorted(folder.glob("*.safetensors")):
        resident.update(load_file(str(shard), device="cuda"))

    def one_scan(label: str, source, precision: str = "float64", route: str = "auto") -> None:
        torch.cuda.empty_cache()
        t = time.perf_counter()
        r = spectrum_fast.scan(source, device="cuda", progress=False, cache=False, precision=precision, eigen_route=route)
        torch.cuda.synchronize()
        took = time.perf_counter() - t
        run = runs.setdefault(label, {"all_seconds": [], "matrices": len(r.rows),
                                      "snr": {row.name: row.snr for row in r.rows}})
        run["all_seconds"].append(took)
        run["seconds"] = statistics.median(run["all_seconds"])
        for key, value in (("peak_gpu_bytes", r.peak_gpu_bytes), ("peak_host_bytes", r.peak_host_bytes)):
            if value is not None and not isinstance(source, dict):
                run[key] = max(run.get(key, 0), value)
        run.setdefault("read_s", []).append(r.read_seconds)
        run.setdefault("waited_for_reader_s", []).append(r.read_wait_seconds)
        print(label, f"{took:.2f} s, read {r.read_seconds:.2f} s, waited for reader {r.read_wait_seconds:.2f} s",
              flush=True)

    # The host side (band solves on 16 cores) varies by up to 25% from one scan to the next on this
    # machine (bench/probes/cold_overlap_h100_712be1f.log): repeat, interleaved, and take medians.
    runs: dict = {}
    res["read_alone_cold_all_s"], res["read_alone_warm_all_s"] = [], []
    for _ in range(args.repeats):
        res["cold_cache"] = drop_page_cache()
        res["read_alone_cold_all_s"].append(read_alone(folder))
        drop_page_cache()
        one_scan("exact_cold", folder)
        warm_page_cache(folder)
        res["read_alone_warm_all_s"].append(read_alone(folder))
        one_scan("exact_warm", folder)
        one_scan("exact_gpu_resident", resident)
    res["read_alone_cold_s"] = statistics.median(res["read_alone_cold_all_s"])
    res["read_alone_warm_s"] = statistics.median(res["read_alone_warm_all_s"])
    print("read alone: cold", res["read_alone_cold_all_s"], "warm", res["read_alone_warm_all_s"], flush=True)
    del resident
    warm_page_cache(folder)
    one_scan("exact_syevd_warm", folder, route="syevd")
    one_scan("float32_warm", folder, precision="float32")
    for route in args.extra_routes:  # e.g. two_stage (the host's dsbev for every band)
        one_scan(f"exact_{route}_warm", folder, route=route)
    torch.cuda.empty_cache()
    res["scan"] = runs

    # Spectrum's computation: fp32 weights already on the GPU, svdvals per matrix.
    ref_snr, ref_time, per_shape = {}, 0.0, {}
    for layer in range(args.reference_layers):
        names = [f"model.layers.{layer}.{suffix}.weight" for suffix, _, _ in LLAMA3_8B]
        with safe_open(str(folder / index[names[0]]), framework="pt", device="cuda") as f:
            ws = {n: f.get_tensor(n).float() for n in names}
        for n, w in ws.items():
            torch.cuda.synchronize()
            t = time.perf_counter()
            ref_snr[n[: -len(".weight")]] = spectrum_snr(w)  # .item() synchronizes
            dt = time.perf_counter() - t
            ref_time += dt
            per_shape.setdefault("x".join(map(str, w.shape)), []).append(dt)
        del ws
    scale = args.layers / args.reference_layers
    res["reference"] = {"seconds_measured": ref_time, "layers_measured": args.reference_layers,
                        "seconds_all_layers": ref_time * scale,
                        "per_shape_ms": {k: 1e3 * sum(v) / len(v) for k, v in per_shape.items()}}
    print("reference", {k: v for k, v in res["reference"].items()}, flush=True)

    # Accuracy against float64 truth on a sample: one full layer + the rank-deficient / noise ones.
    sample = [f"model.layers.0.{s}" for s, _, _ in LLAMA3_8B] + ["model.layers.1.mlp.gate_proj",
                                                                 "model.layers.1.self_attn.v_proj"]
    acc = []
    for mod in sample:
        with safe_open(str(folder / index[mod + ".weight"]), framework="pt", device="cuda") as f:
            w = f.get_tensor(mod + ".weight")
        truth = truth_snr(w)
        row = {"matrix": mod, "truth": truth}
        for label in ("exact_cold", "exact_warm", "exact_syevd_warm", "exact_gpu_resident", "float32_warm",
                      *(f"exact_{route}_warm" for route in args.extra_routes)):
            row[label] = abs(runs[label]["snr"][mod] - truth) / truth
        if mod in ref_snr:
            row["spectrum_fp32_svdvals"] = abs(ref_snr[mod] - truth) / truth
        acc.append(row)
        print(row, flush=True)
    res["accuracy"] = acc

    ref_total = res["reference"]["seconds_all_layers"]
    print("\n| run | seconds | vs Spectrum's computation | peak GPU MiB | max rel SNR error vs float64 |")
    print("|---|---|---|---|---|")
    print(f"| Spectrum (fp32 svdvals per matrix, weights on GPU) | {ref_total:.1f} | 1.0x | - | "
          f"{max(a.get('spectrum_fp32_svdvals', 0) for a in acc):.1e} |")
    for label in runs:
        err_key = label
        peak = runs[label].get("peak_gpu_bytes")
        print(f"| spectrum_fast {label} | {runs[label]['seconds']:.1f} | {ref_total / runs[label]['seconds']:.1f}x | "
              f"{peak / 2**20 if peak else float('nan'):.0f} | {max(a[err_key] for a in acc):.1e} |")
    compute = runs["exact_gpu_resident"]["seconds"]
    for label, read in (("exact_cold", res["read_alone_cold_s"]), ("exact_warm", res["read_alone_warm_s"])):
        ratio = runs[label]["seconds"] / max(read, compute)
        res[f"{label}_over_max_read_compute"] = ratio
        print(f"{label}: {runs[label]['seconds']:.1f} s = {ratio:.2f} x max(read alone {read:.1f} s, "
              f"compute alone {compute:.1f} s) (medians of {args.repeats}: "
              f"{', '.join(f'{x:.1f}' for x in runs[label]['all_seconds'])} s against compute alone "
              f"{', '.join(f'{x:.1f}' for x in runs['exact_gpu_resident']['all_seconds'])} s)")
    for r in runs.values():
        r.pop("snr")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_scan_vs_spectrum.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
