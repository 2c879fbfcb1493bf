"""Benchmark workloads (../shared/DESIGN.md section 4): shapes and trained-looking synthetic weights.

A synthetic weight is a Gaussian bulk / sqrt(m) plus a low-rank part with heavy-tailed singular
values (k = min/16 spikes, s_i = 8 i^-0.7); every 8th matrix is pure noise and every 11th is
exactly rank-deficient (a third of its rows repeat earlier rows). Fixed seeds.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from pathlib import Path

import torch

from spectrum_fast import TensorInfo, WeightSource

LLAMA3_8B = [  # per layer: (module suffix, n, m) as Hugging Face stores weights [out, in]
    ("self_attn.q_proj", 4096, 4096), ("self_attn.k_proj", 1024, 4096), ("self_attn.v_proj", 1024, 4096),
    ("self_attn.o_proj", 4096, 4096), ("mlp.gate_proj", 14336, 4096), ("mlp.up_proj", 14336, 4096),
    ("mlp.down_proj", 4096, 14336),
]
LLAMA3_8B_LAYERS = 32


def kind_of(index: int) -> str:
    if index % 8 == 7:
        return "noise"
    if index % 11 == 10:
        return "rank_deficient"
    return "spiked"


def trained_like(n: int, m: int, seed: int, kind: str = "spiked", device: str = "cuda",
                 dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    w = torch.randn(n, m, generator=g, device=device) / math.sqrt(m)
    if kind != "noise":
        r = max(1, min(n, m) // 16)
        u = torch.linalg.qr(torch.randn(n, r, generator=g, device=device))[0]
        v = torch.linalg.qr(torch.randn(m, r, generator=g, device=device))[0]
        s = 8.0 * torch.arange(1, r + 1, device=device, dtype=torch.float32) ** -0.7
        w += (u * s) @ v.T
    w = w.to(dtype)
    if kind == "rank_deficient":
        d = n // 3
        w[n - d :] = w[:d]
    return w


def llama3_8b_layer(layer: int, device: str = "cuda", layers_shapes=LLAMA3_8B) -> dict[str, torch.Tensor]:
    out = {}
    for j, (suffix, n, m) in enumerate(layers_shapes):
        idx = layer * len(layers_shapes) + j
        out[f"model.layers.{layer}.{suffix}.weight"] = trained_like(n, m, seed=idx, kind=kind_of(idx), device=device)
    return out


def write_llama3_8b(folder: Path, layers: int = LLAMA3_8B_LAYERS, device: str = "cuda") -> int:
    """Write a sharded safetensors checkpoint (one shard per layer) + index + config. -> bytes written."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for layer in range(layers):
        tensors = {k: v.cpu() for k, v in llama3_8b_layer(layer, device).items()}
        tensors[f"model.layers.{layer}.input_layernorm.weight"] = torch.ones(4096, dtype=torch.bfloat16)
        shard = f"model-{layer + 1:05d}-of-{layers:05d}.safetensors"
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update({k: shard for k in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "synthetic/llama3-8b-shaped",
                                                     "model_type": "llama"}))
    return total


def llama3_8b_warm_up_folder(model_folder: Path) -> Path:
    """A one-layer checkpoint of the 8B shapes beside ``model_folder`` (written if missing), for an
    untimed scan before a timed one: it reads from disk through the pinned staging ring as the
    timed scan does, so the process's first-use costs (kernels, workspaces, its first page-locking:
    0.13-0.17 s on the H100 and H200) fall outside the timing."""
    folder = model_folder.with_name(model_folder.name + "-warm-up")
    if not (folder / "config.json").exists():
        write_llama3_8b(folder, layers=1)
    return folder


LLAMA3_8B_CONFIG = {  # Meta-Llama-3-8B's config.json, the fields transformers needs
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": LLAMA3_8B_LAYERS, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16",
}


