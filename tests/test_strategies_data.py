"""The data-driven strategies (spectrum_fast/strategies/salf.py, impact.py, apply.py and
spectrum_fast/slice_masks.py) on CPU with tiny transformers models, against float64 references
written here: the logit lens from the model's own outputs, Taylor and Fisher scores from full
gradients, budgets recounted from the parameters."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from spectrum_fast import SelectionError, freeze, mask_weight_decay
from spectrum_fast.slice_masks import install_slice_mask, slice_mask_of
from spectrum_fast.strategies import apply_masks, impact, salf

transformers = pytest.importorskip("transformers")
from conftest import tiny_gpt_oss, tiny_llama, tiny_qwen2_moe  # noqa: E402 (after the importorskip)

VOCAB = 64


# -- helpers ---------------------------------------------------------------------------------------
def llama(rng: random.Random, dtype=torch.float32, bias: bool = False, layers: int | None = None, **config):
    """A tiny Llama whose logit-lens distributions are far from uniform (initializer_range 0.3)."""
    layers = layers or rng.randint(2, 4)
    defaults = dict(hidden_size=32, intermediate_size=64, vocab_size=VOCAB, initializer_range=0.3, attention_bias=bias,
                    mlp_bias=bias)
    model = tiny_llama(layers=layers, **(defaults | config))
    return model.to(dtype)


def token_batches(rng: random.Random, count: int, padded: bool = False, labels: bool = True, vocab: int = VOCAB):
    batches = []
    for _ in range(count):
        rows, length = rng.randint(1, 3), rng.randint(4, 12)
        ids = torch.randint(0, vocab, (rows, length))
        batch = {"input_ids": ids}
        if padded:  # right padding, at least one real token per row
            mask = torch.ones(rows, length, dtype=torch.long)
            for r in range(rows):
                mask[r, rng.randint(1, length):] = 0
            batch["attention_mask"] = mask
        if labels:
            batch["labels"] = ids.clone()
        batches.append(batch)
    return batches


def block_linears(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and any(p.isdigit() for p in n.split("."))]


def layer_of(name: str) -> int:
    return next(int(p) for p in name.split(".") if p.isdigit())


def module_sizes(model: nn.Module, modules: list[str]) -> dict[str, int]:
    """Elements each module trains: its weight and bias (every parameter named ``<module>.*``)."""
    return {m: sum(p.numel() for n, p in model.named_parameters() if n.startswith(m + ".")) for m in modules}


def snapshot(model: nn.Module):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: (p.requires_grad, None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
            model.training)


def assert_same(before, after, seed) -> None:
    (state0, flags0, training0), (state1, flags1, training1) = before, after
    assert all(torch.equal(state0[k], state1[k]) for k in state0), f"seed={seed}: weights changed"
    for name, (flag, grad) in flags0.items():
        assert flags1[name][0] == flag, f"seed={seed}: {name}.requires_grad changed"
        assert (grad is None) == (flags1[name][1] is None), f"seed={seed}: {name}.grad appeared or vanished"
        assert grad is None or torch.equal(grad, flags1[name][1]), f"seed={seed}: {name}.grad changed"
    assert training0 == training1, f"seed={seed}: train/eval mode changed"


def assert_no_hooks(model: nn.Module, seed) -> None:
    for n, p in model.named_parameters():
        assert not p._post_accumulate_grad_hooks, f"seed={seed}: {n} kept a post-accumulate-grad hook"
        assert not p._backward_hooks, f"seed={seed}: {n} kept a tensor hook"


# -- SALF ------------------------------------------------------------------------------------------
def js(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence of probability rows, from the definition."""
    m = (p + q) / 2
    return 0.5 * (torch.xlogy(p, p / m).sum(-1) + torch.xlogy(q, q / m).sum(-1))


def reference_lens(model, batches):
    """(transition, deviation, change) per block in float64: blocks but the last read through
    model.model.norm and model.lm_head; the last block's distribution is the model's own output."""
    to_final, steps = [], []
    with torch.no_grad():
        for batch in batches:
            out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                        output_hidden_states=True)
            probs = [torch.softmax(model.lm_head(model.model.norm(h)).double(), -1) for h in out.hidden_states[:-1]]
            probs.append(torch.softmax(out.logits.double(), -1))
            mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).reshape(-1).bool()
            probs = [p.reshape(-1, p.shape[-1])[mask] for p in probs]
            to_final.append(torch.stack([js(p, probs[-1]) for p in probs[1:]]))
            steps.append(torch.stack([js(a, b) for a, b in zip(probs[:-1], probs[1:])]))
    final, step = torch.cat(to_final, 1), torch.cat(steps, 1)
    return final.mean(1), final.std(1, correction=0), step.mean(1)


