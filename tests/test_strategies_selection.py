"""One Selection for every strategy (spectrum_fast/strategies/): freeze() trains exactly what a
Selection names, each constructor's count is what receives gradients after a backward pass, the
SNR Selection freezes as the scan result does, the YAML and JSON files read back, and the report
draws what trains. CPU, tiny transformers Llamas (and gpt-oss for fused experts)."""

from __future__ import annotations

import copy
import io
import json
import random
import re

import pytest
import torch
from torch import nn

import spectrum_fast
from spectrum_fast import SelectionError, components, strategies
from spectrum_fast.freeze import preview_freeze, read_unfrozen_yaml, unfrozen_patterns
from spectrum_fast.naming import layer_type, module_name
from spectrum_fast.report import build_selection_report, write_selection_report
from spectrum_fast.report.data import layer_index, trained_grid, trained_tensors
from spectrum_fast.results import REFERENCE_EMBEDDING_PATTERN, REFERENCE_HEAD_PATTERN
from spectrum_fast.strategies import Selection

transformers = pytest.importorskip("transformers")
from conftest import perturb_, tiny_gpt_oss, tiny_llama  # noqa: E402

matplotlib = pytest.importorskip("matplotlib")
import matplotlib.image  # noqa: E402
from test_report import check_png, images_of, parse_page  # noqa: E402


# -- helpers ---------------------------------------------------------------------------------------
def llama(tie: bool = False) -> nn.Module:
    """Hidden 64, 2 blocks; weights perturbed by the seed fixture's torch RNG, so SNRs differ per run."""
    return perturb_(tiny_llama(tie=tie, layers=2))


def axolotl_trainable(model: nn.Module, patterns: list[str]) -> set[str]:
    """Axolotl's rule written out: a tensor trains when re.match of a pattern (dots escaped) accepts
    any of its names; reported under its first name."""
    regexes = [re.compile(p.replace(".", "\\.")) for p in patterns]
    names_of: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)
    return {names[0] for names in names_of.values() if any(r.match(n) for r in regexes for n in names)}