def write_llama3_8b_model(folder: Path, layers: int = LLAMA3_8B_LAYERS, device: str = "cuda") -> int:
    """write_llama3_8b plus what makes it a complete LlamaForCausalLM checkpoint transformers loads:
    the embedding and head (128256 x 4096, Gaussian x 0.02), the norms, a full config. -> bytes."""
    from safetensors.torch import save_file

    total = write_llama3_8b(folder, layers, device)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    g = torch.Generator(device=device).manual_seed(8)
    vocab, hidden = LLAMA3_8B_CONFIG["vocab_size"], LLAMA3_8B_CONFIG["hidden_size"]
    extra = {name: (torch.randn(vocab, hidden, generator=g, device=device) * 0.02).to(torch.bfloat16).cpu()
             for name in ("model.embed_tokens.weight", "lm_head.weight")}
    extra["model.norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    for layer in range(layers):
        extra[f"model.layers.{layer}.post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    shard = "model-extra.safetensors"
    save_file(extra, str(folder / shard), metadata={"format": "pt"})
    added = sum(t.numel() * t.element_size() for t in extra.values())
    index["metadata"]["total_size"] = total + added
    index["weight_map"].update({k: shard for k in extra})
    index_path.write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(LLAMA3_8B_CONFIG | {"_name_or_path": "synthetic/llama3-8b-shaped",
                                                                       "num_hidden_layers": layers}))
    return total + added


# -- generated on the GPU, tensor by tensor (the models larger than the device's disk) ----------------
LLAMA3_70B = [
    ("self_attn.q_proj", 8192, 8192), ("self_attn.k_proj", 1024, 8192), ("self_attn.v_proj", 1024, 8192),
    ("self_attn.o_proj", 8192, 8192), ("mlp.gate_proj", 28672, 8192), ("mlp.up_proj", 28672, 8192),
    ("mlp.down_proj", 8192, 28672),
]
LLAMA3_70B_LAYERS = 80
DEEPSEEK_V2_MOE = [("gate_proj", 1536, 5120), ("up_proj", 1536, 5120), ("down_proj", 5120, 1536)]
DEEPSEEK_V2_MOE_LAYERS, DEEPSEEK_V2_EXPERTS = 59, 160


def generated_like(shape: tuple[int, ...], seed: int, kind: str, device: str = "cuda",
                   rows: tuple[int, int] | None = None) -> torch.Tensor:
    """A cheaper trained_like for [n, m]: the same Gaussian bulk and heavy-tailed spikes, with
    Gaussian (nearly orthogonal, not orthogonalised) singular vectors, so that tens of thousands of
    matrices generate in seconds. bf16. ``rows=(a, b)`` generates rows a..b only, identical to those
    rows of the whole matrix (each block of rows has its own seed), so a big matrix can be made in
    blocks without its float32 temporaries."""
    n, m = shape
    a, b = rows or (0, n)
    r = max(1, min(n, m) // 16)
    g = torch.Generator(device=device).manual_seed(seed)
    v = torch.randn(m, r, generator=g, device=device) / math.sqrt(m)
    u = torch.randn(n, r, generator=g, device=device) / math.sqrt(n)
    s = 8.0 * torch.arange(1, r + 1, device=device, dtype=torch.float32) ** -0.7
    out = torch.empty(b - a, m, dtype=torch.bfloat16, device=device)
    for start in range(a - a % _GEN_ROWS, b, _GEN_ROWS):  # blocks aligned to _GEN_ROWS: same values however split
        lo, hi = max(start, a), min(start + _GEN_ROWS, b)
        gb = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)
        block = torch.randn(min(_GEN_ROWS, n - start), m, generator=gb, device=device)[lo - start : hi - start]
        block /= math.sqrt(m)
        if kind != "noise":
            block += (u[lo:hi] * s) @ v.T
        out[lo - a : hi - a] = block
    if kind == "rank_deficient":  # the last third repeats the first third
        d = n // 3
        lo = max(a, n - d)
        if lo < b:
            out[lo - a : b - a] = generated_like(shape, seed, "spiked", device, (lo - (n - d), b - (n - d)))
    return out


_GEN_ROWS = 2048


class GeneratedSource(WeightSource):
    """A model's weights, generated when the scan reads them, never all at once.

    ``layout``: (name, shape) pairs, in model order. The values are made on ``generate_on`` (a GPU,
    in blocks of rows) and handed over in host memory like a checkpoint's tensors, so the scan runs
    its file path: pinned staging, GPU memory bounded by the planner, not by the generator."""

    def __init__(self, layout: list[tuple[str, tuple[int, ...]]], model_name: str, generate_on: str = "cuda"):
        self._layout = layout
        self._index = {name: i for i, (name, _) in enumerate(layout)}
        self.model_name = self.label = model_name
        self.generate_on = generate_on

    def tensors(self) -> list[TensorInfo]:
        return [TensorInfo(name, shape, "bfloat16", True) for name, shape in self._layout]

    def read(self, info: TensorInfo) -> torch.Tensor:
        out = torch.empty(info.shape, dtype=torch.bfloat16)
        self.read_into(info, out)
        return out

    def read_into(self, info: TensorInfo, out: torch.Tensor, first: int = 0) -> None:
        i = self._index[info.name]
        n, m = info.shape
        if first % m or out.numel() % m:
            raise ValueError("GeneratedSource reads whole rows (read_piece_bytes is None)")
        a, b = first // m, (first + out.numel()) // m
        # On a GPU, generate on this thread's own stream: work on the default stream (and a copy to
        # host memory issued there) would wait for the scan's kernels and stall it in turn.
        stream = _thread_stream(self.generate_on)
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for lo in range(a, b, _GEN_ROWS):
                hi = min(lo + _GEN_ROWS, b)
                block = generated_like(info.shape, seed=i, kind=kind_of(i), device=self.generate_on, rows=(lo, hi))
                out.view(-1)[(lo - a) * m : (hi - a) * m].copy_(block.view(-1), non_blocking=out.is_pinned())
        if stream is not None:
            stream.synchronize()


_streams = threading.local()


def _thread_stream(device: str) -> torch.cuda.Stream | None:
    if torch.device(device).type != "cuda":
        return None
    if getattr(_streams, "stream", None) is None:
        _streams.stream = torch.cuda.Stream(device)
    return _streams.stream


def llama3_8b_layout(layers: int = LLAMA3_8B_LAYERS) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"model.layers.{i}.{suffix}.weight", (n, m)) for i in range(layers) for suffix, n, m in LLAMA3_8B]


def llama3_70b_layout(layers: int = LLAMA3_70B_LAYERS) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"model.layers.{i}.{suffix}.weight", (n, m)) for i in range(layers) for suffix, n, m in LLAMA3_70B]


def deepseek_v2_moe_layout(layers: int = DEEPSEEK_V2_MOE_LAYERS,
                           experts: int = DEEPSEEK_V2_EXPERTS) -> list[tuple[str, tuple[int, ...]]]:
    """One [n, m] tensor per expert and kind, named as the published DeepSeek-V2 checkpoint names
    them (its MoE layers are 1..59; layer 0 is dense)."""
    return [(f"model.layers.{i + 1}.mlp.experts.{e}.{kind}.weight", (n, m))
            for i in range(layers) for e in range(experts) for kind, n, m in DEEPSEEK_V2_MOE]