def test_salf_end_of_freezing_layer_is_the_float64_logit_lens_argmin(seed):
    rng = random.Random(seed)
    model = llama(rng, torch.float64)
    batches = token_batches(rng, rng.randint(2, 3), padded=True, labels=rng.random() < 0.5)
    before = snapshot(model)
    selection = salf(model, batches)
    assert_same(before, snapshot(model), seed)

    transition, deviation, change = reference_lens(model, batches)
    how = selection.how
    for key, want in (("transition", transition), ("deviation", deviation), ("change", change)):
        assert np.allclose(how[key], want.numpy(), rtol=1e-8, atol=1e-12), f"seed={seed}: {key} {how[key]} != {want}"
    end = int(np.argmin(deviation[:-1].numpy()))
    assert how["end_of_freezing_layer"] == end, f"seed={seed}: {how['end_of_freezing_layer']} != {end}"
    assert how["tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)

    linears = block_linears(model)
    assert selection.patterns == [n for n in linears if layer_of(n) >= end], f"seed={seed}"
    layers = [layer_of(n) for n in selection.modules]
    assert layers == sorted(layers, reverse=True), f"seed={seed}: modules not deepest first: {selection.modules}"
    report = freeze(model, selection.patterns)
    assert selection.trainable_params == report.trainable == sum(module_sizes(model, selection.patterns).values())
    assert selection.total_params == report.total == sum(p.numel() for p in model.parameters())
    assert selection.strategy == "salf" and how["budget"] is None
    assert json.loads(json.dumps(selection.to_dict()))["how"]["end_of_freezing_layer"] == end


def flops_cost(chosen: list[str], sizes: dict[str, int]) -> int:
    """2 x (trained elements + elements of every module above the lowest trained block)."""
    lowest = min(layer_of(n) for n in chosen)
    return 2 * (sum(sizes[n] for n in chosen) + sum(s for n, s in sizes.items() if layer_of(n) > lowest))


@pytest.mark.parametrize("kind", ["params", "flops"])
def test_salf_budget_takes_deep_blocks_first_and_never_exceeds(seed, kind):
    rng = random.Random(seed)
    model = llama(rng, bias=rng.random() < 0.5, layers=rng.randint(3, 4))
    batches = token_batches(rng, 2)
    sizes = module_sizes(model, block_linears(model))
    cost = (lambda chosen: sum(sizes[n] for n in chosen)) if kind == "params" else (lambda c: flops_cost(c, sizes))
    full = cost(list(sizes))
    budgets = [rng.uniform(0.05, 0.95), 1.0]
    if kind == "params":
        budgets.append(rng.randint(max(sizes.values()), full))  # an int count of elements
    for budget in budgets:
        selection = salf(model, batches, budget=budget, budget_kind=kind)
        limit = budget * full if isinstance(budget, float) else budget
        chosen = selection.patterns
        ctx = f"seed={seed} kind={kind} budget={budget}"
        assert cost(chosen) <= limit, ctx
        assert selection.how["budget"]["used"] == cost(chosen) and selection.how["budget"]["full"] == full, ctx
        assert selection.trainable_params == sum(sizes[n] for n in chosen) == freeze(model, chosen).trainable, ctx
        lowest = min(layer_of(n) for n in chosen)
        assert all(n in chosen for n in sizes if layer_of(n) > lowest), f"{ctx}: a deeper block is not whole"
        # The walk stops at the first block that does not fit whole: none of its modules left out fits.
        whole = all(n in chosen for n in sizes if layer_of(n) == lowest)
        boundary = lowest - 1 if whole else lowest
        for n in sizes:
            if n not in chosen and layer_of(n) == boundary:
                assert cost(chosen + [n]) > limit, f"{ctx}: {n} still fits"
        layers = [layer_of(n) for n in selection.modules]
        assert layers == sorted(layers, reverse=True), ctx
        if budget == 1.0:
            assert chosen == list(sizes), ctx


def test_salf_types_all_keeps_embeddings_below_and_head_above(seed):
    rng = random.Random(seed)
    model = llama(rng)
    selection = salf(model, token_batches(rng, 2), types="all")
    assert "model.embed_tokens" not in selection.patterns and {"lm_head", "model.norm"} <= set(selection.patterns)
    assert selection.trainable_params == freeze(model, selection.patterns).trainable, f"seed={seed}"


def fused_expert_units(model: nn.Module) -> dict[str, list[tuple[str, int | None]]]:
    """The block weights as the scan names them: a fused [E, n, m] tensor as E experts ``<tensor>.<e>`` (with
    row e of ``<tensor>_bias``), any other >= 2-D weight as its module (with every ``<module>.*`` parameter)."""
    names = [n for n, _ in model.named_parameters()]
    units = {}
    for n, p in model.named_parameters():
        if not any(x.isdigit() for x in n.split(".")) or p.dim() < 2 or n.endswith("_bias"):
            continue
        if p.dim() == 3:
            for e in range(p.shape[0]):
                units[f"{n}.{e}"] = [(n, e)] + ([(f"{n}_bias", e)] if f"{n}_bias" in names else [])
        else:
            module = n.removesuffix(".weight")
            units[module] = [(k, None) for k in names if k.startswith(module + ".")]
    return units


@pytest.mark.parametrize("make", [tiny_qwen2_moe, tiny_gpt_oss])
def test_salf_and_impact_count_fused_experts_as_freeze_does(seed, make):
    rng = random.Random(seed)
    model = make()  # float32: transformers' grouped expert matmul takes no float64
    batches = token_batches(rng, 2, vocab=128)
    units = fused_expert_units(model)
    want = reference_scores(model, batches, "taylor", units, dtype=None)
    selections = (salf(model, batches, budget=rng.uniform(0.2, 0.9)),
                  impact(model, batches, budget=rng.uniform(0.05, 0.9)))
    got = selections[1].how["scores"]
    assert list(got) == list(units), f"seed={seed}"
    for name, value in got.items():
        assert value == pytest.approx(float(want.get(name, 0.0)), rel=1e-4, abs=1e-9), f"seed={seed}: {name}"
    for selection in selections:
        assert selection.trainable_params == freeze(model, selection.patterns).trainable, f"seed={seed} {selection}"
        assert selection.trainable_params <= selection.how["budget"]["limit"], f"seed={seed}"


def test_salf_refuses_models_without_a_head_or_a_final_norm(seed):
    rng = random.Random(seed)
    batches = token_batches(rng, 1)
    base = llama(rng).model  # LlamaModel: no lm_head
    with pytest.raises(SelectionError, match="LlamaModel has no output head") as info:
        salf(base, batches)
    assert "\n" not in str(info.value)
    with pytest.raises(SelectionError, match="Sequential has no output head"):
        salf(nn.Sequential(nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB)), batches)
    headless_norm = llama(rng)
    headless_norm.model.norm = None
    with pytest.raises(SelectionError, match="LlamaForCausalLM has no final norm"):
        salf(headless_norm, batches)