def requires_grad(model: nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def token_batch(rng: random.Random) -> dict:
    ids = torch.randint(0, 128, (2, rng.randint(6, 12)))
    return {"input_ids": ids, "labels": ids.clone()}


def with_gradient(model: nn.Module, batch: dict) -> dict[str, int]:
    """{parameter: elements} of the parameters a backward pass gives a gradient; of a fused tensor
    freeze() masked, its trained experts' elements, after checking the others got exact zeros (an
    expert no token was routed to has a zero gradient too, so zeros alone cannot tell)."""
    from spectrum_fast.expert_masks import expert_mask_of

    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    out = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        mask = expert_mask_of(p)
        if mask is None:
            out[name] = p.numel()
            continue
        frozen = [e for e in range(p.shape[0]) if e not in mask.experts]
        assert not p.grad[frozen].any(), f"{name}: frozen experts {frozen} got a gradient"
        out[name] = p.numel() // p.shape[0] * len(mask.experts)
    return out


def exact_names(selection: Selection) -> set[str]:
    """The parameter names of a Selection made of ``^name$`` patterns."""
    assert all(p.startswith("^") and p.endswith("$") for p in selection.patterns), selection.patterns[:3]
    return {p[1:-1] for p in selection.patterns}


# -- freeze(model, selection) ------------------------------------------------------------------------
def test_freeze_trains_exactly_what_a_selection_names(seed):
    rng = random.Random(seed)
    model = llama()
    names = [n for n, _ in model.named_parameters()]
    picked = rng.sample(names, rng.randint(1, len(names) - 1))
    # Module names (prefixes: a weight and any bias), exact names, and a regex over the layers.
    patterns = [module_name(n) if rng.random() < 0.5 else f"^{n}$" for n in picked]
    patterns.append(rng.choice(["model.layers.[0-9]+.mlp.down_proj", "^lm_head.weight$"]))
    selection = Selection("custom", patterns, 0, 0)
    before = requires_grad(model)
    preview = preview_freeze(model, selection)
    assert requires_grad(model) == before, "preview_freeze changes nothing"
    report = spectrum_fast.freeze(model, selection)
    assert report == preview
    want = axolotl_trainable(model, patterns)
    got = {n for n, on in requires_grad(model).items() if on}
    assert got == want, f"seed={seed}: {sorted(got ^ want)[:4]}"
    assert report.trainable == trainable_count(model) and report.unmatched == []
    # The same as freezing by the list itself: a Selection adds nothing to the rule.
    again = copy.deepcopy(model)
    spectrum_fast.freeze(again, list(patterns))
    assert requires_grad(again) == requires_grad(model)


def test_a_selection_with_top_percent_or_a_pattern_matching_nothing(seed):
    model = llama()
    selection = Selection("custom", ["model.layers.0.mlp", "model.layers.9.mlp"], 1, 2)
    before = requires_grad(model)
    with pytest.raises(SelectionError, match=r"already says what trains: drop top_percent=50") as caught:
        spectrum_fast.freeze(model, selection, top_percent=50)
    assert len(str(caught.value).splitlines()) == 1
    assert requires_grad(model) == before, "nothing changes on a refused freeze"
    # As for a list of patterns: an unmatched pattern is reported, not an error.
    report = spectrum_fast.freeze(model, selection)
    assert report.unmatched == ["model.layers.9.mlp"]
    assert {n for n, on in requires_grad(model).items() if on} == axolotl_trainable(model, ["model.layers.0.mlp"])
    with pytest.raises(SelectionError, match=r"cannot freeze from a int: pass a Selection"):
        spectrum_fast.freeze(model, 42)


# -- snr ----------------------------------------------------------------------------------------------
def test_snr_selection_freezes_as_the_scan_result_does(seed):
    rng = random.Random(seed)
    for tie in (False, True):
        model = llama(tie=tie)
        result = spectrum_fast.scan(model, device="cpu", progress=False)
        p = rng.choice([10, 25, 50, 75, 100, rng.uniform(1, 100)])
        selection = strategies.snr(result, p, model=model)
        assert selection.patterns == unfrozen_patterns(result, p)
        assert selection.modules == result.select(p)
        assert selection.how["top_percent"] == p
        per_type = selection.how["per_type"]
        assert sum(t["selected"] for t in per_type.values()) == len(selection.modules)
        assert sum(t["matrices"] for t in per_type.values()) == len(result.rows)

        by_result, by_selection = copy.deepcopy(model), copy.deepcopy(model)
        spectrum_fast.freeze(by_result, result, top_percent=p)
        report = spectrum_fast.freeze(by_selection, selection)
        assert requires_grad(by_selection) == requires_grad(by_result), f"seed={seed} p={p} tie={tie}"
        assert selection.trainable_params == trainable_count(by_selection) == report.trainable
        assert selection.total_params == sum(p.numel() for p in model.parameters())  # a tied tensor once
        assert 0 < selection.fraction <= 1

        # Scanning the module itself gives the same selection (same weights, same SNRs).
        scanned = strategies.snr(model, p, device="cpu", progress=False)
        assert (scanned.patterns, scanned.trainable_params) == (selection.patterns, selection.trainable_params)


def test_snr_selection_from_a_result_json_adds_spectrum_lines(seed, tmp_path):
    model = llama()
    result = spectrum_fast.scan(model, device="cpu", progress=False, model_name="tiny")
    (path, _) = result.to_spectrum_json(tmp_path)
    selection = strategies.snr(path, 50, model=model)
    assert selection.patterns[:2] == [REFERENCE_HEAD_PATTERN, REFERENCE_EMBEDDING_PATTERN]
    by_path = copy.deepcopy(model)
    spectrum_fast.freeze(by_path, path, top_percent=50)
    spectrum_fast.freeze(model, selection)
    assert requires_grad(model) == requires_grad(by_path)
    assert selection.trainable_params == trainable_count(model)


def test_snr_bad_requests_are_one_line(seed, tmp_path):
    model = llama()
    result = spectrum_fast.scan(model, device="cpu", progress=False)
    for call, message in [
        (lambda: strategies.snr(result, 50), r"needs the model the selection is for: pass model="),
        (lambda: strategies.snr(result, 50, model="m"), r"got a str"),
        (lambda: strategies.snr(result, 0, model=model), r"outside \(0, 100\]"),
        (lambda: strategies.snr(result, 50, model=model, types="all"), r"scan options \['types'\] apply only"),
        (lambda: strategies.snr(tmp_path / "none.json", 50, model=model), r"no such result file"),
    ]:
        with pytest.raises(SelectionError, match=message) as caught:
            call()
        assert len(str(caught.value).splitlines()) == 1


# -- low-rank factors --------------------------------------------------------------------------------
def test_lowrank_selection_counts_what_gets_gradients(seed):
    rng = random.Random(seed)
    model = llama()
    report = spectrum_fast.decompose(model, rank=rng.randint(1, 8))
    # Whatever the caller leaves trainable trains too: freeze some non-factor parameters first.
    others = [p for n, p in model.named_parameters() if not n.endswith(("first.weight", "second.weight"))]
    for p in rng.sample(others, rng.randint(0, len(others))):
        p.requires_grad_(False)
    selection = strategies.lowrank_selection(model, report)
    factors = {f"{d.name}.{f}.weight" for d in report.modules for f in ("first", "second")}
    left = {n for n, p in model.named_parameters() if p.requires_grad}
    assert exact_names(selection) == factors | left, f"seed={seed}"
    assert selection.trainable_params == trainable_count(model)
    assert selection.modules == [d.name for d in report.modules]
    assert selection.how["ranks"] == {str(report.modules[0].rank): len(report.modules)}
    assert selection.how["lowrank_params"] == report.lowrank_params

    graded = with_gradient(model, token_batch(rng))
    assert set(graded) == exact_names(selection) and sum(graded.values()) == selection.trainable_params
    spectrum_fast.freeze(model, selection)  # changes nothing: the selection is what trains
    assert {n for n, on in requires_grad(model).items() if on} == exact_names(selection)


def test_lowrank_selection_follows_sequential_freezing(seed):
    rng = random.Random(seed)
    model = llama()
    report = spectrum_fast.decompose(model, rank=rng.randint(1, 8))
    steps = rng.randint(1, 3)
    sf = spectrum_fast.SequentialFreezing(model, steps=steps, start=rng.choice(["first", "second"]))
    sf.apply()
    batch = token_batch(rng)
    seen = set()
    for step in range(0, 2 * steps, steps):
        sf.at_step(step)
        selection = strategies.lowrank_selection(model, report, sequential=sf)
        assert selection.how["sequential"]["trained_factor"] == sf.trained_factor
        graded = with_gradient(model, batch)
        assert set(graded) == exact_names(selection), f"seed={seed} step {step}"
        assert sum(graded.values()) == selection.trainable_params == trainable_count(model)
        idle = "second" if sf.trained_factor == "first" else "first"
        assert not any(n.endswith(f"{idle}.weight") for n in exact_names(selection))
        seen.add(sf.trained_factor)
    assert seen == {"first", "second"}


def test_lowrank_selection_refuses_what_is_not_this_models(seed):
    model = llama()
    with pytest.raises(SelectionError, match=r"no LowRankLinear layer: call spectrum_fast\.decompose"):
        strategies.lowrank_selection(model)
    other = llama()
    report = spectrum_fast.decompose(model, rank=2)
    other_report = spectrum_fast.decompose(other, rank=3)
    with pytest.raises(SelectionError, match=r"is not a LowRankLinear of rank 3 in this model"):
        strategies.lowrank_selection(model, other_report)
    with pytest.raises(SelectionError, match=r"made for another model"):
        strategies.lowrank_selection(model, report, spectrum_fast.SequentialFreezing(other, steps=1))


# -- component scales ----------------------------------------------------------------------------------
def test_components_selection_counts_the_allocated_scales(seed):
    rng = random.Random(seed)
    model = llama()
    batches = [token_batch(rng) for _ in range(3)]
    with pytest.raises(SelectionError, match="keeps no component scale"):
        strategies.components_selection(model, components.Allocation())
    allocation = components.allocate(model, batches, budget=rng.randint(1, 40), rank=4, steps=1,
                                     groups=rng.choice(["module", 2]))
    with pytest.raises(SelectionError, match=r"call spectrum_fast\.components\.apply\(model, allocation\) first"):
        strategies.components_selection(model, allocation)
    components.apply(model, allocation)
    selection = strategies.components_selection(model, allocation)
    assert exact_names(selection) == {f"{name}.delta" for name in allocation.kept}
    assert selection.trainable_params == allocation.kept_nodes == trainable_count(model), f"seed={seed}"
    assert sorted(selection.modules) == sorted(allocation.kept)
    assert selection.how["kept"] == allocation.kept and selection.how["budget"] == allocation.kept_nodes
    graded = with_gradient(model, batches[0])
    assert set(graded) == exact_names(selection) and sum(graded.values()) == selection.trainable_params
    before = requires_grad(model)
    spectrum_fast.freeze(model, selection)
    assert requires_grad(model) == before


# -- whatever requires_grad says -------------------------------------------------------------------
def test_trainable_selection_describes_requires_grad(seed):
    rng = random.Random(seed)
    model = llama()
    for p in model.parameters():
        p.requires_grad_(rng.random() < 0.4)
    selection = strategies.trainable_selection(model, "lora", how={"r": 8})
    assert selection.strategy == "lora" and selection.how["r"] == 8
    assert selection.trainable_params == trainable_count(model)
    assert selection.total_params == sum(p.numel() for p in model.parameters())
    graded = with_gradient(model, token_batch(rng)) if selection.trainable_params else {}
    assert set(graded) == exact_names(selection)
    fresh = copy.deepcopy(model)
    for p in fresh.parameters():
        p.requires_grad_(True)
    spectrum_fast.freeze(fresh, selection)
    assert requires_grad(fresh) == requires_grad(model)


def test_trainable_selection_keeps_the_experts_a_mask_trains(seed):
    rng = random.Random(seed)
    model = tiny_gpt_oss()
    fused = [n for n, p in model.named_parameters() if p.dim() == 3]
    experts = {n: sorted(rng.sample(range(4), rng.randint(1, 3))) for n in rng.sample(fused, 2)}
    report = spectrum_fast.freeze(model, [f"{n}.{e}" for n, es in experts.items() for e in es] + ["lm_head"])
    selection = strategies.trainable_selection(model)
    assert selection.trainable_params == report.trainable, f"seed={seed}"
    again = spectrum_fast.freeze(copy.deepcopy(model), selection)
    assert (again.trainable, again.trained_experts) == (report.trainable, report.trained_experts)
    graded = with_gradient(model, token_batch(rng))
    assert sum(graded.values()) == selection.trainable_params, f"seed={seed}"


# -- files ---------------------------------------------------------------------------------------------
def test_yaml_round_trip_and_the_scan_results_layout(seed, tmp_path):
    rng = random.Random(seed)
    model = llama()
    result = spectrum_fast.scan(model, device="cpu", progress=False)
    selection = strategies.snr(result, 50, model=model)
    path = selection.to_yaml(tmp_path)
    assert path.name == "snr_unfrozen_parameters.yaml"
    assert read_unfrozen_yaml(path) == selection.patterns
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"# {selection}" and lines[1] == "unfrozen_parameters:"
    # The list lines are the scan result's own, written the same way (the order of the first two aside).
    listed = [ln for ln in result.yaml_text(50).splitlines() if ln.startswith("- ")]
    assert sorted(lines[2:]) == sorted(listed)
    frozen_by_file = copy.deepcopy(model)
    spectrum_fast.freeze(frozen_by_file, path)
    spectrum_fast.freeze(model, selection)
    assert requires_grad(frozen_by_file) == requires_grad(model)

    # Patterns YAML would read otherwise (a flow list, an alias, a bool, a comment) come back as written.
    odd = ["[ab].x", "*x", "true", "12", "a: b", "x #y", "model.layers.[0-9]+.mlp", "é", ""]
    weird = Selection("custom", rng.sample(odd, len(odd)), 0, 0)
    assert read_unfrozen_yaml(weird.to_yaml(tmp_path / "odd.yaml")) == weird.patterns

    # A folder that does not exist yet, written with a trailing separator, is a folder (made), not a file name.
    made = selection.to_yaml(f"{tmp_path}/new/")
    assert made == tmp_path / "new" / "snr_unfrozen_parameters.yaml" and read_unfrozen_yaml(made) == selection.patterns
    reference = result.to_yaml(f"{tmp_path}/other/", 50)
    assert reference == tmp_path / "other" / result.yaml_filename(50) and reference.read_text() == result.yaml_text(50)


def test_json_round_trip_and_bad_files(seed, tmp_path):
    rng = random.Random(seed)
    model = llama()
    selection = strategies.snr(spectrum_fast.scan(model, device="cpu", progress=False), rng.uniform(5, 100),
                               model=model)
    path = selection.to_json(tmp_path / "s.json")
    back = Selection.from_json(path)
    assert back == selection
    assert json.loads(path.read_text())["fraction"] == pytest.approx(selection.fraction)
    data = selection.to_dict()
    for key, bad in [("patterns", "x"), ("trainable_params", 1.5), ("how", []), ("modules", [1]),
                     ("strategy", None)]:
        with pytest.raises(SelectionError, match=f"field '{key}' should be") as caught:
            Selection.from_dict(data | {key: bad}, "s.json")
        assert len(str(caught.value).splitlines()) == 1
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SelectionError, match=r"bad\.json: not valid JSON"):
        Selection.from_json(tmp_path / "bad.json")
    with pytest.raises(SelectionError, match=r"no such file"):
        Selection.from_json(tmp_path / "missing.json")


