"""scan(model) on models whose weights are not all plain parameters: dispatched by transformers
with device_map (some layers on the CPU, some offloaded to disk), and wrapped by accelerate's
cpu_offload and disk_offload (every weight a meta parameter, the real one in a hook). Every
matrix is read where it really lives: no row is skipped or NaN, and the SNRs are those of the
same weights scanned as plain parameters. A model never loaded (meta, no copy) is refused. With
two GPUs: a model spread over both."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")

from spectrum_fast import scan  # noqa: E402
from spectrum_fast.errors import SelectionError  # noqa: E402


def tiny_llama(seed: int) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():  # fresh weights with some structure, not the init's near-zero ones
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def snrs(result) -> dict[str, float]:
    return {r.name: r.snr for r in result.rows}


def check_same_scan(got, want, ctx: str) -> None:
    assert not got.skipped, f"{ctx}: skipped {got.skipped[:3]}"
    assert all(r.status == "ok" and not math.isnan(r.snr) for r in got.rows), ctx
    assert snrs(got) == snrs(want), f"{ctx}: SNRs differ from the plain model's"


def test_device_map_with_cpu_and_disk_offload(tmp_path, seed):
    model = tiny_llama(seed)
    model.save_pretrained(tmp_path / "model")
    want = scan(model, device="cpu", progress=False)
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.layers.2": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "model", device_map=device_map,
                                                           offload_folder=tmp_path / "offload", dtype=torch.bfloat16)
    offloaded = [n for n, p in loaded.named_parameters() if p.is_meta]
    assert any("layers.1." in n for n in offloaded), "the disk layers should be meta parameters behind hooks"
    check_same_scan(scan(loaded, device="cpu", progress=False), want, f"[seed={seed} device_map]")


@pytest.mark.parametrize("how", ["cpu_offload", "disk_offload"])
def test_accelerate_offload(how, tmp_path, seed):
    model = tiny_llama(seed)
    want = scan(model, device="cpu", progress=False)
    if how == "cpu_offload":
        accelerate.cpu_offload(model, execution_device="cpu")
    else:
        accelerate.disk_offload(model, offload_dir=tmp_path / "offload", execution_device="cpu")
    assert all(p.is_meta for p in model.parameters()), f"{how} should leave every parameter on meta"
    check_same_scan(scan(model, device="cpu", progress=False), want, f"[seed={seed} {how}]")


def test_a_model_never_loaded_is_refused(seed):
    with accelerate.init_empty_weights():
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=64, intermediate_size=96,
                                                                       num_hidden_layers=2, num_attention_heads=4,
                                                                       vocab_size=128))
    with pytest.raises(SelectionError):
        scan(model, device="cpu", progress=False)


TWO_GPU_MAP = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.layers.2": 1,
               "model.norm": 1, "model.rotary_emb": 1, "lm_head": 1}


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_model_spread_over_two_gpus(tmp_path, seed):
    """device_map puts half the layers on each GPU: every matrix is read where it lives, and the SNRs
    are those of the same weights scanned from one GPU (to float64 rounding: batches may differ)."""
    model = tiny_llama(seed)
    model.save_pretrained(tmp_path / "model")
    device_map = TWO_GPU_MAP
    spread = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "model", device_map=device_map,
                                                           dtype=torch.bfloat16)
    assert {p.device.index for p in spread.parameters()} == {0, 1}
    got = scan(spread, device="cuda:0", progress=False)
    want = scan({n: p.detach().to("cuda:0") for n, p in model.named_parameters()}, device="cuda:0", progress=False)
    assert not got.skipped and all(r.status == "ok" and not math.isnan(r.snr) for r in got.rows)
    want_snr = snrs(want)
    for name, snr in snrs(got).items():
        assert snr == pytest.approx(want_snr[name], rel=1e-9), (seed, name)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_load_pretrained_spread_over_two_gpus(tmp_path, seed):
    """load_pretrained with a two-GPU device_map: the layers land where the map says, and the
    selection is that of scanning the checkpoint's files."""
    import spectrum_fast

    tiny_llama(seed).save_pretrained(tmp_path / "model")
    model, result, _ = spectrum_fast.load_pretrained(tmp_path / "model", top_percent=50, device_map=TWO_GPU_MAP,
                                                     scan_options={"progress": False}, return_scan=True)
    assert {p.device.index for p in model.parameters()} == {0, 1}
    assert all(r.status == "ok" and not math.isnan(r.snr) for r in result.rows)
    from_files = spectrum_fast.scan(tmp_path / "model", device="cuda:0", progress=False)
    assert set(result.select(50)) == set(from_files.select(50)), seed
    chosen, scanned = set(result.select(50)), {r.name for r in result.rows}
    for name, p in model.named_parameters():  # the others (embeddings, norms, head) keep the reference's rule
        module = name.rsplit(".", 1)[0]
        if module in scanned:
            assert p.requires_grad == (module in chosen), (seed, name)
