"""Shared test helpers: which matrices a scan must cover, the float64 reference rows and Spectrum's
selection (written from DESIGN.md section 2, independently of spectrum_fast; per-matrix statistics
from tests/float64_reference.py), tiny offline HF models, and a CLI runner."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from float64_reference import reference_stats  # noqa: F401 (re-exported for the tests)

SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "spectrum_reference"
# The published files the tests need most travel with the repository (tests/data/.../README.md).
BUNDLED_REFERENCE = Path(__file__).resolve().parent / "data" / "spectrum_reference"
RTOL = 1e-5


# -- where a Triton kernel runs ------------------------------------------------------------------
_NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, _NEEDS_CUDA])])
def device(request, monkeypatch) -> str:
    """The CPU under Triton's interpreter (TRITON_INTERPRET=1, for that test only), or CUDA compiled
    (marked gpu, skipped without CUDA). The kernels that take it are built per mode at launch
    (spectrum_fast/kernels/stats.py), so setting the variable here is enough."""
    if request.param == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return request.param


# -- the result cache ---------------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def _no_result_cache(tmp_path_factory):
    """Scans in tests compute, unless a test turns the cache on (the cache_dir fixture): a test that
    scans the same weights twice to compare two code paths must not get the first result back. Session
    scope, set in os.environ itself, so module-scoped fixtures and CLI subprocesses see it too; the
    cache folder points into the test's temporary folders in case a test turns it on without one."""
    import os

    saved = {k: os.environ.get(k) for k in ("SPECTRUM_FAST_NO_CACHE", "SPECTRUM_FAST_CACHE")}
    os.environ["SPECTRUM_FAST_NO_CACHE"] = "1"
    os.environ["SPECTRUM_FAST_CACHE"] = str(tmp_path_factory.mktemp("spectrum_fast_cache"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """The result cache on, in a folder of this test's own (for scan() and CLI subprocesses alike)."""
    folder = tmp_path / "cache"
    monkeypatch.delenv("SPECTRUM_FAST_NO_CACHE", raising=False)
    monkeypatch.setenv("SPECTRUM_FAST_CACHE", str(folder))
    return folder


# -- randomness ---------------------------------------------------------------------------------
@pytest.fixture
def seed() -> int:
    """A fresh seed per test (printed, and named in assertion messages) so inputs differ every run."""
    s = random.SystemRandom().randrange(2**31)
    print(f"seed={s}")
    torch.manual_seed(s)
    return s


# -- the float64 reference (tests/float64_reference.py: svdvals in float64 + spectrum.py's formulas) ----
def layer_type(module: str) -> str:
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return module if i == len(parts) - 1 else ".".join(parts[i + 1 :])
    return module


def expected_matrices(state: dict[str, torch.Tensor], types: str = "auto") -> dict[str, tuple[str, torch.Tensor]]:
    """{module name: (type, matrix)} that a scan with types="auto"/"all" must cover, from the spec."""
    out = {}
    for name, t in state.items():
        if not t.is_floating_point() or name.endswith((".bias", "_bias")):
            continue
        module = name.removesuffix(".weight")
        numbered = any(p.isdigit() for p in module.split("."))
        if types == "auto" and not (numbered and t.dim() >= 2):
            continue
        if t.dim() == 3:
            for e in range(t.shape[0]):
                out[f"{module}.{e}"] = (layer_type(f"{module}.{e}"), t[e])
        elif t.dim() == 1:
            out[module] = (layer_type(module), t.reshape(1, -1))
        else:
            out[module] = (layer_type(module), t.reshape(t.shape[0], -1))
    return out


def reference_rows(state: dict[str, torch.Tensor], types: str = "auto") -> dict[str, dict]:
    rows = {}
    for name, (type_name, w) in expected_matrices(state, types).items():
        rows[name] = {"type": type_name, "shape": tuple(w.shape), **reference_stats(w)}
    return rows


def reference_selection(rows: dict[str, dict], top_percent: float) -> dict[str, list[str]]:
    """Spectrum's rule: per type (first-appearance order), stable sort by SNR desc, keep int(len*p/100)."""
    groups: dict[str, list[tuple[str, float]]] = {}
    for name, row in rows.items():
        groups.setdefault(row["type"], []).append((name, row["snr"]))
    return {t: [n for n, _ in sorted(members, key=lambda x: -x[1])[: int(len(members) * top_percent / 100)]]
            for t, members in groups.items()}


def assert_matches_reference(result, ref: dict[str, dict], seed=None, label: str = "") -> None:
    """Every expected row is present with the same type and SNR (rel 1e-5) and noise counts; no extras."""
    ctx = f"[{label} seed={seed}]"
    got = {r.name: r for r in result.rows}
    assert len(got) == len(result.rows), f"{ctx} duplicate row names"
    for name, want in ref.items():
        assert name in got, f"{ctx} {name} missing from the scan"
        row = got[name]
        assert row.type == want["type"], f"{ctx} {name}: type {row.type!r} != {want['type']!r}"
        assert row.status == "ok", f"{ctx} {name}: status {row.status}"
        if row.shape is not None:
            assert tuple(row.shape) == want["shape"], f"{ctx} {name}: shape {row.shape} != {want['shape']}"
        assert abs(row.snr - want["snr"]) <= RTOL * abs(want["snr"]), \
            f"{ctx} {name}: snr {row.snr!r} vs float64 reference {want['snr']!r}"
        if row.n_signal is not None:
            assert (row.n_signal, row.n_noise) == (want["n_signal"], want["n_noise"]), \
                f"{ctx} {name}: signal/noise counts {(row.n_signal, row.n_noise)} vs " \
                f"{(want['n_signal'], want['n_noise'])}"
    extra = sorted(set(got) - set(ref))
    assert not extra, f"{ctx} rows the spec does not ask for: {extra}"


def assert_selection_matches(result, ref: dict[str, dict], seed=None, percents=(10, 25, 50, 75)) -> None:
    for p in percents:
        assert result.select_by_type(p) == reference_selection(ref, p), f"[seed={seed}] selection at {p}% differs"
        want = [n for names in reference_selection(ref, p).values() for n in names]
        assert sorted(result.select(p)) == sorted(want), f"[seed={seed}] select({p}) differs"


# -- tiny models ---------------------------------------------------------------------------------
def tiny_llama(tie: bool = False, layers: int = 3, **config):
    """config: LlamaConfig fields that replace the defaults below (hidden_size=32, attention_bias=True, ...)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    defaults = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=layers, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=tie)
    return LlamaForCausalLM(LlamaConfig(**(defaults | config))).eval()


def tiny_bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     vocab_size=128, max_position_embeddings=64)
    return BertModel(cfg).eval()


def tiny_qwen2_moe():
    """transformers 5 keeps experts fused in memory (mlp.experts.gate_up_proj [E, 2i, h]); the
    checkpoint it saves is per expert (mlp.experts.<e>.gate_proj.weight), as on the hub."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    cfg = Qwen2MoeConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, num_experts=4,
                         num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                         tie_word_embeddings=False)
    return Qwen2MoeForCausalLM(cfg).eval()


def tiny_gpt_oss():
    """A MoE whose checkpoint stores fused 3-D experts too ([E, in, out] + [E, out] biases)."""
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=64,
                       num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False,
                       eos_token_id=1, pad_token_id=0, bos_token_id=2)
    return GptOssForCausalLM(cfg).eval()


