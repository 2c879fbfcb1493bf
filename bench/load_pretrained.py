"""GPU benchmark (device tool): spectrum_fast.load_pretrained against transformers' from_pretrained
followed by a separate scan, and against Spectrum's way (the model loaded in float32, svdvals per
matrix), on a Llama-3-8B-shaped checkpoint (bench/workloads.py: 32 layers of trained-looking
matrices plus embedding, head and norms, bf16, 16 GB), in the page cache (written just before).

    python3 bench/load_pretrained.py --folder /tmp/llama3-8b-model --out $OUT

Each phase runs in its own process (GPU peaks and caches do not carry over):
- plain: from_pretrained(dtype=bf16, device_map={"": 0}) timed, then scan(model) on it (the
  scan's compute alone: the weights are already on the GPU), its selection at --top-percent;
- fused: load_pretrained(top_percent) timed, its peak GPU memory (max_memory_allocated) against
  the bf16 model's bytes, its selection;
- spectrum: from_pretrained(dtype=float32, device_map={"": 0}) timed, then Spectrum's computation
  (bench/spectrum_reference.py: svdvals + statistics) on --spectrum-layers layers' matrices,
  timed and scaled to all layers.
The issue's bounds: fused peak <= bf16 model + 1.5 GB; fused time <= 1.2 x (plain load + scan
compute); fused selection == plain scan's selection.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run_info import run_info  # noqa: E402
from timing import timed  # noqa: E402

GPU = torch.device("cuda")


def model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def phase_plain(folder: Path, top_percent: float) -> dict:
    import transformers

    import spectrum_fast

    load_s, model = timed(lambda: transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, device_map={"": 0}), GPU)
    scan_s, result = timed(lambda: spectrum_fast.scan(model, progress=False, model_name="synthetic/llama3-8b-shaped",
                                                      cache=False), GPU)
    return {"load_s": load_s, "scan_s": scan_s, "model_bytes": model_bytes(model),
            "peak_gpu_bytes": torch.cuda.max_memory_allocated(), "selection": sorted(result.select(top_percent))}


def phase_fused(folder: Path, top_percent: float) -> dict:
    import spectrum_fast

    seconds, (model, result, report) = timed(lambda: spectrum_fast.load_pretrained(
        folder, top_percent=top_percent, return_scan=True, scan_options={"progress": False, "cache": False}), GPU)
    return {"load_pretrained_s": seconds, "model_bytes": model_bytes(model),
            "peak_gpu_bytes": torch.cuda.max_memory_allocated(), "scan_peak_gpu_bytes": result.peak_gpu_bytes,
            "trainable": report.trainable, "total": report.total, "selection": sorted(result.select(top_percent))}


def phase_spectrum(folder: Path, layers: int) -> dict:
    import transformers
    from spectrum_reference import spectrum_snr

    load_s, model = timed(lambda: transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, device_map={"": 0}), GPU)
    total_layers = model.config.num_hidden_layers
    weights = [m.weight for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and any(f".layers.{i}." in name for i in range(layers))]
    svd_s, _ = timed(lambda: [spectrum_snr(w.detach()) for w in weights], GPU)
    return {"fp32_load_s": load_s, "svdvals_s_timed": svd_s, "layers_timed": layers, "matrices_timed": len(weights),
            "svdvals_s_scaled": svd_s * total_layers / layers, "peak_gpu_bytes": torch.cuda.max_memory_allocated()}


def run_phase(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--folder", str(args.folder), "--top-percent",
           str(args.top_percent), "--spectrum-layers", str(args.spectrum_layers)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", type=Path, default=Path("/tmp/llama3-8b-model"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    ap.add_argument("--top-percent", type=float, default=50.0)
    ap.add_argument("--spectrum-layers", type=int, default=4)
    ap.add_argument("--phase", choices=["plain", "fused", "spectrum"], default=None)
    args = ap.parse_args()
    if args.phase == "plain":
        print(json.dumps(phase_plain(args.folder, args.top_percent)))
        return
    if args.phase == "fused":
        print(json.dumps(phase_fused(args.folder, args.top_percent)))
        return
    if args.phase == "spectrum":
        print(json.dumps(phase_spectrum(args.folder, args.spectrum_layers)))
        return

    info = run_info(torch.device("cuda"))
    print(info, flush=True)
    if not (args.folder / "config.json").exists():
        from workloads import write_llama3_8b_model

        t = time.perf_counter()
        size = write_llama3_8b_model(args.folder)
        print(f"wrote {size / 2**30:.1f} GiB in {time.perf_counter() - t:.0f} s", flush=True)
    results = {"run": info}
    for name in ("plain", "fused", "spectrum", "plain", "fused"):  # the first two again: warm processes, same cache
        got = run_phase(name, args)
        results.setdefault(name, []).append(got)
        print(name, {k: v for k, v in got.items() if k != "selection"}, flush=True)
    plain, fused, spectrum = results["plain"][-1], results["fused"][-1], results["spectrum"][-1]
    identical = fused["selection"] == plain["selection"]
    gib = 2**30
    bound_s = 1.2 * (plain["load_s"] + plain["scan_s"])
    lines = [
        "| way | seconds | peak GPU GiB |",
        "|---|---|---|",
        f"| from_pretrained bf16 + scan(model) | {plain['load_s']:.1f} + {plain['scan_s']:.1f} | "
        f"{plain['peak_gpu_bytes'] / gib:.2f} |",
        f"| load_pretrained (one read) | {fused['load_pretrained_s']:.1f} | {fused['peak_gpu_bytes'] / gib:.2f} |",
        f"| Spectrum's way: fp32 load + svdvals (timed on {spectrum['layers_timed']} layers, scaled) | "
        f"{spectrum['fp32_load_s']:.1f} + {spectrum['svdvals_s_scaled']:.1f} | {spectrum['peak_gpu_bytes'] / gib:.2f} |",
        "",
        f"bf16 model: {fused['model_bytes'] / gib:.2f} GiB; load_pretrained peak - model = "
        f"{(fused['peak_gpu_bytes'] - fused['model_bytes']) / gib:.2f} GiB (bound 1.5 GB = 1.40 GiB); "
        f"time {fused['load_pretrained_s']:.1f} s against the bound 1.2 x (load + scan) = {bound_s:.1f} s; "
        f"selection identical to the separate scan: {identical} "
        f"({len(fused['selection'])} modules); trainable {fused['trainable'] / fused['total']:.1%}",
    ]
    print("\n".join(lines))
    for rows in results.values():
        if isinstance(rows, list):
            for r in rows:
                r.pop("selection", None)
    results["selection_identical"] = identical
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load_pretrained.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