def test_salf_bad_requests_raise_one_line_errors_and_change_nothing(seed):
    rng = random.Random(seed)
    model = llama(rng).train()
    batches = token_batches(rng, 2)
    before = snapshot(model)
    cases = [dict(budget=1.5), dict(budget=0.0), dict(budget=-3), dict(budget="half"), dict(budget=True),
             dict(budget=0.5, budget_kind="time"), dict(budget=1e-9), dict(types=["no_such_type"])]
    for kwargs in cases:
        with pytest.raises(SelectionError) as info:
            salf(model, batches, **kwargs)
        assert "\n" not in str(info.value), kwargs
        assert_same(before, snapshot(model), seed)
    for bad in ([], [{"labels": torch.zeros(1, 3, dtype=torch.long)}], [torch.zeros(1, 3, dtype=torch.long)]):
        with pytest.raises(SelectionError):
            salf(model, bad)
        assert_same(before, snapshot(model), seed)


# -- gradient impact -------------------------------------------------------------------------------
def reference_scores(model, batches, score: str, units: dict[str, list[tuple[str, int | None]]], dim=None,
                     dtype=torch.float64):
    """Per unit (parameters or expert slices of them), summed over batches, from full gradients of a copy
    of the model in ``dtype`` (None: the model's own); with ``dim``, a vector per weight: summed over
    every other dim."""
    ref = copy.deepcopy(model) if dtype is None else copy.deepcopy(model).to(dtype)
    for p in ref.parameters():
        p.requires_grad_(True)
    weights = dict(ref.named_parameters())
    totals: dict[str, torch.Tensor] = {}
    for batch in batches:
        ref.zero_grad(set_to_none=True)
        ref(**batch).loss.backward()
        for unit, parts in units.items():
            for name, e in parts:
                g, w = weights[name].grad, weights[name].detach()
                if g is None:
                    continue
                if e is not None:
                    g, w = g[e], w[e]
                elementwise = (g * w).abs() if score == "taylor" else g * g
                value = elementwise.sum() if dim is None else elementwise.sum(1 - dim)
                totals[unit] = totals.get(unit, 0) + value
    return totals


