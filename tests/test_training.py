"""SpectrumCallback in a real transformers.Trainer run (CPU, a few steps on tiny random models)."""

from __future__ import annotations

import logging

import pytest
import torch

import spectrum_fast

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 64, 16


def tiny_llama():
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=SEQ,
                                   tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg)


def tiny_qwen2_moe():
    cfg = transformers.Qwen2MoeConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=SEQ,
                                      num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                      shared_expert_intermediate_size=32, tie_word_embeddings=False)
    return transformers.Qwen2MoeForCausalLM(cfg)


def random_batches(n: int) -> list[dict[str, torch.Tensor]]:
    data = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (SEQ,))
        data.append({"input_ids": ids, "labels": ids.clone()})
    return data


def train(model, callback, tmp_path, seed, steps=3, weight_decay=0.1, **kwargs):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-2,
        weight_decay=weight_decay, report_to="none", save_strategy="no", logging_steps=1, use_cpu=True,
        disable_tqdm=True, seed=seed, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=random_batches(4 * steps),
                                   callbacks=[callback], **kwargs)
    trainer.train()
    return trainer


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_trainer_trains_only_the_selection(tmp_path, seed, caplog):
    model = tiny_llama()
    before = snapshot(model)
    callback = spectrum_fast.SpectrumCallback(top_percent=50, device="cpu")
    caplog.set_level(logging.INFO, logger="spectrum_fast")
    trainer = train(model, callback, tmp_path, seed)

    report = callback.report
    # 7 types x 2 layers at 50% keeps one matrix per type; plus the embedding and the head.
    assert len(report.trainable_tensors) == 7 + 2, report.trainable_tensors
    trainable = set(report.trainable_tensors)
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= trainable
    for name, param in model.named_parameters():
        if name in trainable:
            assert not torch.equal(param.detach(), before[name]), f"[seed={seed}] selected {name} did not train"
        else:
            assert torch.equal(param.detach(), before[name]), f"[seed={seed}] frozen {name} changed"
    assert report.trainable == sum(p.numel() for n, p in model.named_parameters() if n in trainable)

    logged = [r.getMessage() for r in caplog.records if r.name == "spectrum_fast.training"]
    assert any(f"trainable {report.trainable:,} / {report.total:,}" in m for m in logged), logged
    entries = [e for e in trainer.state.log_history if "spectrum_trainable_parameters" in e]
    assert entries == [{"spectrum_trainable_parameters": report.trainable,
                        "spectrum_total_parameters": report.total, "step": 0}]
    assert any("loss" in e for e in trainer.state.log_history), "the run should have logged its loss"


def test_trainer_freezes_from_a_yaml_before_the_optimizer(tmp_path, seed):
    model = tiny_llama()
    yaml_path = tmp_path / "unfrozen.yaml"
    yaml_path.write_text("unfrozen_parameters:\n- model.layers.1.mlp.down_proj\n- ^lm_head.weight$\n")
    before = snapshot(model)
    callback = spectrum_fast.SpectrumCallback(yaml_path)
    trainer = train(model, callback, tmp_path, seed, steps=2)
    # The optimizer the Trainer built holds only what freeze() left trainable.
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(model.model.layers[1].mlp.down_proj.weight), id(model.lm_head.weight)}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == {"model.layers.1.mlp.down_proj.weight", "lm_head.weight"}, f"[seed={seed}]"


def test_trainer_moe_frozen_experts_stay_bit_identical(tmp_path, seed):
    """Fused experts [E, n, m] trained in part under the Trainer's AdamW with weight decay."""
    model = tiny_qwen2_moe()
    before = snapshot(model)
    fused = [n for n, p in model.named_parameters() if p.dim() == 3]
    assert fused, "transformers 5 keeps Qwen2-MoE experts fused: [E, n, m] parameters expected"
    chosen = {}  # a random proper subset of each fused tensor's experts, as a scan's selection would give
    for name in fused:
        k = int(torch.randint(1, 4, ()))
        chosen[name] = sorted(torch.randperm(4)[:k].tolist())
    patterns = [f"{n}.{e}" for n, experts in chosen.items() for e in experts] + ["model.layers.0.self_attn.q_proj"]
    callback = spectrum_fast.SpectrumCallback(patterns)
    train(model, callback, tmp_path, seed, weight_decay=0.5)
    assert callback.report.trained_experts == chosen
    params = dict(model.named_parameters())
    for name, experts in chosen.items():
        after = params[name].detach()
        for e in range(after.shape[0]):
            if e in experts:
                assert not torch.equal(after[e], before[name][e]), f"[seed={seed}] {name}[{e}] did not train"
            else:
                assert torch.equal(after[e], before[name][e]), f"[seed={seed}] frozen {name}[{e}] changed"
    for name, param in params.items():
        if name not in callback.report.trainable_tensors:
            assert torch.equal(param.detach(), before[name]), f"[seed={seed}] frozen {name} changed"
    assert not torch.equal(params["model.layers.0.self_attn.q_proj.weight"].detach(),
                           before["model.layers.0.self_attn.q_proj.weight"])
    from torch.optim.optimizer import _global_optimizer_pre_hooks

    assert _global_optimizer_pre_hooks == {}, "the process-wide hook outlived training"


def test_optimizer_given_to_the_trainer_is_warned_about(tmp_path, seed, caplog):
    model = tiny_llama()
    before = snapshot(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    callback = spectrum_fast.SpectrumCallback(["model.layers.0.self_attn.q_proj"])
    caplog.set_level(logging.INFO, logger="spectrum_fast")
    train(model, callback, tmp_path, seed, steps=2, optimizers=(optimizer, None))
    assert any("optimizer was created before freezing" in r.getMessage() for r in caplog.records)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == {"model.layers.0.self_attn.q_proj.weight"}, f"[seed={seed}] {changed}"


def test_callback_arguments_are_checked():
    with pytest.raises(spectrum_fast.SpectrumFastError, match="top_percent"):
        spectrum_fast.SpectrumCallback()
    with pytest.raises(spectrum_fast.SelectionError, match="outside"):
        spectrum_fast.SpectrumCallback(top_percent=0)
    with pytest.raises(spectrum_fast.SpectrumFastError, match="scan options"):
        spectrum_fast.SpectrumCallback(["x"], device="cpu")


def test_callback_takes_a_selection(tmp_path, seed):
    from spectrum_fast import strategies

    model = tiny_llama()
    selection = strategies.snr(spectrum_fast.scan(model, device="cpu", progress=False), 50, model=model)
    with pytest.raises(spectrum_fast.SpectrumFastError, match="made its choice"):
        spectrum_fast.SpectrumCallback(selection, top_percent=50)
    before = snapshot(model)
    callback = spectrum_fast.SpectrumCallback(selection)
    train(model, callback, tmp_path, seed, steps=2)
    assert callback.report.trainable == selection.trainable_params, f"[seed={seed}]"
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= set(callback.report.trainable_tensors), f"[seed={seed}] {changed}"
