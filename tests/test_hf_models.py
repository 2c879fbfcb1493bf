"""Tiny Hugging Face models built from configs (offline), saved in every checkpoint layout, scanned
from the folder and from memory, and checked against a float64 svdvals reference."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    assert_matches_reference, assert_selection_matches, in_model_order, natural_order, perturb_, reference_rows,
    reference_selection, save_bin, state_dict_of_folder, tiny_bert, tiny_gpt_oss, tiny_llama, tiny_qwen2_moe,
)

import spectrum_fast

pytest.importorskip("transformers")

LLAMA_AUTO_TYPES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
BERT_AUTO_TYPES = ["attention.self.query", "attention.self.key", "attention.self.value",
                   "attention.output.dense", "intermediate.dense", "output.dense"]


def _scan(src, **kw):
    return spectrum_fast.scan(src, device="cpu", progress=False, **kw)


def _save(model, folder, layout):
    if layout == "sharded":
        model.save_pretrained(folder, max_shard_size="200KB")
        assert (folder / "model.safetensors.index.json").is_file()
        assert len(list(folder.glob("model-*.safetensors"))) > 1, "expected several shards"
    elif layout == "single":
        model.save_pretrained(folder)
        assert (folder / "model.safetensors").is_file()
        assert not (folder / "model.safetensors.index.json").exists()
    elif layout == "bin":
        save_bin(model, folder)
    elif layout == "bin-sharded":
        save_bin(model, folder, shards=3)
    elif layout == "bin-legacy":
        save_bin(model, folder, legacy=True)
    else:
        raise AssertionError(layout)


def _same_rows(a, b, seed, label):
    ra, rb = {r.name: r for r in a.rows}, {r.name: r for r in b.rows}
    ctx = f"[{label} seed={seed}]"
    assert {n: r.type for n, r in ra.items()} == {n: r.type for n, r in rb.items()}, f"{ctx} names/types"
    for n in ra:
        assert abs(ra[n].snr - rb[n].snr) <= 1e-9 * abs(rb[n].snr), f"{ctx} {n}: {ra[n].snr} vs {rb[n].snr}"


# -- Llama ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["sharded", "single", "bin", "bin-sharded", "bin-legacy"])
def test_llama_folder_and_module(tmp_path, seed, layout):
    model = perturb_(tiny_llama())
    folder = tmp_path / "tiny-llama"
    _save(model, folder, layout)
    state = in_model_order(state_dict_of_folder(folder), model)
    assert set(state) == set(dict(model.named_parameters())), f"[seed={seed}] saved state differs from the model"

    from_folder, from_module = _scan(folder), _scan(model)
    ref = reference_rows(state)
    assert_matches_reference(from_folder, ref, seed, f"llama {layout} folder")
    assert_matches_reference(from_module, ref, seed, "llama module")
    _same_rows(from_folder, from_module, seed, layout)
    assert_selection_matches(from_folder, ref, seed)
    assert_selection_matches(from_module, ref, seed)
    assert from_folder.skipped == [] and from_module.skipped == []

    # "auto": the 7 block matrices per layer, no norms, no embedding, no head.
    types = {r.type for r in from_folder.rows}
    assert types == set(LLAMA_AUTO_TYPES)
    for t in LLAMA_AUTO_TYPES:
        assert sum(r.type == t for r in from_folder.rows) == 3
    assert from_folder.embedding_name == from_module.embedding_name == "model.embed_tokens.weight"
    assert from_folder.head_name == from_module.head_name == "lm_head.weight"


def test_llama_single_file_path_and_bf16(tmp_path, seed):
    model = perturb_(tiny_llama()).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "m")
    state = in_model_order(state_dict_of_folder(tmp_path / "m"), model)
    assert next(iter(state.values())).dtype == torch.bfloat16
    ref = reference_rows(state)
    result = _scan(tmp_path / "m" / "model.safetensors")
    assert_matches_reference(result, ref, seed, "bf16 file")
    assert all(r.dtype == "bfloat16" for r in result.rows)
    assert_selection_matches(result, ref, seed)
    assert_matches_reference(_scan(model), ref, seed, "bf16 module")


def test_llama_types_all(tmp_path, seed):
    model = perturb_(tiny_llama())
    model.save_pretrained(tmp_path / "m", max_shard_size="200KB")
    ref = reference_rows(in_model_order(state_dict_of_folder(tmp_path / "m"), model), types="all")
    for label, result in (("folder", _scan(tmp_path / "m", types="all")), ("module", _scan(model, types="all"))):
        assert_matches_reference(result, ref, seed, f"all {label}")
        by_name = {r.name: r for r in result.rows}
        assert by_name["model.embed_tokens"].type == "model.embed_tokens"
        assert by_name["model.embed_tokens"].shape == (128, 64)
        assert by_name["lm_head"].type == "lm_head"
        assert by_name["model.norm"].shape == (1, 64)
        assert by_name["model.layers.0.input_layernorm"].type == "input_layernorm"
        assert by_name["model.layers.2.post_attention_layernorm"].shape == (1, 64)
        assert {r.type for r in result.rows} == set(LLAMA_AUTO_TYPES) | {
            "model.embed_tokens", "lm_head", "model.norm", "input_layernorm", "post_attention_layernorm"}
        assert_selection_matches(result, ref, seed)


@pytest.mark.parametrize("shard", [None, "30KB"])
def test_folder_rows_follow_model_order(tmp_path, seed, shard):
    """spectrum.py ranks ties (every 1-D norm has SNR exactly 1) in model order, so a folder scan must
    list the members of a type in layer order (0, 1, 2, ..., 10, 11), not file/alphabetical order."""
    model = tiny_llama(layers=12)
    model.save_pretrained(tmp_path / "m", **({"max_shard_size": shard} if shard else {}))
    result = _scan(tmp_path / "m", types="all")
    layers = [int(r.name.split(".")[2]) for r in result.rows if r.type == "mlp.down_proj"]
    assert layers == list(range(12)), f"rows of mlp.down_proj in order {layers}"
    assert result.select_by_type(50)["input_layernorm"] == [f"model.layers.{i}.input_layernorm" for i in range(6)]
    assert result.select_by_type(50) == _scan(model, types="all").select_by_type(50)


def test_types_list_is_exact(tmp_path, seed):
    model = perturb_(tiny_llama())
    result = _scan(model, types=["self_attn.q_proj", r"mlp\..*_proj"])
    assert {r.type for r in result.rows} == {"self_attn.q_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    # A type name never matches by substring ("proj" is not a type).
    with pytest.raises(spectrum_fast.SelectionError):
        _scan(model, types=["proj"])


def test_freeze_llama(tmp_path, seed):
    model = perturb_(tiny_llama())
    model.save_pretrained(tmp_path / "m", max_shard_size="200KB")
    result = _scan(tmp_path / "m")
    ref = reference_rows(in_model_order(state_dict_of_folder(tmp_path / "m"), model))
    chosen = [n for names in reference_selection(ref, 50).values() for n in names]
    assert len(chosen) == 7 * int(3 * 50 / 100)

    report = spectrum_fast.freeze(model, result, top_percent=50)
    want = {f"{n}.weight" for n in chosen} | {"model.embed_tokens.weight", "lm_head.weight"}
    params = dict(model.named_parameters())
    got = {n for n, p in params.items() if p.requires_grad}
    assert got == want, f"[seed={seed}] trainable {sorted(got ^ want)}"
    assert set(report.trainable_tensors) == want
    assert report.trainable == sum(params[n].numel() for n in want)
    assert report.total == sum(p.numel() for p in params.values())
    assert report.unmatched == []
    assert 0 < report.fraction < 1


@pytest.mark.parametrize("how", ["list", "yaml"])
def test_freeze_tied_head(tmp_path, seed, how):
    model = perturb_(tiny_llama(tie=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    selection = ["^lm_head.weight$"]
    if how == "yaml":
        selection = tmp_path / "unfrozen.yaml"
        selection.write_text("unfrozen_parameters:\n- ^lm_head.weight$\n")
    report = spectrum_fast.freeze(model, selection)
    assert model.model.embed_tokens.weight.requires_grad, "the tensor shared by head and embedding must train"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["model.embed_tokens.weight"]
    assert report.trainable == 128 * 64 and report.unmatched == []


def test_tied_llama_scan(tmp_path, seed):
    model = perturb_(tiny_llama(tie=True))
    result = _scan(model, types="all")
    names = [r.name for r in result.rows]
    assert names.count("model.embed_tokens") + names.count("lm_head") == 1, "a tied tensor is scanned once"
    assert result.head_name == "lm_head.weight" and result.embedding_name == "model.embed_tokens.weight"
    report = spectrum_fast.freeze(model, _scan(model), top_percent=50)
    assert model.model.embed_tokens.weight.requires_grad
    assert report.unmatched == []


# -- MoE -------------------------------------------------------------------------------------------
def test_moe_module_fused_experts(seed):
    """In memory, transformers 5 keeps experts fused ([E, ...] parameters): one row per expert."""
    model = perturb_(tiny_qwen2_moe())
    params = dict(model.named_parameters())
    fused = [n for n, p in params.items() if p.dim() == 3]
    assert fused, "expected fused 3-D expert parameters in transformers 5"
    ref = reference_rows({n: p.detach() for n, p in params.items()})
    result = _scan(model)
    assert_matches_reference(result, ref, seed, "moe module")
    assert_selection_matches(result, ref, seed)
    names = {r.name for r in result.rows}
    for n in fused:
        assert {f"{n}.{e}" for e in range(4)} <= names
        assert n not in names
    assert "model.layers.1.mlp.experts.down_proj.3" in names
    assert {"mlp.gate", "mlp.shared_expert.up_proj", "mlp.shared_expert_gate"} <= {r.type for r in result.rows}


def test_moe_folder_per_expert(tmp_path, seed):
    """The checkpoint of the same model is per expert (the hub layout), sharded."""
    model = perturb_(tiny_qwen2_moe())
    model.save_pretrained(tmp_path / "moe", max_shard_size="100KB")
    assert len(list((tmp_path / "moe").glob("model-*.safetensors"))) > 1
    state = natural_order(state_dict_of_folder(tmp_path / "moe"))
    ref = reference_rows(state)
    result = _scan(tmp_path / "moe")
    assert_matches_reference(result, ref, seed, "moe folder")
    assert_selection_matches(result, ref, seed)
    types = {r.type for r in result.rows}
    assert {f"mlp.experts.{e}.{p}" for e in range(4) for p in ("gate_proj", "up_proj", "down_proj")} <= types

    pooled = _scan(tmp_path / "moe", pool_experts=True)
    assert sum(r.type == "mlp.experts.*.down_proj" for r in pooled.rows) == 2 * 4
    assert {r.name: r.snr for r in pooled.rows} == pytest.approx({r.name: r.snr for r in result.rows}, rel=1e-12)


def test_moe_fused_checkpoint_folder_equals_module(tmp_path, seed):
    """gpt-oss stores fused experts on disk too: folder and module scans must agree, expert by expert."""
    model = perturb_(tiny_gpt_oss())
    model.save_pretrained(tmp_path / "oss", max_shard_size="100KB")
    state = in_model_order(state_dict_of_folder(tmp_path / "oss"), model)
    assert state["model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 64, 192)
    from_folder, from_module = _scan(tmp_path / "oss"), _scan(model)
    _same_rows(from_folder, from_module, seed, "gpt-oss")
    ref = reference_rows(state)
    assert_matches_reference(from_module, ref, seed, "gpt-oss module")
    assert_matches_reference(from_folder, ref, seed, "gpt-oss folder")


def test_moe_freeze_from_module_scan(seed):
    """Rows of a fused expert tensor are named <param>.<e>: freeze() must still reach that tensor."""
    model = perturb_(tiny_qwen2_moe())
    report = spectrum_fast.freeze(model, _scan(model), top_percent=100)
    assert report.unmatched == [], f"patterns from the scan that unfreeze nothing: {report.unmatched[:4]}"
    for n, p in model.named_parameters():
        if p.dim() == 3:
            assert p.requires_grad, f"{n} selected at 100% but still frozen"


# -- BERT ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["sharded", "single", "bin"])
def test_bert(tmp_path, seed, layout):
    model = perturb_(tiny_bert())
    folder = tmp_path / "bert"
    if layout == "sharded":
        model.save_pretrained(folder, max_shard_size="60KB")
        assert len(list(folder.glob("model-*.safetensors"))) > 1
    else:
        _save(model, folder, layout)
    state = in_model_order(state_dict_of_folder(folder), model)
    ref = reference_rows(state)
    from_folder, from_module = _scan(folder), _scan(model)
    assert_matches_reference(from_folder, ref, seed, f"bert {layout}")
    assert_matches_reference(from_module, ref, seed, "bert module")
    _same_rows(from_folder, from_module, seed, "bert")
    assert_selection_matches(from_folder, ref, seed)
    assert {r.type for r in from_folder.rows} == set(BERT_AUTO_TYPES)
    assert from_module.embedding_name == "embeddings.word_embeddings.weight"

    ref_all = reference_rows(state, types="all")
    result_all = _scan(folder, types="all")
    assert_matches_reference(result_all, ref_all, seed, "bert all")
    assert {"embeddings.word_embeddings", "embeddings.position_embeddings", "pooler.dense",
            "attention.output.LayerNorm"} <= {r.type for r in result_all.rows}

    report = spectrum_fast.freeze(model, from_module, top_percent=50)
    chosen = [n for names in reference_selection(ref, 50).values() for n in names]
    params = dict(model.named_parameters())
    # Axolotl's rule: a module name unfreezes its weight and its bias.
    want = {f"{n}.{s}" for n in chosen for s in ("weight", "bias")} | {"embeddings.word_embeddings.weight"}
    assert {n for n, p in params.items() if p.requires_grad} == want, f"[seed={seed}]"
    assert report.trainable == sum(params[n].numel() for n in want)


# -- the real demo model ------------------------------------------------------------------------------
def test_demo_model_matches_reference():
    from spectrum_fast.demo import demo_model_folder

    try:
        folder = demo_model_folder()
    except spectrum_fast.SourceError as e:
        pytest.skip(str(e))
    state = natural_order(state_dict_of_folder(folder))
    ref = reference_rows(state)
    result = _scan(folder)
    assert len(result.rows) == 36
    assert_matches_reference(result, ref, None, "demo")
    assert_selection_matches(result, ref, None)
    assert {r.type for r in result.rows} == set(BERT_AUTO_TYPES)