def greedy(densities: list[float], sizes: list[int], limit: float) -> list[int]:
    taken, used = [], 0
    for i in sorted(range(len(sizes)), key=lambda i: (-densities[i], i)):
        if used + sizes[i] <= limit:
            taken.append(i)
            used += sizes[i]
    return taken


@pytest.mark.parametrize("score", ["taylor", "fisher"])
def test_impact_module_scores_match_full_float64_gradients(seed, score):
    rng = random.Random(seed)
    model = llama(rng, torch.float64, bias=rng.random() < 0.5)
    batches = token_batches(rng, rng.randint(2, 3), padded=rng.random() < 0.5)  # >= 2: sum of per-batch |g w|
    linears = block_linears(model)
    sizes = module_sizes(model, linears)
    units = {m: [(n, None) for n, _ in model.named_parameters() if n.startswith(m + ".")] for m in linears}
    want = reference_scores(model, batches, score, units)

    budget = rng.choice([rng.uniform(0.05, 0.9), rng.randint(max(sizes.values()), sum(sizes.values()))])
    selection = impact(model, batches, budget=budget, score=score)
    got = selection.how["scores"]
    assert list(got) == linears
    for m in linears:
        assert got[m] == pytest.approx(float(want[m]), rel=1e-10), f"seed={seed}: {m} {got[m]} != {float(want[m])}"

    limit = budget * sum(sizes.values()) if isinstance(budget, float) else budget
    taken = greedy([float(want[m]) / sizes[m] for m in linears], [sizes[m] for m in linears], limit)
    assert selection.modules == [linears[i] for i in taken], f"seed={seed}"
    assert selection.patterns == [m for m in linears if m in selection.modules]
    assert selection.trainable_params == sum(sizes[m] for m in selection.modules) <= limit, f"seed={seed}"
    assert selection.trainable_params == freeze(model, selection.patterns).trainable


@pytest.mark.parametrize("granularity", ["row", "column"])
def test_impact_rows_and_columns_match_full_gradients(seed, granularity):
    rng = random.Random(seed)
    model = llama(rng, torch.float64)
    batches = token_batches(rng, 2)
    dim = 0 if granularity == "row" else 1
    weights = [f"{m}.weight" for m in block_linears(model)]
    params = dict(model.named_parameters())
    score = rng.choice(["taylor", "fisher"])
    want = reference_scores(model, batches, score, {w: [(w, None)] for w in weights}, dim=dim)
    budget = rng.uniform(0.02, 0.6)
    selection = impact(model, batches, budget=budget, granularity=granularity, score=score)

    units = [(w, i) for w in weights for i in range(params[w].shape[dim])]
    unit_size = {w: params[w].shape[1 - dim] for w in weights}
    total = sum(params[w].numel() for w in weights)
    taken = greedy([float(want[w][i]) / unit_size[w] for w, i in units], [unit_size[w] for w, _ in units],
                   budget * total)
    expected: dict[str, list[int]] = {}
    for k in taken:
        expected.setdefault(units[k][0], []).append(units[k][1])
    key = "rows" if dim == 0 else "columns"
    assert selection.how[key] == {w: sorted(expected[w]) for w in weights if w in expected}, f"seed={seed}"
    assert selection.patterns == [f"^{w}$" for w in weights if w in expected]
    assert selection.trainable_params == sum(len(v) * unit_size[w] for w, v in expected.items()) <= budget * total
    assert json.loads(json.dumps(selection.to_dict()))["how"][key] == selection.how[key]
    for w in weights:
        assert selection.how["weight_scores"][w] == pytest.approx(float(want[w].sum()), rel=1e-10), f"seed={seed}"


