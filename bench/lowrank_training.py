"""GPU benchmark (device tool): training step time, peak GPU memory and inference time of a dense
Llama-shaped model against its low-rank decompositions (spectrum_fast.decompose), with and without
SequentialFreezing, per rank choice; and the measured step time per rank of one MLP-shaped
LowRankLinear around a multiple of 64 (rank quantization).

    python3 bench/lowrank_training.py --out $OUT

Default model: a ~1B Llama shape from transformers.LlamaConfig (hidden 2048, intermediate 8192, 16
layers, 32 heads, 8 kv heads, vocab 32000), random weights, bf16 on the GPU. The weights' values do
not change a step's time, so the factors come from svd="randomized" on the GPU (the exact float64 SVD
of 112 matrices per variant would dominate the run) and the energy a rank keeps is not reported.
Variants, each on a freshly built model (the previous one freed), AdamW over every parameter, one
fixed random [--batch, --seq] token batch as input and labels:
- dense;
- decomposed at each of --ranks (one rank for every linear layer of the blocks), and at the rank
  the search picks (spectrum_fast.rank_search.best_rank_near on the MLP shape, from --search-start,
  within --window, quantize --quantize), each trained three ways: every factor trained;
  SequentialFreezing training "first" (second frozen); training "second" (first frozen). A freezing
  schedule spends equal steps in both phases, so its step time is the mean of the two;
Per variant: the median of --repeats training steps after --warmup steps (bench/timing.py), the peak
GPU memory of those steps (max_memory_allocated, reset after the model and optimizer are built and
warmed up, so it holds weights, optimizer states, activations and gradients), and the median
forward-only time (no_grad, eval mode) of the same batch.
Quantization: rank_search.time_per_rank on the MLP up-projection shape (intermediate x hidden) at
--quant-ranks (default 250, 255, 256, 257), forward + backward of the layer alone.

Smoke test on a CPU (tests/test_rank_search.py runs it):
    python3 bench/lowrank_training.py --device cpu --layers 2 --hidden 64 --intermediate 128 --heads 4 \
        --kv-heads 2 --vocab 256 --batch 2 --seq 16 --ranks 8,16 --search-start 12 --window 2 \
        --quantize 8 --quant-ranks 15,16,17 --repeats 2 --warmup 1 --out /tmp/lowrank-smoke
Prints a markdown table and writes lowrank_training.json under --out, run_info first.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run_info import run_info  # noqa: E402
from timing import median_timed, synchronize  # noqa: E402

from spectrum_fast import SequentialFreezing, decompose  # noqa: E402
from spectrum_fast.rank_search import best_rank_near, time_per_rank  # noqa: E402

FREEZING = (None, "first", "second")  # None: every factor trains; else the factor that trains


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default=None, help="bfloat16 on cuda, float32 on cpu unless given")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=8192)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--ranks", default="128,256,384", help="comma-separated ranks, each for every linear layer")
    p.add_argument("--search-start", type=int, default=256, help="theoretical rank the search starts from")
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--quantize", type=int, default=64)
    p.add_argument("--quant-ranks", default="250,255,256,257")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--svd", default=None, help="randomized on cuda, exact on cpu unless given")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def build_model(args, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
        max_position_embeddings=max(args.seq, 128), tie_word_embeddings=False)
    torch.manual_seed(0)
    with device:  # initialised where it runs: a 1B model's init on the host would take longer than its steps
        return transformers.LlamaForCausalLM(config).to(dtype=dtype)


def measure_variant(args, device, dtype, tokens, rank: int | None, trains: str | None) -> dict:
    """One variant on a fresh model: rank None = dense; trains = the factor SequentialFreezing trains."""
    model = build_model(args, device, dtype)
    params_before = sum(p.numel() for p in model.parameters())
    if rank is not None:
        decompose(model, rank=rank, svd=args.svd, seed=0)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)  # over every factor, before any is frozen
    if trains is not None:
        # steps far past the run: the phase does not switch while it is timed
        SequentialFreezing(model, steps=10**9, start=trains).apply()
    model.train()

    def train_step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):  # optimizer states and allocator caches exist before the peak is reset
        train_step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s, _ = median_timed(train_step, device, args.repeats)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    model.eval()

    def forward():
        with torch.no_grad():
            return model(input_ids=tokens).logits

    inference_s, _ = median_timed(forward, device, args.repeats)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"rank": rank, "trains": trains, "step_s": step_s, "peak_gpu_bytes": peak, "inference_s": inference_s,
            "params": params, "dense_params": params_before, "trainable_params": trainable}


def variant_name(rank: int | None, trains: str | None, searched: bool = False) -> str:
    if rank is None:
        return "dense"
    how = "all factors" if trains is None else f"freezing, trains {trains}"
    return f"rank {rank}{' (search)' if searched else ''}, {how}"


def markdown(variants: list[dict], freezing_means: list[dict], dense_step: float) -> str:
    lines = ["| variant | step ms | x dense | peak GB | inference ms | params |", "|---|---|---|---|---|---|"]
    for v in variants:
        peak = f"{v['peak_gpu_bytes'] / 1e9:.2f}" if v["peak_gpu_bytes"] is not None else "-"
        lines.append(f"| {v['name']} | {1000 * v['step_s']:.2f} | {dense_step / v['step_s']:.2f} | {peak} | "
                     f"{1000 * v['inference_s']:.2f} | {v['params']:,} |")
    for f in freezing_means:
        lines.append(f"| rank {f['rank']}, freezing schedule (mean of phases) | {1000 * f['step_s']:.2f} | "
                     f"{dense_step / f['step_s']:.2f} | - | - | - |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    args.svd = args.svd or ("randomized" if device.type == "cuda" else "exact")
    tokens = torch.randint(args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(device)
    batch_tokens = args.batch * args.seq
    result = {"run_info": run_info(device), "config": {k: (str(v) if isinstance(v, Path) else v)
                                                       for k, v in vars(args).items()} | {"dtype": str(dtype)}}

    mlp_shape = (args.intermediate, args.hidden)  # up/gate projection: out x in
    search = best_rank_near(*mlp_shape, args.search_start, window=args.window, quantize=args.quantize,
                            batch_tokens=batch_tokens, device=device, dtype=dtype, repeats=args.repeats,
                            timer=lambda step, dev, repeats, layer: median_timed(step, dev, repeats)[0])
    print(search, flush=True)
    result["rank_search"] = {"shape": list(mlp_shape), "start_rank": search.start_rank, "rank": search.rank,
                             "allowed": list(search.allowed), "seconds": {str(r): s for r, s in search.seconds.items()}}

    quant_ranks = [int(r) for r in args.quant_ranks.split(",")]
    quant = time_per_rank(*mlp_shape, quant_ranks, batch_tokens=batch_tokens, device=device, dtype=dtype,
                          repeats=args.repeats, timer=lambda step, dev, repeats, layer: median_timed(step, dev, repeats)[0])
    result["quantization"] = {"shape": list(mlp_shape), "seconds": {str(r): s for r, s in quant.items()}}
    print("| rank (MLP layer alone) | fwd+bwd ms |\n|---|---|\n" +
          "\n".join(f"| {r} | {1000 * s:.3f} |" for r, s in quant.items()), flush=True)

    ranks = [int(r) for r in args.ranks.split(",")]
    plan = [(None, None, False)] + [(r, t, False) for r in ranks for t in FREEZING]
    if search.rank not in ranks:
        plan += [(search.rank, t, True) for t in FREEZING]
    variants = []
    for rank, trains, searched in plan:
        v = {"name": variant_name(rank, trains, searched)} | measure_variant(args, device, dtype, tokens, rank, trains)
        gc.collect()  # the variant's model and optimizer states go before the next is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        variants.append(v)
        print(f"{v['name']}: step {1000 * v['step_s']:.2f} ms, inference {1000 * v['inference_s']:.2f} ms",
              flush=True)
    freezing_means = [{"rank": r, "step_s": statistics.mean(v["step_s"] for v in variants
                                                            if v["rank"] == r and v["trains"] is not None)}
                      for r in dict.fromkeys(v["rank"] for v in variants if v["rank"] is not None)]
    result["variants"] = variants
    result["freezing_schedule"] = freezing_means
    table = markdown(variants, freezing_means, variants[0]["step_s"])
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lowrank_training.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
