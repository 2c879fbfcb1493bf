"""spectrum_fast.load_pretrained on CPU: a saved tiny Llama comes back in bf16 with requires_grad
set by the selection of a separate scan of the same checkpoint (same rows, same files), the
one-read path's model identical to transformers' (every tensor, the forward pass), the
transformers path taken where the fused one does not apply, the scan's files written when asked,
a non-causal-LM checkpoint loaded by its own class, and a bad path refused in one line."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import spectrum_fast  # noqa: E402
from spectrum_fast.errors import SelectionError  # noqa: E402

QUIET = {"progress": False}


def save_tiny_llama(folder, seed: int) -> None:
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # weights with a spread of spectra, not the init's near-zero ones
        for p in model.parameters():
            p.add_(torch.randn_like(p) * torch.rand(()) * 0.1)
    model.to(torch.bfloat16).save_pretrained(folder)  # as checkpoints are published


def test_selection_and_files_match_a_separate_scan(tmp_path, seed):
    """The same SNRs, selection and files as scanning the checkpoint's files."""
    save_tiny_llama(tmp_path / "model", seed)
    model, result, report = spectrum_fast.load_pretrained(tmp_path / "model", top_percent=50, device_map={"": "cpu"},
                                                           scan_options=QUIET, out=tmp_path / "out",
                                                           return_scan=True)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    from_files = spectrum_fast.scan(tmp_path / "model", device="cpu", progress=False)
    assert {r.name: r.snr for r in result.rows} == {r.name: r.snr for r in from_files.rows}, seed
    chosen = set(from_files.select(50))
    assert set(result.select(50)) == chosen, seed
    scanned = {r.name for r in from_files.rows}
    for name, p in model.named_parameters():
        module = name.rsplit(".", 1)[0]
        if module in scanned:
            assert p.requires_grad == (module in chosen), (seed, name)
    assert 0 < report.trainable < report.total

    separate_out = tmp_path / "separate"  # the one-read path scans the files: scan(path)'s files
    separate_out.mkdir()
    from_files.to_spectrum_json(separate_out)
    from_files.to_yaml(separate_out, 50)
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == sorted(f.name for f in separate_out.iterdir())
    for f in sorted(separate_out.iterdir()):
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes(), f.name


@pytest.mark.parametrize("tied, saved_dtype", [(False, torch.bfloat16), (True, torch.bfloat16), (False, torch.float32)])
def test_the_one_read_model_is_transformers_model(tmp_path, seed, tied, saved_dtype, monkeypatch):
    """Every parameter and buffer bit-identical to from_pretrained's (dtype and device too), the
    same logits; the fused path did run (from_pretrained was not called)."""
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    source = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    source.to(saved_dtype).save_pretrained(tmp_path / "model")  # a float32 checkpoint is rounded on loading
    reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.bfloat16)
    calls = []
    original = transformers.LlamaForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.LlamaForCausalLM, "from_pretrained",
                        classmethod(lambda cls, *a, **k: calls.append(1) or original.__func__(cls, *a, **k)))
    model = spectrum_fast.load_pretrained(tmp_path / "model", top_percent=50, device_map={"": "cpu"},
                                          scan_options=QUIET)
    assert not calls, "the one-read path should not have called from_pretrained"
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]), (seed, name)
    for (name, b), (_, rb) in zip(model.named_buffers(), reference.named_buffers()):
        assert b.dtype == rb.dtype and torch.equal(b, rb), (seed, name)
    assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) == tied
    assert model.config.to_dict() == reference.config.to_dict()
    tokens = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, reference(tokens).logits), seed
    assert not model.training


def test_transformers_path_where_the_fused_one_does_not_apply(tmp_path, seed, monkeypatch):
    """A from_pretrained argument the fused path does not know: transformers loads, the scan reads
    the model; the same selection."""
    save_tiny_llama(tmp_path / "model", seed)
    fused, fused_result, _ = spectrum_fast.load_pretrained(tmp_path / "model", top_percent=50, device_map={"": "cpu"},
                                                           scan_options=QUIET, return_scan=True)
    plain, plain_result, _ = spectrum_fast.load_pretrained(tmp_path / "model", top_percent=50, device_map={"": "cpu"},
                                                           scan_options=QUIET, return_scan=True,
                                                           low_cpu_mem_usage=True)
    assert set(fused_result.select(50)) == set(plain_result.select(50)), seed
    assert [p.requires_grad for p in fused.parameters()] == [p.requires_grad for p in plain.parameters()]


def test_returns_the_model_alone_by_default(tmp_path, seed):
    save_tiny_llama(tmp_path / "model", seed)
    model = spectrum_fast.load_pretrained(tmp_path / "model", top_percent=34, device_map={"": "cpu"},
                                          scan_options=QUIET)
    assert isinstance(model, transformers.LlamaForCausalLM)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".layers." in n for n in trainable) and len(trainable) < len(list(model.parameters()))


def test_a_checkpoint_that_is_not_a_causal_lm(tmp_path, seed):
    cfg = transformers.BertConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                  vocab_size=128)
    torch.manual_seed(seed)
    transformers.BertModel(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "bert")
    model = spectrum_fast.load_pretrained(tmp_path / "bert", top_percent=50, device_map={"": "cpu"},
                                          scan_options=QUIET)
    assert isinstance(model, transformers.BertModel)
    assert any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("case", ["missing", "not-a-model"])
def test_bad_paths_are_one_line(tmp_path, case):
    path = tmp_path / "nothing"
    if case == "not-a-model":
        path.mkdir()
        (path / "config.json").write_text("{not json")
    with pytest.raises(SelectionError) as caught:
        spectrum_fast.load_pretrained(path, top_percent=50, device_map={"": "cpu"}, scan_options=QUIET)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message


def test_top_percent_is_checked(tmp_path):
    with pytest.raises(SelectionError):
        spectrum_fast.load_pretrained(tmp_path, top_percent=0, scan_options=QUIET)


def test_with_the_cache_the_model_is_still_loaded_whole(tmp_path, seed, cache_dir):
    """With the cache asked for, a second load of the same checkpoint takes the scan's rows from it,
    so no matrix passes through the scan: every tensor is read directly, and the model is the same."""
    save_tiny_llama(tmp_path / "model", seed)
    cached = QUIET | {"cache": True}
    first, first_result, _ = spectrum_fast.load_pretrained(tmp_path / "model", top_percent=50,
                                                           device_map={"": "cpu"}, scan_options=cached,
                                                           return_scan=True)
    second, second_result, _ = spectrum_fast.load_pretrained(tmp_path / "model", top_percent=50,
                                                             device_map={"": "cpu"}, scan_options=cached,
                                                             return_scan=True)
    assert not first_result.from_cache and second_result.from_cache, "the second scan should come from the cache"
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), (seed, name)
    assert [p.requires_grad for p in first.parameters()] == [p.requires_grad for p in second.parameters()]
