"""The folder Axolotl's Spectrum plugin reads: ``model_snr_results/snr_results_<slug>.json``.

What the plugin does (axolotl-ai-cloud/axolotl, src/axolotl/integrations/spectrum/__init__.py,
``SpectrumPlugin.pre_model_load``), restated here from reading it, to check our files against:
- model name = cfg["spectrum_model_name"] if set, else cfg["base_model"]; slug = name with "/" and
  "_" replaced by "-";
- it opens "./model_snr_results/snr_results_<slug>.json" relative to the working directory and
  json.load()s it (if that fails it downloads the published file instead);
- for each entry name -> info it groups (name, info["snr"]) by info["type"] (types in order of first
  appearance), sorts each group with sorted(key=snr, reverse=True), keeps the first
  int(len(group) * spectrum_top_fraction);
- unfrozen_parameters = ["^lm_head.weight$", "^model.embed_tokens.weight$"] + the kept names, type by type.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import yaml
from conftest import BUNDLED_REFERENCE

import spectrum_fast
from spectrum_fast.cli import main
from spectrum_fast.results import MatrixRow, ScanResult


def plugin_unfrozen_parameters(cfg: dict) -> list[str]:
    """Axolotl's Spectrum plugin, as described in this module's docstring (local file only)."""
    name = cfg.get("spectrum_model_name") or cfg["base_model"]
    slug = name.replace("/", "-").replace("_", "-")
    with open(f"./model_snr_results/snr_results_{slug}.json", encoding="utf-8") as f:
        data = json.load(f)
    groups: dict[str, list[tuple[str, float]]] = {}
    for layer, info in data.items():
        groups.setdefault(info["type"], []).append((layer, info["snr"]))
    kept = []
    for members in groups.values():
        ranked = sorted(members, key=lambda m: m[1], reverse=True)
        kept += [m[0] for m in ranked[: int(len(members) * cfg["spectrum_top_fraction"])]]
    return ["^lm_head.weight$", "^model.embed_tokens.weight$"] + kept


def random_result(rng: random.Random) -> ScanResult:
    """Rows of several types in interleaved model order, with ties and one NaN in some types."""
    rows = []
    types = [f"mlp.experts.{e}.down_proj" for e in range(3)] + ["self_attn.q_proj", "mlp.gate"]
    for layer in range(rng.randint(4, 12)):
        for t in types:
            snr = rng.choice([rng.lognormvariate(0, 1), 1.0])  # 1.0 often: ties must keep model order
            rows.append(MatrixRow(f"model.layers.{layer}.{t}", t, snr))
    for t in rng.sample(types, 2):
        rng.choice([r for r in rows if r.type == t]).snr = math.nan
    return ScanResult(rows=rows, model_name="my_org/Tiny_Model-v2")


def yaml_entries(text: str) -> list[str]:
    return yaml.safe_load(text)["unfrozen_parameters"]


def test_layout_is_what_the_plugin_reads(tmp_path, seed, monkeypatch):
    result = random_result(random.Random(seed))
    path = result.to_axolotl(tmp_path)
    assert path == tmp_path / "model_snr_results" / "snr_results_my-org-Tiny-Model-v2.json"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file left"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert list(data) == [r.name for r in result.rows], "one entry per row, in model order"
    for r in result.rows:
        want = -math.inf if math.isnan(r.snr) else r.snr
        assert data[r.name] == {"snr": want, "type": r.type}, f"[seed={seed}] {r.name}"

    monkeypatch.chdir(tmp_path)
    for p in (10, 25, 50, 75):
        cfg = {"base_model": "elsewhere/mirror", "spectrum_model_name": "my_org/Tiny_Model-v2",
               "spectrum_top_fraction": p / 100}
        ours = yaml_entries(result.yaml_text(p, reference_names=True))
        assert plugin_unfrozen_parameters(cfg) == ours, f"[seed={seed}] at {p}%"


def test_model_name_argument_names_the_file(tmp_path, seed, monkeypatch):
    result = random_result(random.Random(seed))
    path = result.to_axolotl(tmp_path, model_name="meta-llama/Meta-Llama-3.1-8B")
    assert path.name == "snr_results_meta-llama-Meta-Llama-3.1-8B.json"
    monkeypatch.chdir(tmp_path)
    cfg = {"base_model": "meta-llama/Meta-Llama-3.1-8B", "spectrum_top_fraction": 0.5}
    assert plugin_unfrozen_parameters(cfg) == yaml_entries(result.yaml_text(50, reference_names=True))


def test_cli_converts_the_published_sorted_layout(tmp_path, monkeypatch, capsys):
    """The published Llama-3.1-8B-Instruct file is in the sorted layout, which the plugin cannot read
    (it looks up info["type"]): `spectrum-fast yaml --axolotl` rewrites it in the plugin's layout, and the
    plugin then builds exactly the published 50% YAML."""
    name = "snr_results_meta-llama-Meta-Llama-3.1-8B-Instruct"
    out = tmp_path / "run"
    assert main(["yaml", str(BUNDLED_REFERENCE / f"{name}.json"), "--top-percent", "50", "--out", str(out),
                 "--axolotl"]) == 0
    printed = capsys.readouterr().out
    assert "`plugins: [axolotl.integrations.spectrum.SpectrumPlugin]`" in printed
    assert "`spectrum_top_fraction: 0.5`" in printed
    assert "`spectrum_model_name: meta-llama-Meta-Llama-3.1-8B-Instruct`" in printed
    monkeypatch.chdir(out)
    cfg = {"spectrum_model_name": "meta-llama/Meta-Llama-3.1-8B-Instruct", "spectrum_top_fraction": 0.5}
    published = yaml_entries((BUNDLED_REFERENCE / f"{name}_unfrozenparameters_50percent.yaml").read_text())
    assert plugin_unfrozen_parameters(cfg) == published


def test_cli_scan_writes_the_folder(tmp_path, seed, capsys):
    from conftest import perturb_, tiny_llama

    pytest.importorskip("transformers")
    folder = tmp_path / "tiny_llama"
    perturb_(tiny_llama()).save_pretrained(folder)
    out = tmp_path / "out"
    assert main(["scan", str(folder), "--device", "cpu", "--no-progress", "--out", str(out), "--axolotl",
                 "--top-percent", "25", "50"]) == 0
    printed = capsys.readouterr().out
    written = out / "model_snr_results" / "snr_results_tiny-llama.json"
    assert f"wrote {written}" in printed and "`spectrum_top_fraction: 0.25` (or 0.5)" in printed
    on_disk = json.loads(written.read_text())
    main_json = json.loads((out / "snr_results_tiny-llama.json").read_text())
    assert on_disk == main_json, "no NaN rows here: the plugin's file equals the main JSON"


def test_freeze_from_result_json_trains_what_the_plugin_lists(tmp_path, seed, monkeypatch):
    """freeze(model, 'snr_results_<m>.json', top_percent=p) uses the plugin's list for that file."""
    from conftest import tiny_llama

    pytest.importorskip("transformers")
    model = tiny_llama()
    result = spectrum_fast.scan(model, device="cpu", progress=False, model_name="tiny")
    path = result.to_axolotl(tmp_path)
    with pytest.raises(spectrum_fast.SelectionError, match="needs top_percent"):
        spectrum_fast.freeze(model, path)
    report = spectrum_fast.freeze(model, path, top_percent=50)
    monkeypatch.chdir(tmp_path)
    listed = plugin_unfrozen_parameters({"base_model": "tiny", "spectrum_top_fraction": 0.5})
    want = {"lm_head.weight", "model.embed_tokens.weight"} | {f"{n}.weight" for n in listed[2:]}
    assert set(report.trainable_tensors) == want and report.unmatched == []


