"""The ``spectrum-fast`` command, run as a subprocess (python -m spectrum_fast)."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import (
    BUNDLED_REFERENCE, SHARED_REFERENCE, in_model_order, perturb_, reference_rows, reference_selection,
    run_cli, state_dict_of_folder, tiny_llama,
)

import spectrum_fast

pytest.importorskip("transformers")

LLAMA_TYPES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
LLAMA_SHAPES = {"self_attn.q_proj": "64x64", "self_attn.k_proj": "32x64", "self_attn.v_proj": "32x64",
                "self_attn.o_proj": "64x64", "mlp.gate_proj": "176x64", "mlp.up_proj": "176x64",
                "mlp.down_proj": "64x176"}


@pytest.fixture
def llama_folder(tmp_path, seed):
    """A sharded tiny Llama; the folder name has an underscore to check the slug (``_`` -> ``-``)."""
    model = perturb_(tiny_llama())
    folder = tmp_path / "tiny_llama-cli"
    model.save_pretrained(folder, max_shard_size="200KB")
    return folder, reference_rows(in_model_order(state_dict_of_folder(folder), model))


def _expected_yaml(rows_in_json_order: dict[str, dict], top_percent: float, head: str, emb: str) -> str:
    lines = ["unfrozen_parameters:", f"- {head}", f"- {emb}"]
    for type_name, names in reference_selection(rows_in_json_order, top_percent).items():
        lines.append(f"# {type_name} layers")
        lines += [f"- {n}" for n in names]
    return "\n".join(lines) + "\n"


def test_scan_writes_spectrum_files(tmp_path, seed, llama_folder):
    folder, ref = llama_folder
    out = tmp_path / "out"
    proc = run_cli("scan", folder, "--device", "cpu", "--top-percent", "25", "50", "--out", out, "--no-progress",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    base = "snr_results_tiny-llama-cli"
    expected_files = {f"{base}.json", f"{base}_sorted.json", f"{base}_unfrozenparameters_25percent.yaml",
                      f"{base}_unfrozenparameters_50percent.yaml"}
    assert {p.name for p in out.iterdir()} == expected_files, "exactly these files, no temporaries left"

    # Summary: a header, one line per type, the time line, the files written.
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["type", "count"]
    for t in LLAMA_TYPES:
        line = next(ln for ln in lines if ln.startswith(t + " "))
        assert line.split()[1:3] == ["3", LLAMA_SHAPES[t]], line
    assert re.search(r"^21 matrices in [\d.]+ s on cpu \(float64\)", proc.stdout, re.M), proc.stdout
    for name in expected_files:
        assert f"wrote {out / name}" in proc.stdout

    # The JSON: spectrum.py's layout, values equal to the float64 reference.
    data = json.loads((out / f"{base}.json").read_text())
    assert set(data) == set(ref)
    assert all(set(v) == {"snr", "type"} for v in data.values())
    for name, v in data.items():
        assert v["type"] == ref[name]["type"]
        assert v["snr"] == pytest.approx(ref[name]["snr"], rel=1e-5), f"[seed={seed}] {name}"
    sorted_data = json.loads((out / f"{base}_sorted.json").read_text())
    assert set(sorted_data) == set(LLAMA_TYPES)
    for type_name, members in sorted_data.items():
        assert list(members.values()) == sorted(members.values(), reverse=True)
        assert members == {n: v["snr"] for n, v in data.items() if v["type"] == type_name}

    # Round trip through load_results, in both layouts.
    for path in (out / f"{base}.json", out / f"{base}_sorted.json"):
        loaded = spectrum_fast.load_results(path)
        assert {r.name: (r.type, r.snr) for r in loaded.rows} == {n: (v["type"], v["snr"]) for n, v in data.items()}
        for p in (10, 25, 50, 75, 100):
            assert loaded.select_by_type(p) == reference_selection(ref, p), f"[seed={seed}] {path.name} at {p}%"

    # The YAMLs: the model's own embedding/head names, then per type the chosen modules.
    json_order = {n: ref[n] for n in data}
    for p in (25, 50):
        text = (out / f"{base}_unfrozenparameters_{p}percent.yaml").read_text()
        assert text == _expected_yaml(json_order, p, "^lm_head.weight$", "^model.embed_tokens.weight$")
        entries = yaml.safe_load(text)["unfrozen_parameters"]
        assert len(entries) == 2 + 7 * int(3 * p / 100)


def test_scan_types_option(tmp_path, seed, llama_folder):
    folder, ref = llama_folder
    proc = run_cli("scan", folder, "--device", "cpu", "--types", "self_attn.v_proj", r"mlp\.(up|down)_proj",
                   "--out", tmp_path / "o", "--no-progress", "--model-name", "org/My_Model", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "o" / "snr_results_org-My-Model.json").read_text())
    assert {v["type"] for v in data.values()} == {"self_attn.v_proj", "mlp.up_proj", "mlp.down_proj"}
    assert set(data) == {n for n, r in ref.items() if r["type"] in ("self_attn.v_proj", "mlp.up_proj", "mlp.down_proj")}
    for name, v in data.items():
        assert v["snr"] == pytest.approx(ref[name]["snr"], rel=1e-5), f"[seed={seed}] {name}"


def test_types_command(tmp_path, llama_folder):
    folder, _ = llama_folder
    proc = run_cli("types", folder, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {ln.split()[0]: ln.split()[1:] for ln in proc.stdout.splitlines()[1:] if ln.strip() and ln[0] != " "}
    for t in LLAMA_TYPES:
        assert rows[t] == ["3", LLAMA_SHAPES[t]], proc.stdout
    assert "21 matrices" in proc.stdout
    assert list(tmp_path.glob("*.json")) == [] and list(tmp_path.glob("*.yaml")) == []

    proc = run_cli("types", folder, "--types", "all", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^model\.norm\s+1\s+1x64$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^lm_head\s+1\s+128x64$", proc.stdout, re.M), proc.stdout


def _reference_file(name):
    for folder in (BUNDLED_REFERENCE, SHARED_REFERENCE):
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"published Spectrum result {name} not found in {BUNDLED_REFERENCE} or {SHARED_REFERENCE}")


def test_yaml_reproduces_published_file_byte_for_byte(tmp_path):
    src = _reference_file("snr_results_meta-llama-Meta-Llama-3.1-8B-Instruct.json")
    want = _reference_file("snr_results_meta-llama-Meta-Llama-3.1-8B-Instruct_unfrozenparameters_50percent.yaml")
    proc = run_cli("yaml", src, "--top-percent", "50", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / want.name
    assert [p.name for p in tmp_path.iterdir()] == [want.name]
    assert out.read_bytes() == want.read_bytes()


def test_yaml_from_name_layout(tmp_path):
    src = _reference_file("snr_results_HuggingFaceTB-SmolLM-135M.json")
    data = json.loads(src.read_text())
    rows = {n: {"type": v["type"], "snr": float(v["snr"])} for n, v in data.items()}
    proc = run_cli("yaml", src, "--top-percent", "25", "12.5", "--out", tmp_path / "y", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "y").is_dir(), "--out names a folder (as for scan), even when it does not exist yet"
    for p, label in ((25, "25"), (12.5, "12.5")):
        text = (tmp_path / "y" / f"snr_results_HuggingFaceTB-SmolLM-135M_unfrozenparameters_{label}percent.yaml"
                ).read_text()
        assert text == _expected_yaml(rows, p, "^lm_head.weight$", "^model.embed_tokens.weight$")


@pytest.mark.parametrize("layout", ["name", "sorted"])
def test_yaml_from_generated_results(tmp_path, seed, layout):
    """`yaml` from a results file of fresh random SNRs (no published data needed), in either layout;
    --out is a folder that does not exist yet, two levels deep."""
    import random

    rng = random.Random(seed)
    layers = rng.randint(3, 12)
    rows = {f"model.layers.{i}.{t}": {"type": t, "snr": rng.lognormvariate(0, 1)}
            for t in ("self_attn.q_proj", "mlp.down_proj", "mlp.experts.3.up_proj") for i in range(layers)}
    if layout == "name":
        data = rows
    else:
        data = {}
        for n, r in rows.items():
            data.setdefault(r["type"], {})[n] = r["snr"]
    src = tmp_path / "snr_results_org-Generated.json"
    src.write_text(json.dumps(data))
    out = tmp_path / "a" / "b"
    proc = run_cli("yaml", src, "--top-percent", "30", "75", "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "snr_results_org-Generated_unfrozenparameters_30percent.yaml",
        "snr_results_org-Generated_unfrozenparameters_75percent.yaml"]
    for p in (30, 75):
        text = (out / f"snr_results_org-Generated_unfrozenparameters_{p}percent.yaml").read_text()
        assert text == _expected_yaml(rows, p, "^lm_head.weight$", "^model.embed_tokens.weight$"), \
            f"[seed={seed}] {layout} at {p}%"


def test_scan_demo(tmp_path):
    from spectrum_fast import demo

    try:
        demo.demo_model_folder()
    except spectrum_fast.SourceError as e:
        pytest.skip(str(e))
    proc = run_cli("scan", "--demo", "--device", "cpu", "--no-progress", "--out", tmp_path / "d", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "36 matrices" in proc.stdout
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    # Named after the demo's model (sentence-transformers/all-MiniLM-L6-v2), slugged as spectrum.py does.
    base = "snr_results_sentence-transformers-all-MiniLM-L6-v2"
    assert names == [f"{base}.json", f"{base}_sorted.json", f"{base}_unfrozenparameters_50percent.yaml"]
    entries = yaml.safe_load((tmp_path / "d" / names[2]).read_text())["unfrozen_parameters"]
    # BERT has no head: the line spectrum.py always writes stays; the embedding is the model's own.
    assert entries[0] == "^lm_head.weight$"
    assert entries[1] == "^embeddings.word_embeddings.weight$"
    assert len(entries) == 2 + 6 * 3


def test_output_files_are_world_readable(tmp_path, llama_folder):
    """Results are meant to be shared (pasted into Axolotl configs): they should get the usual
    permissions (0666 & ~umask), not mkstemp's private 0600."""
    import os

    folder, _ = llama_folder
    # A umask whose result differs from both mkstemp's 0600 and the common 0644 (the child inherits it).
    old = os.umask(0o027)
    try:
        proc = run_cli("scan", folder, "--device", "cpu", "--out", tmp_path / "o", "--no-progress", cwd=tmp_path)
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    files = list((tmp_path / "o").iterdir())
    assert len(files) == 3
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o640, f"{p.name}: mode {oct(p.stat().st_mode & 0o777)}"