@pytest.mark.parametrize("granularity", ["row", "column"])
def test_apply_masks_train_only_the_chosen_rows_or_columns(seed, granularity):
    rng = random.Random(seed)
    model = llama(rng).train()
    batches = token_batches(rng, 2)
    selection = impact(model, batches, budget=rng.uniform(0.05, 0.5), granularity=granularity)
    key, dim = ("rows", 0) if granularity == "row" else ("columns", 1)
    chosen = selection.how[key]
    reference = copy.deepcopy(model)

    report = apply_masks(model, selection)
    assert report.trainable == selection.trainable_params, f"seed={seed}"
    batch = token_batches(rng, 1)[0]
    model(**batch).loss.backward()
    reference(**batch).loss.backward()
    ref_grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if name not in chosen:
            assert not p.requires_grad and p.grad is None, f"seed={seed}: frozen {name} got a gradient"
            continue
        selected = torch.zeros(p.shape[dim], dtype=torch.bool)
        selected[chosen[name]] = True
        grad, want = p.grad.movedim(dim, 0), ref_grads[name].grad.movedim(dim, 0)
        assert torch.count_nonzero(grad[~selected]) == 0, f"seed={seed}: unselected {key} of {name} got a gradient"
        assert torch.allclose(grad[selected], want[selected], rtol=1e-5, atol=1e-7), f"seed={seed}: {name}"

    # AdamW's weight decay, masked: the unselected rows/columns stay bit-identical.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    mask_weight_decay(optimizer)
    optimizer.step()
    for name, indices in chosen.items():
        p = dict(model.named_parameters())[name]
        selected = torch.zeros(p.shape[dim], dtype=torch.bool)
        selected[indices] = True
        moved = (p.detach() != before[name]).movedim(dim, 0)
        assert not moved[~selected].any() and moved[selected].any(), f"seed={seed}: {name}"

    freeze(model, [])  # freezing again removes the masks
    assert all(slice_mask_of(p) is None and not p._backward_hooks for p in model.parameters()), f"seed={seed}"