def perturb_(model: torch.nn.Module) -> torch.nn.Module:
    """Give every weight some structure on top of the random init (a spike + scaled noise), so SNRs
    spread out and vary per run instead of all being those of i.i.d. Gaussian matrices."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() >= 2:
                m = p.reshape(p.shape[0], -1) if p.dim() == 2 else p.reshape(-1, p.shape[-2], p.shape[-1])
                u = torch.randn(*m.shape[:-1], 1)
                v = torch.randn(*m.shape[:-2], 1, m.shape[-1])
                m.mul_(torch.rand(()) + 0.5).add_(u * v * (0.05 * torch.rand(())))
    return model


def state_dict_of_folder(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a saved model folder (safetensors or pytorch_model*.bin), read independently."""
    from safetensors.torch import load_file

    state = {}
    files = sorted(folder.glob("*.safetensors"))
    for f in files:
        state.update(load_file(str(f)))
    if not files:
        for f in sorted(folder.glob("pytorch_model*.bin")):
            state.update(torch.load(str(f), map_location="cpu", weights_only=True))
    return state


def in_model_order(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The folder's tensors in the model's parameter order (spectrum.py breaks SNR ties in model order)."""
    order = [n for n, _ in model.named_parameters()]
    return {**{n: state[n] for n in order if n in state}, **{n: t for n, t in state.items() if n not in order}}


def natural_order(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sorted with numeric parts compared as numbers: within a type, this is the model (layer) order."""
    def key(name):
        return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]
    return dict(sorted(state.items(), key=lambda kv: key(kv[0])))


def save_bin(model: torch.nn.Module, folder: Path, shards: int = 1, legacy: bool = False) -> None:
    """pytorch_model.bin (or shards + index): transformers 5 ignores safe_serialization=False.
    legacy=True writes the pre-1.6 (non-zip) format, which cannot be memory-mapped."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
        return
    keys = list(state)
    weight_map = {}
    for i in range(shards):
        part = keys[i::shards]
        fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        torch.save({k: state[k] for k in part}, folder / fname)
        weight_map.update({k: fname for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


# -- the CLI ---------------------------------------------------------------------------------------
def run_cli(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spectrum_fast", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
