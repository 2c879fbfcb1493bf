"""The strategy comparison (device tool): pre-train a small Llama-style model on corpus A, fine-tune it
on corpus B with every targeted-training strategy, and tabulate learning (eval loss on B),
forgetting (eval loss on A), trainable parameters, step time and peak memory.

    python3 bench/strategies.py --out $OUT

Corpora (bench/strategies_corpus.py): A = the Python standard library's code with its docstrings
removed, B = those docstrings; bytes as tokens (vocabulary 256). Model: transformers' Llama, 8
layers, hidden 512, intermediate 1536, 8 heads / 4 kv heads, untied head (about 25M parameters),
float32 weights under bfloat16 autocast on a GPU. Pre-training: --pretrain-steps steps of AdamW on
A. Then, for each strategy and each learning rate of --lrs (the same sweep for all), a fresh copy of
the pre-trained weights is prepared by the strategy and fine-tuned --finetune-steps steps on B with
the same batches (one seed), AdamW (no weight decay), 5% linear warm-up then cosine decay to 10%,
gradient norm clipped at 1. Strategies:

- full: every parameter trains.
- snr25, snr50: spectrum_fast.scan of the pre-trained model, freeze() at top 25% / 50% per type
  (embedding and head train, as in Spectrum's YAML).
- salf25, salf50: strategies.salf on --calibration-batches batches of B, at the candidate-parameter
  fraction snr25 / snr50 trains; the embedding and head train too, as in snr.
- impact25, impact50: strategies.impact (Taylor |g.w| per module) on the same batches, same budgets,
  embedding and head too.
- lowrank: spectrum_fast.decompose(param_budget=0.5, quantize=--quantize) of the blocks' linear layers, then every
  parameter trains with SequentialFreezing switching factors every --finetune-steps / 4 steps.
- components: components.allocate(rank=64, budget=0.25) on the calibration batches, then apply():
  only the allocated singular-direction scales train.
- lora: peft LoRA, r=--lora-rank, alpha=2r, on every linear layer of the blocks.

Per strategy, the learning rate with the lowest eval loss on B is the one in the table; every run is
in the JSON. Results are appended to strategies.jsonl under --out as each run ends (a run cut short
keeps what finished) and the table is written to strategies.md at the end.

Smoke test on a CPU (tests/test_strategies_bench.py runs it):
    python3 bench/strategies.py --device cpu --layers 4 --hidden 32 --intermediate 64 --heads 4 --kv-heads 2 \
        --seq 32 --batch 4 --pretrain-steps 4 --finetune-steps 4 --lrs 1e-3 --eval-windows 4 \
        --calibration-batches 2 --quantize 4 --max-files 40 --out /tmp/strategies-smoke
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run_info import run_info  # noqa: E402
from strategies_corpus import build_corpora, fixed_windows, random_windows  # noqa: E402
from timing import synchronize  # noqa: E402

import spectrum_fast  # noqa: E402
from spectrum_fast import components, strategies  # noqa: E402

STRATEGIES = ("full", "snr25", "snr50", "salf25", "salf50", "impact25", "impact50", "lowrank", "components", "lora")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--pretrain-steps", type=int, default=2000)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--lrs", default="1e-4,3e-4,1e-3", help="the learning-rate sweep every strategy gets")
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--quantize", type=int, default=64, help="rank quantization of the lowrank strategy")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--max-files", type=int, default=None, help="use the first N stdlib files (smoke tests)")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def build_model(args, device: torch.device) -> torch.nn.Module:
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, max_position_embeddings=args.seq,
        tie_word_embeddings=False)
    with device:
        return transformers.LlamaForCausalLM(config)


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def lm_batch(windows: torch.Tensor, device: torch.device) -> dict:
    ids = windows.to(device)
    return {"input_ids": ids, "labels": ids}


@torch.no_grad()
def eval_loss(model, windows: torch.Tensor, batch: int, device: torch.device) -> float:
    model.eval()
    losses = []
    for chunk in windows.split(batch):
        with autocast(device):
            losses.append(float(model(**lm_batch(chunk, device)).loss) * len(chunk))
    model.train()
    return sum(losses) / len(windows)


def lr_at(step: int, steps: int, lr: float) -> float:
    warmup = max(1, steps // 20)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, params: list, data: torch.Tensor, steps: int, lr: float, args, device, seed: int,
          after_step=None) -> dict:
    """AdamW over ``params`` for ``steps`` steps of random windows of ``data`` (seeded: every strategy
    sees the same batches). -> step times (seconds, synchronized per step) and the last loss."""
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    times, loss = [], float("nan")
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        batch = lm_batch(random_windows(data, args.batch, args.seq, generator), device)
        synchronize(device)
        start = time.perf_counter()
        with autocast(device):
            out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step()
        synchronize(device)
        times.append(time.perf_counter() - start)
        loss = float(out.loss.detach())
    return {"step_times": times, "last_loss": loss}


def trainable_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Prepared:
    """A fresh model made ready by one strategy: which parameters the optimizer holds, a hook
    after each optimizer step, and the Selection (or a summary) that says what trains."""

    def __init__(self, model, selection, params=None, after_step=None):
        self.model = model
        self.selection = selection
        self.params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
        self.after_step = after_step


class Strategies:
    """Builds each strategy's model from the pre-trained weights; the costly choices (a scan, SALF,
    impact, an allocation) are made once per strategy and reused for every learning rate."""

    def __init__(self, args, device, pretrained_state: dict, calibration: list[dict]):
        self.args, self.device, self.state, self.calibration = args, device, pretrained_state, calibration
        self.cache: dict = {}
        self.choice_seconds: dict = {}

    def fresh(self):
        model = build_model(self.args, self.device)
        model.load_state_dict(self.state)
        return model

    def _once(self, key, make):
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = make()
            synchronize(self.device)
            self.choice_seconds[key] = time.perf_counter() - start
        return self.cache[key]

    def _scan(self):
        return self._once("scan", lambda: spectrum_fast.scan(self.fresh(), progress=False))

    def _snr_fraction(self, percent: int) -> float:
        """The share of the candidate (scanned) matrices' parameters snr<percent> trains."""
        result = self._scan()
        chosen = set(result.select(percent))
        sizes = {row.name: row.shape[0] * row.shape[1] for row in result.rows}
        return sum(sizes[n] for n in chosen) / sum(sizes.values())

    def choice_time(self, name: str) -> float:
        """Seconds the strategy's choice took (snr's is the scan it shares; full and lora choose nothing)."""
        return self.choice_seconds.get("scan" if name.startswith("snr") else name, 0.0)

    def _embedding_and_head(self) -> list[str]:
        result = self._scan()
        return [f"^{n}$" for n in (result.embedding_name, result.head_name) if n]

    def prepare(self, name: str) -> Prepared:
        model = self.fresh()
        if name == "full":
            return Prepared(model, strategies.trainable_selection(model, strategy="full"))
        if name.startswith("snr"):
            percent = int(name[3:])
            selection = strategies.snr(self._scan(), percent, model=model)
            spectrum_fast.freeze(model, selection)
            return Prepared(model, selection)
        if name.startswith("salf") or name.startswith("impact"):
            kind, percent = ("salf", int(name[4:])) if name.startswith("salf") else ("impact", int(name[6:]))
            budget = self._snr_fraction(percent)
            choose = strategies.salf if kind == "salf" else strategies.impact
            chosen = self._once(name, lambda: choose(self.fresh(), self.calibration, budget=budget))
            # The embedding and head train too, as in Spectrum's YAML: the three rules then differ only in
            # which blocks' matrices they pick, at equal parameter counts.
            spectrum_fast.freeze(model, chosen.patterns + self._embedding_and_head())
            return Prepared(model, strategies.trainable_selection(model, strategy=kind, how=chosen.how))
        if name == "lowrank":
            start = time.perf_counter()
            report = spectrum_fast.decompose(model, param_budget=0.5, quantize=self.args.quantize)
            self.choice_seconds["lowrank"] = time.perf_counter() - start
            params = [p for p in model.parameters() if p.requires_grad]  # the optimizer holds every factor
            freezing = spectrum_fast.SequentialFreezing(model, steps=max(1, self.args.finetune_steps // 4))
            freezing.apply()
            selection = strategies.lowrank_selection(model, report)
            return Prepared(model, selection, params=params, after_step=freezing.step)
        if name == "components":
            allocation = self._once("components", lambda: components.allocate(
                self.fresh(), self.calibration, budget=0.25, rank=64))
            components.apply(model, allocation)
            return Prepared(model, strategies.components_selection(model, allocation))
        if name == "lora":
            import peft

            config = peft.LoraConfig(r=self.args.lora_rank, lora_alpha=2 * self.args.lora_rank, lora_dropout=0.0,
                                     target_modules=LORA_TARGETS)
            model = peft.get_peft_model(model, config)
            return Prepared(model, strategies.trainable_selection(model, strategy="lora"))
        raise SystemExit(f"strategies.py: unknown strategy {name!r}: choose from {', '.join(STRATEGIES)}")


def summary_rows(runs: list[dict], names: list[str]) -> list[dict]:
    """Per strategy, the run whose learning rate gave the lowest eval loss on B."""
    best = []
    for name in names:
        mine = [r for r in runs if r["strategy"] == name]
        if mine:
            best.append(min(mine, key=lambda r: r["eval_b"]))
    return best


def markdown(best: list[dict], before: dict) -> str:
    full = next((r for r in best if r["strategy"] == "full"), None)
    lines = ["| strategy | lr | eval loss B | vs full | eval loss A | trainable | step ms | peak GB | choice s |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| pre-trained, not fine-tuned | - | {before['eval_b']:.4f} | - | {before['eval_a']:.4f} | - | - | - | - |"]
    for r in best:
        vs = f"{100 * (r['eval_b'] / full['eval_b'] - 1):+.1f}%" if full else "-"
        peak = f"{r['peak_gpu_bytes'] / 1e9:.2f}" if r["peak_gpu_bytes"] is not None else "-"
        lines.append(f"| {r['strategy']} | {r['lr']:g} | {r['eval_b']:.4f} | {vs} | {r['eval_a']:.4f} | "
                     f"{r['trainable_params']:,} ({100 * r['trainable_fraction']:.1f}%) | "
                     f"{r['step_ms_median']:.2f} | {peak} | {r['choice_seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    names = [s for s in args.strategies.split(",") if s]
    for name in names:
        if name not in STRATEGIES:
            raise SystemExit(f"strategies.py: unknown strategy {name!r}: choose from {', '.join(STRATEGIES)}")
    lrs = [float(x) for x in args.lrs.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "strategies.jsonl"
    log.write_text("")

    def record(entry: dict) -> None:
        with log.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        print(json.dumps({k: v for k, v in entry.items() if k not in ("selection", "step_times")}), flush=True)

    corpora = build_corpora(max_files=args.max_files)
    record({"run_info": run_info(device), "config": {k: (str(v) if isinstance(v, Path) else v)
                                                     for k, v in vars(args).items()}, "corpora": corpora.source})
    eval_a = fixed_windows(corpora.code.eval, args.eval_windows, args.seq)
    eval_b = fixed_windows(corpora.prose.eval, args.eval_windows, args.seq)

    torch.manual_seed(args.seed)
    model = build_model(args, device)
    total = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    pre = train(model, list(model.parameters()), corpora.code.train, args.pretrain_steps, args.pretrain_lr, args,
                device, seed=args.seed)
    before = {"stage": "pretrained", "params": total, "seconds": time.perf_counter() - start,
              "last_loss": pre["last_loss"], "step_ms_median": 1000 * statistics.median(pre["step_times"]),
              "eval_a": eval_loss(model, eval_a, args.batch, device),
              "eval_b": eval_loss(model, eval_b, args.batch, device)}
    record(before)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    del model

    generator = torch.Generator().manual_seed(args.seed + 1)
    calibration = [lm_batch(random_windows(corpora.prose.train, args.batch, args.seq, generator), device)
                   for _ in range(args.calibration_batches)]
    built = Strategies(args, device, state, calibration)
    runs = []
    for name in names:
        for lr in lrs:
            prepared = built.prepare(name)
            model = prepared.model
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            fit = train(model, prepared.params, corpora.prose.train, args.finetune_steps, lr, args, device,
                        seed=args.seed + 2, after_step=prepared.after_step)
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            selection = prepared.selection
            warm = fit["step_times"][min(10, len(fit["step_times"]) // 2):]
            run = {"strategy": name, "lr": lr, "eval_b": eval_loss(model, eval_b, args.batch, device),
                   "eval_a": eval_loss(model, eval_a, args.batch, device), "last_loss": fit["last_loss"],
                   "trainable_params": selection.trainable_params, "trainable_fraction": selection.fraction,
                   "step_ms_median": 1000 * statistics.median(warm), "peak_gpu_bytes": peak,
                   "choice_seconds": built.choice_time(name),
                   "selection": selection.to_dict(), "step_times": fit["step_times"]}
            runs.append(run)
            record(run)
            del model, prepared
            if device.type == "cuda":
                torch.cuda.empty_cache()

    best = summary_rows(runs, names)
    table = markdown(best, before)
    print(table)
    (args.out / "strategies.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