# -- the report ----------------------------------------------------------------------------------------
def test_the_report_maps_what_trains(seed, tmp_path):
    rng = random.Random(seed)
    model = llama()
    result = spectrum_fast.scan(model, device="cpu", progress=False)
    selection = strategies.snr(result, 50, model=model)
    chosen = set(result.select(50))

    rows, _ = trained_tensors(model, selection)
    grid = trained_grid(rows)
    for r in rows:  # written out: a block's weight trains when its module was selected; norms never do
        layer = layer_index(r.name)
        if layer is None:
            continue
        want = 1.0 if module_name(r.name) in chosen else 0.0
        assert grid.values[grid.types.index(layer_type(module_name(r.name))), grid.layers.index(layer)] == want

    out, png_dir = tmp_path / "selection.html", tmp_path / "png"
    written = write_selection_report(selection, model, out, png_dir)
    assert written[0] == out and len(written) == 2
    text = out.read_text(encoding="utf-8")
    page = parse_page(text)
    assert set(page.sections) == {"summary", "how", "map", "outside"}
    assert all(link.startswith(("data:", "#")) for link in page.links), "self-contained: nothing fetched"
    (image,) = images_of(page.sections["map"])
    assert image == written[1].read_bytes()
    check_png(image)
    pixels = matplotlib.image.imread(io.BytesIO(image), format="png")[..., :3]
    green = ((pixels[..., 1] > 0.3) & (pixels[..., 0] < 0.2)).mean()
    red = ((pixels[..., 0] > 0.5) & (pixels[..., 1] < 0.2)).mean()
    assert green > 0.05 and red > 0.05, f"seed={seed}: half the cells train, half are frozen ({green:.2f}, {red:.2f})"
    assert f"{selection.trainable_params:,}" in text and "lm_head.weight" in text

    # On another model the page says the counts differ; bad arguments are one line.
    other = llama()
    spectrum_fast.decompose(other, rank=rng.randint(1, 4))
    assert "not the selection&#x27;s count" in build_selection_report(selection, other)[0]
    with pytest.raises(SelectionError, match="takes a spectrum_fast.strategies.Selection, got a ScanResult"):
        build_selection_report(result, model)
    with pytest.raises(SelectionError, match="needs the model the selection is for"):
        build_selection_report(selection, None)


def test_every_constructor_gives_plain_json(seed):
    """``how`` is plain JSON for each strategy (json.dumps raises otherwise), so a comparison can save
    them side by side and read them back equal."""
    model = llama()
    made = [strategies.snr(model, 50, device="cpu", progress=False), strategies.trainable_selection(model, "full")]
    made.append(strategies.lowrank_selection(model, spectrum_fast.decompose(model, rank=2)))
    wrapped = llama()
    batches = [token_batch(random.Random(seed)) for _ in range(2)]
    components.apply(wrapped, allocation := components.allocate(wrapped, batches, budget=3, rank=2, steps=1))
    made.append(strategies.components_selection(wrapped, allocation))
    for s in made:
        assert Selection.from_dict(json.loads(json.dumps(s.to_dict()))) == s, s.strategy