def test_impact_leaves_no_hooks_grads_or_flags_behind(seed):
    rng = random.Random(seed)
    model = llama(rng)
    batches = token_batches(rng, 2)
    params = list(model.parameters())
    for p in rng.sample(params, len(params) // 3):
        p.requires_grad_(False)
    for p in rng.sample(params, len(params) // 3):
        p.grad = torch.randn_like(p)
    before = snapshot(model)
    for granularity in ("module", "row", "column"):
        impact(model, batches, budget=0.3, granularity=granularity, score=rng.choice(["taylor", "fisher"]))
        assert_same(before, snapshot(model), seed)
        assert_no_hooks(model, seed)

    # A later backward behaves as on an untouched copy: full gradients, nothing dropped or reduced.
    fresh = copy.deepcopy(model)
    for m in (model, fresh):
        for p in m.parameters():
            p.requires_grad_(True)
            p.grad = None
        m(**batches[0]).loss.backward()
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert p.grad is not None and torch.equal(p.grad, q.grad), f"seed={seed}: {name}"


def test_impact_with_loss_fn_on_a_plain_module(seed):
    """Any model and loss: an nn.Sequential ("0", "2" are numbered blocks) scored through loss_fn."""
    rng = random.Random(seed)
    dims = [rng.randint(3, 12) for _ in range(4)]
    model = nn.Sequential(nn.Linear(dims[0], dims[1]), nn.Tanh(), nn.Linear(dims[1], dims[2]), nn.Tanh(),
                          nn.Linear(dims[2], dims[3])).double()
    batches = [(torch.randn(8, dims[0], dtype=torch.float64), torch.randn(8, dims[3], dtype=torch.float64))
               for _ in range(3)]

    kept_gradients = []

    def mse(m, batch):
        # Called before each batch's backward: the previous batch's gradients must be reduced and dropped by now.
        kept_gradients.append([n for n, p in m.named_parameters() if p.grad is not None])
        return ((m(batch[0]) - batch[1]) ** 2).mean()

    selection = impact(model, batches, budget=1.0, loss_fn=mse)
    assert kept_gradients == [[]] * len(batches), f"seed={seed}: gradients kept during the pass: {kept_gradients}"
    for name in ("0", "2", "4"):
        want = 0.0
        for x, t in batches:
            model.zero_grad(set_to_none=True)
            mse(model, (x, t)).backward()
            layer = model.get_submodule(name)
            w, b = layer.weight.detach(), layer.bias.detach()
            want += float((layer.weight.grad * w).abs().sum() + (layer.bias.grad * b).abs().sum())
        assert selection.how["scores"][name] == pytest.approx(want, rel=1e-10), f"seed={seed}: {name}"
    assert selection.patterns == ["0", "2", "4"]


def test_impact_bad_requests_raise_one_line_errors_and_change_nothing(seed):
    rng = random.Random(seed)
    model = llama(rng)
    batches = token_batches(rng, 2)
    before = snapshot(model)
    cases = [(batches, dict(budget=0.5, granularity="block")), (batches, dict(budget=0.5, score="hessian")),
             (batches, dict(budget=2.0)), (batches, dict(budget=0)), (batches, dict(budget=1)),
             (batches, dict(budget=None)), (token_batches(rng, 1, labels=False), dict(budget=0.5)),
             ([], dict(budget=0.5)),
             (batches, dict(budget=0.5, loss_fn=lambda m, b: 0 * m.model.layers[0].mlp.up_proj.weight.sum()))]
    for data, kwargs in cases:
        with pytest.raises(SelectionError) as info:
            impact(model, data, **kwargs)
        assert "\n" not in str(info.value), kwargs
        assert_same(before, snapshot(model), seed)
        assert_no_hooks(model, seed)


def test_apply_masks_refuses_a_selection_for_another_model(seed):
    rng = random.Random(seed)
    model = llama(rng, layers=2)
    selection = impact(model, token_batches(rng, 1), budget=0.2, granularity="row")
    name = next(iter(selection.how["rows"]))
    rows = model.get_parameter(name).shape[0]
    # a weight of layer 1, which the one-layer model lacks (the selection itself may name layer 0's only)
    wrong = [("names a weight it lacks", llama(rng, layers=1), {"rows": {"model.layers.1.self_attn.q_proj.weight": [0]}}),
             ("row out of range", model, {"rows": {name: [0, rows]}}),
             ("not an int", model, {"rows": {name: [0.5]}}),
             ("rows and columns", model, {"rows": {name: [0]}, "columns": {name: [0]}}),
             ("no pattern unfreezes it", model, {"rows": {"model.layers.1.mlp.up_proj.weight": [0]}})]
    for why, target, how in wrong:
        target.train(rng.random() < 0.5)
        bad = copy.copy(selection)
        bad.how = how
        bad.patterns = [p for p in selection.patterns if p != "^model.layers.1.mlp.up_proj.weight$"]
        before = snapshot(target)
        with pytest.raises(SelectionError, match="apply_masks") as info:
            apply_masks(target, bad)
        assert "\n" not in str(info.value), why
        assert_same(before, snapshot(target), seed)
        assert all(slice_mask_of(p) is None for p in target.parameters()), why


# -- slice masks -----------------------------------------------------------------------------------
def test_slice_mask_zeroes_unselected_rows_or_columns_exactly(seed):
    rng = random.Random(seed)
    n, m = rng.randint(2, 20), rng.randint(2, 20)
    dim = rng.randint(0, 1)
    param = nn.Parameter(torch.randn(n, m))
    size = param.shape[dim]
    indices = sorted(rng.sample(range(size), rng.randint(1, size - 1)))
    mask = install_slice_mask(param, dim, indices)
    selected = torch.zeros(size, dtype=torch.bool)
    selected[indices] = True
    frozen_index = next(i for i in range(size) if i not in indices)

    upstream = torch.randn(n, m)
    upstream.select(dim, frozen_index).fill_(float("inf"))  # an overflow in a frozen slice must not leak
    (param * upstream).sum().backward()
    grad, want = param.grad.movedim(dim, 0), upstream.movedim(dim, 0)
    assert torch.equal(grad[selected], want[selected]), f"seed={seed}"
    assert torch.count_nonzero(grad[~selected]) == 0 and not grad.isnan().any(), f"seed={seed}"

    covered = torch.zeros(n, m)
    for view in mask.selected_slices(covered):
        view.fill_(1)
    assert torch.equal(covered.movedim(dim, 0).bool().all(1), selected), f"seed={seed}: selected_slices"
    assert torch.equal(covered.movedim(dim, 0).sum(1) > 0, selected)

    install_slice_mask(param, 1 - dim, [0])  # a new mask replaces the old one
    assert len(param._backward_hooks) == 1 and slice_mask_of(param).dim == 1 - dim