def test_cli_notes_when_the_plugin_keeps_one_fewer(tmp_path, seed, monkeypatch, capsys):
    """100 matrices at 29%: int(100 * 29 / 100) = 29, the plugin's int(100 * 0.29) = 28."""
    rng = random.Random(seed)
    rows = [MatrixRow(f"model.layers.{i}.mlp.down_proj", "mlp.down_proj", rng.random()) for i in range(100)]
    rows += [MatrixRow(f"model.layers.{i}.self_attn.q_proj", "self_attn.q_proj", rng.random()) for i in range(8)]
    json_path = ScanResult(rows=rows, model_name="m").to_spectrum_json(tmp_path)[0]
    out = tmp_path / "run"
    assert main(["yaml", str(json_path), "--top-percent", "29", "50", "--out", str(out), "--axolotl"]) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note:")]
    assert notes == ["note: at spectrum_top_fraction 0.29 Axolotl keeps one matrix fewer than the 29% YAML in "
                     "1 types (mlp.down_proj): float rounding of count * fraction"], notes
    monkeypatch.chdir(out)
    plugin = plugin_unfrozen_parameters({"base_model": "m", "spectrum_top_fraction": 0.29})
    ours = yaml_entries((out / "snr_results_m_unfrozenparameters_29percent.yaml").read_text())
    assert len(ours) - len(plugin) == 1 and set(plugin) < set(ours)
