"""Reading tensors straight from safetensors files into the caller's buffer, in pieces, by several
threads (SafetensorsSource.read_into), against safetensors' own reader; fresh data every run."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import save_file

import spectrum_fast
from spectrum_fast.errors import SourceError
from spectrum_fast.sources import SafetensorsSource, open_source

SEED = random.SystemRandom().randrange(2**31)


def _tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "model.layers.0.mlp.down_proj.weight": torch.randn(37, 53, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.experts.down_proj": torch.randn(5, 11, 13, generator=g).to(torch.float16),
        "model.layers.1.self_attn.q_proj.weight": torch.randn(29, 31, generator=g) + 2.0,
        "model.layers.1.input_layernorm.weight": torch.rand(31, generator=g) + 0.5,
        "model.layers.1.counts": torch.arange(7, dtype=torch.int64),
    }


@pytest.mark.parametrize("piece_bytes", [None, 2, 3, 50, 1 << 20])
def test_read_into_in_pieces_matches_safetensors(tmp_path, piece_bytes):
    tensors = _tensors(SEED)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    src = open_source(tmp_path)
    assert isinstance(src, SafetensorsSource)
    with ThreadPoolExecutor(4) as pool:
        for info in src.tensors():
            if not info.floating:
                continue
            want = tensors[info.name].reshape(-1)
            got = torch.full_like(want, float("nan"))  # poisoned: an unread piece shows up
            step = want.numel() if piece_bytes is None else max(1, piece_bytes // want.element_size())
            futures = [pool.submit(src.read_into, info, got[a : a + step], a) for a in range(0, want.numel(), step)]
            for f in futures:
                f.result()
            assert torch.equal(got, want), f"[seed={SEED}] {info.name}"
    # one expert of a fused tensor, read from its element offset
    info = next(i for i in src.tensors() if i.name.endswith("experts.down_proj"))
    out = torch.empty(11, 13, dtype=torch.float16)
    src.read_into(info, out, first=3 * 11 * 13)
    assert torch.equal(out, tensors[info.name][3]), f"[seed={SEED}]"
    with pytest.raises(ValueError):
        src.read_into(info, out, first=4 * 11 * 13 + 1)  # past the end of the tensor
    src.close()


def test_folder_scan_with_tiny_pieces_equals_dict_scan(tmp_path, monkeypatch):
    tensors = _tensors(SEED + 1)
    save_file(dict(list(tensors.items())[:2]), str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(dict(list(tensors.items())[2:]), str(tmp_path / "model-00002-of-00002.safetensors"))
    monkeypatch.setattr(SafetensorsSource, "read_piece_bytes", 6)
    from_files = spectrum_fast.scan(tmp_path, device="cpu", progress=False, types="all")
    from_dict = spectrum_fast.scan(tensors, device="cpu", progress=False, types="all")
    # (folders list tensors in natural name order, dicts in insertion order: compare by name)
    assert sorted((r.name, r.snr, r.n_signal) for r in from_files.rows) == \
        sorted((r.name, r.snr, r.n_signal) for r in from_dict.rows), f"[seed={SEED}]"
    assert len(from_files.rows) == 1 + 5 + 1 + 1


def test_header_that_overstates_the_file_is_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"model.layers.0.mlp.w.weight": torch.randn(64, 64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])  # the last tensor's bytes run past the end
    with pytest.raises(SourceError, match="model.safetensors"):
        spectrum_fast.scan(path, device="cpu", progress=False)
