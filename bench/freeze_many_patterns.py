"""freeze() on a model with as many expert modules as DeepSeek-V2 (59 layers x 160 experts x 3
projections, unfused, tiny weights) and half of them selected: its pattern lookup against the
quadratic way it replaced (re.match of every pattern against every parameter name), same run,
same selection checked.

    python3 bench/freeze_many_patterns.py [--layers 59] [--experts 160]
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import spectrum_fast  # noqa: E402
from run_info import run_info  # noqa: E402


def moe_skeleton(layers: int, experts: int) -> torch.nn.Module:
    def expert() -> torch.nn.Module:
        module = torch.nn.Module()
        for proj in ("gate_proj", "up_proj", "down_proj"):
            setattr(module, proj, torch.nn.Linear(1, 1, bias=False))
        return module

    blocks = torch.nn.ModuleList()
    for _ in range(layers):
        block, mlp = torch.nn.Module(), torch.nn.Module()
        mlp.experts = torch.nn.ModuleList(expert() for _ in range(experts))
        block.mlp = mlp
        blocks.append(block)
    model, inner = torch.nn.Module(), torch.nn.Module()
    inner.layers = blocks
    model.model = inner
    return model


def quadratic_selection(model: torch.nn.Module, patterns: list[str]) -> set[str]:
    compiled = [re.compile(p.replace(".", "\\.")) for p in patterns]
    return {name for name, _ in model.named_parameters() if any(c.match(name) for c in compiled)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=59)
    ap.add_argument("--experts", type=int, default=160)
    args = ap.parse_args()
    print(run_info(torch.device("cpu")), flush=True)
    model = moe_skeleton(args.layers, args.experts)
    modules = [n.removesuffix(".weight") for n, _ in model.named_parameters()]
    patterns = random.Random(0).sample(modules, len(modules) // 2)
    start = time.perf_counter()
    report = spectrum_fast.freeze(model, patterns)
    lookup_s = time.perf_counter() - start
    start = time.perf_counter()
    quadratic = quadratic_selection(model, patterns)
    quadratic_s = time.perf_counter() - start
    same = set(report.trainable_tensors) == quadratic
    print(f"{len(modules)} parameters, {len(patterns)} patterns: freeze() {lookup_s:.2f} s; every pattern against "
          f"every name {quadratic_s:.1f} s; same selection: {same}")


if __name__ == "__main__":
    main()
