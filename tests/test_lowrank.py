"""Low-rank decomposition (spectrum_fast/lowrank.py, ranks.py) against float64 SVDs computed here,
and SequentialFreezing in a plain loop and in transformers' Trainer (CPU, tiny models)."""

from __future__ import annotations

import random
import re

import pytest
import torch
from torch import nn

import spectrum_fast
from spectrum_fast import LowRankLinear, SelectionError, SequentialFreezing, decompose
from spectrum_fast.ranks import quantize_rank

transformers = pytest.importorskip("transformers")


# -- helpers ---------------------------------------------------------------------------------------
def saving_cap(n: int, m: int) -> int:
    """The largest r with r (n + m) < n m, by counting down (independent of ranks.max_saving_rank)."""
    r = min(n, m)
    while r > 0 and r * (n + m) >= n * m:
        r -= 1
    return r


def structured_weight(n: int, m: int, rng: random.Random, dtype=torch.float64) -> torch.Tensor:
    """U diag(s) V^T with a random decay rate, so matrices differ in how fast their energy falls."""
    k = min(n, m)
    u, _ = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(m, k, dtype=torch.float64))
    decay = rng.uniform(0.08, 0.4)
    s = torch.exp(-decay * torch.arange(k, dtype=torch.float64)) * (1 + 0.2 * torch.rand(k, dtype=torch.float64))
    s = s.sort(descending=True).values * rng.uniform(0.5, 3)
    return ((u * s) @ v.T).to(dtype)


def linear_of(weight: torch.Tensor, bias: bool = True) -> nn.Linear:
    n, m = weight.shape
    linear = nn.Linear(m, n, bias=bias, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return linear


def chain(dims: list[int], rng: random.Random) -> nn.Sequential:
    """Linear, Tanh, Linear, ...: module names "0", "2", ... are numbered blocks, so types="auto" takes them."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims, dims[1:]):
        layers += [linear_of(structured_weight(d_out, d_in, rng)), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if type(m) is nn.Linear}


def product(layer: LowRankLinear) -> torch.Tensor:
    """B @ A, detached."""
    return (layer.second.weight @ layer.first.weight).detach()


def shares(w: torch.Tensor) -> torch.Tensor:
    s2 = torch.linalg.svdvals(w.double()) ** 2
    return s2 / s2.sum()


def tiny_llama(**overrides):
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128, max_position_embeddings=32,
                                   tie_word_embeddings=False, **overrides)
    return transformers.LlamaForCausalLM(cfg)


def block_linears(model: nn.Module) -> list[str]:
    """The nn.Linear modules inside numbered blocks: what types="auto" must decompose."""
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and any(p.isdigit() for p in n.split("."))]


# -- LowRankLinear ---------------------------------------------------------------------------------
def test_from_linear_shapes_dtype_and_exact_reconstruction_at_full_rank(seed):
    rng = random.Random(seed)
    n, m = rng.randint(5, 40), rng.randint(5, 40)
    linear = linear_of(torch.randn(n, m, dtype=torch.float64))
    with torch.no_grad():
        linear.bias.normal_()
    full = min(n, m)
    layer = LowRankLinear.from_linear(linear, full)
    assert (layer.in_features, layer.out_features, layer.rank) == (m, n, full), f"seed={seed}"
    assert layer.first.weight.shape == (full, m) and layer.second.weight.shape == (n, full), f"seed={seed}"
    assert layer.first.bias is None and layer.second.weight.dtype == torch.float64, f"seed={seed}"
    rel = float(torch.linalg.norm(product(layer) - linear.weight.detach()) / torch.linalg.norm(linear.weight.detach()))
    assert rel < 1e-12, f"seed={seed} {n}x{m}: ||B A - W|| / ||W|| = {rel:.3e}"
    assert torch.equal(layer.second.bias, linear.bias), f"seed={seed}"
    assert layer.second.bias is not linear.bias, f"seed={seed}: the bias must be a copy, not shared"
    x = torch.randn(3, m, dtype=torch.float64)
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-11, atol=1e-11, msg=f"seed={seed}")
    # sqrt(S) split evenly: both factors have the same singular values, sqrt(S)
    s = torch.linalg.svdvals(linear.weight.detach())
    for factor in (layer.first.weight, layer.second.weight):
        torch.testing.assert_close(torch.linalg.svdvals(factor.detach()), s.sqrt(), rtol=1e-10, atol=1e-12,
                                   msg=f"seed={seed}")


def test_truncation_error_is_the_dropped_singular_values(seed):
    """Eckart-Young: ||W - B A||_F^2 == sum of the dropped S^2."""
    rng = random.Random(seed)
    n, m = rng.randint(8, 60), rng.randint(8, 60)
    w = structured_weight(n, m, rng)
    rank = rng.randint(1, min(n, m) - 1)
    layer = LowRankLinear.from_linear(linear_of(w, bias=False), rank)
    err2 = float(torch.linalg.norm(w - product(layer)) ** 2)
    tail = float((torch.linalg.svdvals(w)[rank:] ** 2).sum())
    assert abs(err2 - tail) <= 1e-10 * float(torch.linalg.norm(w) ** 2), \
        f"seed={seed} {n}x{m} rank {rank}: error^2 {err2!r} vs tail {tail!r}"


def test_from_linear_keeps_float32_and_refuses_ranks_beyond_the_short_side(seed):
    linear = nn.Linear(24, 16)
    layer = LowRankLinear.from_linear(linear, 4)
    assert layer.first.weight.dtype == torch.float32 and layer.second.bias.dtype == torch.float32, f"seed={seed}"
    for bad in (0, 17, 2.0):
        with pytest.raises(SelectionError, match=r"nn\.Linear\(24, 16\): rank must be"):
            LowRankLinear.from_linear(linear, bad)


def test_to_linear_round_trip(seed):
    rng = random.Random(seed)
    n, m = rng.randint(4, 30), rng.randint(4, 30)
    linear = linear_of(torch.randn(n, m, dtype=torch.float64))
    with torch.no_grad():
        linear.bias.normal_()
    back = LowRankLinear.from_linear(linear, min(n, m)).to_linear()
    assert type(back) is nn.Linear and back.weight.shape == (n, m), f"seed={seed}"
    torch.testing.assert_close(back.weight, linear.weight, rtol=1e-12, atol=1e-12, msg=f"seed={seed}")
    assert torch.equal(back.bias, linear.bias), f"seed={seed}"
    # at a truncated rank: the merged weight is the factors' product, and the forward is unchanged
    layer = LowRankLinear.from_linear(linear, max(1, min(n, m) // 2))
    merged = layer.to_linear()
    torch.testing.assert_close(merged.weight.detach(), product(layer), msg=f"seed={seed}")
    x = torch.randn(5, m, dtype=torch.float64)
    torch.testing.assert_close(merged(x), layer(x), msg=f"seed={seed}")


def test_randomized_svd_factors_a_low_rank_weight(seed):
    rng = random.Random(seed)
    n, m, k = rng.randint(60, 120), rng.randint(60, 120), rng.randint(2, 12)
    w = torch.randn(n, k) @ torch.randn(k, m)
    layer = LowRankLinear.from_linear(linear_of(w, bias=False), k, svd="randomized", seed=seed)
    rel = float(torch.linalg.norm(product(layer) - w) / torch.linalg.norm(w))
    assert rel < 1e-4, f"seed={seed} {n}x{m} rank {k}: relative error {rel:.2e}"


# -- rank quantization -------------------------------------------------------------------------------
def test_quantize_rank_rounds_up_to_multiples_and_stops_at_the_cap(seed):
    rng = random.Random(seed)
    for _ in range(200):
        q, cap = rng.choice([8, 16, 64]), rng.randint(1, 500)
        r = rng.randint(1, cap)
        got = quantize_rank(r, q, cap)
        want = min(-(-r // q) * q, cap)  # ceil, then the cap
        assert got == max(r, want), f"seed={seed} rank {r} q {q} cap {cap}: {got}"
        assert got % q == 0 or got == cap, f"seed={seed}: {got} is neither a multiple of {q} nor the cap {cap}"
    assert quantize_rank(37, None, 40) == 37 and quantize_rank(37, 1, 40) == 37


def test_energy_mode_keeps_at_least_the_energy_asked_with_the_smallest_rank(seed):
    rng = random.Random(seed)
    dims = [rng.randint(24, 80) for _ in range(5)]
    model = chain(dims, rng)
    dense = weights_of(model)
    energy = rng.uniform(0.3, 0.7)
    report = decompose(model, energy=energy, quantize=None)
    assert [d.name for d in report.modules] == list(dense), f"seed={seed}"
    for d in report.modules:
        share = shares(dense[d.name])
        kept = float(share[: d.rank].sum())
        assert kept >= energy, f"seed={seed} {d.name}: rank {d.rank} keeps {kept} < {energy}"
        assert d.rank == 1 or float(share[: d.rank - 1].sum()) < energy, \
            f"seed={seed} {d.name}: rank {d.rank - 1} already keeps {energy}"
        assert abs(d.kept_energy - kept) < 1e-12, f"seed={seed} {d.name}: report {d.kept_energy} vs {kept}"
        assert isinstance(model.get_submodule(d.name), LowRankLinear), f"seed={seed} {d.name} not replaced"
        assert d.lowrank_params == d.rank * sum(d.shape) and d.dense_params == d.shape[0] * d.shape[1]


def test_energy_mode_quantizes_each_rank_up_and_caps_it(seed):
    rng = random.Random(seed)
    dims = [rng.randint(40, 120) for _ in range(5)]
    model = chain(dims, rng)
    dense = weights_of(model)
    q = rng.choice([8, 16, 32])
    energy = rng.uniform(0.1, 0.5)
    report = decompose(model, energy=energy, quantize=q)
    for d in report.modules:
        share, (n, m) = shares(dense[d.name]), d.shape
        needed = int((torch.cumsum(share, 0) < energy).sum()) + 1
        cap = saving_cap(n, m)
        assert d.rank == max(needed, min(-(-needed // q) * q, cap)), \
            f"seed={seed} {d.name} {n}x{m}: needed {needed}, q {q}, cap {cap}, got {d.rank}"
        assert d.rank * (n + m) < n * m, f"seed={seed} {d.name}: rank {d.rank} does not save parameters"


def test_quantization_is_capped_at_the_largest_saving_rank(seed):
    """64 x 64 saves parameters up to rank 31: quantize=64 must give 31, not 64."""
    model = nn.Sequential(linear_of(structured_weight(64, 64, random.Random(seed))))
    report = decompose(model, energy=0.01, quantize=64)
    assert report.modules[0].rank == 31 == saving_cap(64, 64), f"seed={seed}: {report.modules[0]}"


# -- param_budget ------------------------------------------------------------------------------------
def test_param_budget_is_respected_with_one_threshold_for_all(seed):
    rng = random.Random(seed)
    dims = [rng.randint(32, 96) for _ in range(6)]
    model = chain(dims, rng)
    dense = weights_of(model)
    fraction = rng.uniform(0.1, 0.3)
    report = decompose(model, param_budget=fraction, quantize=None)
    budget = int(fraction * sum(w.numel() for w in dense.values()))
    assert report.lowrank_params <= budget, f"seed={seed}: {report.lowrank_params} > budget {budget}"
    # One global threshold on the energy shares: every singular value kept (beyond a forced rank 1)
    # has at least the share of every one dropped ...
    kept_min, dropped = [], []
    for d in report.modules:
        share = shares(dense[d.name])
        if d.rank > 1:
            kept_min.append(float(share[d.rank - 1]))
        if d.rank < saving_cap(*d.shape):
            dropped.append((float(share[d.rank]), d))
    best_dropped, d_best = max(dropped, key=lambda x: x[0])
    assert not kept_min or min(kept_min) >= best_dropped, \
        f"seed={seed}: a kept share {min(kept_min)} is below a dropped one {best_dropped}"
    # ... and the threshold is the lowest that fits: keeping the best dropped value would not fit.
    assert report.lowrank_params + sum(d_best.shape) > budget, \
        f"seed={seed}: {d_best.name} could keep one more singular value within the budget {budget}"


def test_param_budget_with_quantization_and_impossible_budgets(seed):
    rng = random.Random(seed)
    dims = [rng.randint(48, 120) for _ in range(4)]
    q = rng.choice([8, 16])
    shapes = [(d_out, d_in) for d_in, d_out in zip(dims, dims[1:])]
    smallest = sum(min(q, saving_cap(n, m)) * (n + m) for n, m in shapes)
    dense = sum(n * m for n, m in shapes)

    model = chain(dims, random.Random(seed))
    report = decompose(model, param_budget=smallest, quantize=q)
    assert [d.rank for d in report.modules] == [min(q, saving_cap(n, m)) for n, m in shapes], f"seed={seed}"

    budget = rng.randint(smallest, sum(saving_cap(n, m) * (n + m) for n, m in shapes))
    report = decompose(chain(dims, random.Random(seed)), param_budget=budget, quantize=q)
    assert report.lowrank_params <= budget, f"seed={seed}: {report.lowrank_params} > {budget}"
    for d in report.modules:
        assert d.rank % q == 0 or d.rank == saving_cap(*d.shape), f"seed={seed} {d.name}: rank {d.rank}, q {q}"
        assert d.rank <= saving_cap(*d.shape), f"seed={seed} {d.name}: rank {d.rank} does not save parameters"

    # a budget at or above what the largest saving ranks need (but not above dense) gives those ranks
    most = sum(saving_cap(n, m) * (n + m) for n, m in shapes)
    report = decompose(chain(dims, random.Random(seed)), param_budget=rng.randint(most, dense), quantize=q)
    assert [d.rank for d in report.modules] == [saving_cap(n, m) for n, m in shapes], f"seed={seed}"

    model = chain(dims, random.Random(seed))
    before = weights_of(model)
    with pytest.raises(SelectionError, match=rf"param_budget {smallest - 1:,} is below the {smallest:,} parameters"):
        decompose(model, param_budget=smallest - 1, quantize=q)
    with pytest.raises(SelectionError, match=r"is above the .* dense weight parameters"):
        decompose(model, param_budget=dense + 1)
    assert all(type(model.get_submodule(n)) is nn.Linear and torch.equal(model.get_submodule(n).weight, w)
               for n, w in before.items()), f"seed={seed}: a refused decompose changed the model"


# -- rank mode and errors ----------------------------------------------------------------------------
def test_rank_mode_is_used_as_given_and_refuses_ranks_that_do_not_save(seed):
    rng = random.Random(seed)
    model = nn.Sequential(linear_of(structured_weight(48, 40, rng)), nn.Tanh(),
                          linear_of(structured_weight(20, 48, rng)))
    dense = weights_of(model)
    report = decompose(chain([40, 48], rng), rank=5, quantize=64)
    assert [d.rank for d in report.modules] == [5], f"seed={seed}: an explicit rank is not quantized"

    cap = saving_cap(20, 48)  # 14
    with pytest.raises(SelectionError, match=rf"^2: at rank {cap + 1} the factors have .* give a rank <= {cap}$"):
        decompose(model, rank=cap + 1)
    with pytest.raises(SelectionError, match=r"^2: rank 20 is not below min\(20, 48\)"):
        decompose(model, rank=20)
    assert weights_of(model).keys() == dense.keys() and type(model[0]) is nn.Linear, f"seed={seed}"
    report = decompose(model, rank=cap)
    assert [d.rank for d in report.modules] == [cap, cap], f"seed={seed}"
    for d in report.modules:
        tail = float((torch.linalg.svdvals(dense[d.name])[cap:] ** 2).sum() / dense[d.name].norm() ** 2)
        assert abs((1 - d.kept_energy) - tail) < 1e-12, f"seed={seed} {d.name}"


def test_energy_that_needs_a_rank_without_savings_is_refused(seed):
    model = nn.Sequential(linear_of(torch.randn(30, 30, dtype=torch.float64)))
    with pytest.raises(SelectionError, match=r"^0: keeping 0\.999 of its energy needs rank \d+ of 30"):
        decompose(model, energy=0.999)


def test_option_errors(seed):
    model = chain([16, 24, 16], random.Random(seed))
    for kwargs in ({}, {"rank": 2, "energy": 0.5}, {"energy": 0.5, "param_budget": 0.2}):
        with pytest.raises(SelectionError, match=r"give exactly one of rank=, energy= or param_budget="):
            decompose(model, **kwargs)
    for kwargs in ({"energy": 0.0}, {"energy": 1.5}, {"param_budget": 1.5}, {"param_budget": 0}, {"rank": 0},
                   {"rank": 2, "quantize": 0}, {"energy": 0.5, "svd": "randomized"}):
        with pytest.raises(SelectionError):
            decompose(model, **kwargs)
    with pytest.raises(SelectionError, match=r"decompose: no tensor matches types=\['nothing_here'\]"):
        decompose(model, types=["nothing_here"], rank=2)
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear, f"seed={seed}"


def test_second_decompose_finds_only_factors(seed):
    model = chain([32, 48, 32], random.Random(seed))
    decompose(model, rank=4)
    with pytest.raises(SelectionError, match=r"none can be decomposed \(0\.first\.weight: already a factor"):
        decompose(model, rank=2)


def test_weights_that_are_not_plain_linears_are_skipped_with_the_reason(seed):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2)  # in_proj_weight: a bare parameter; out_proj: a Linear subclass
            self.fc = nn.Linear(16, 32)
            self.a = nn.Linear(24, 24)
            self.b = nn.Linear(24, 24)
            self.b.weight = self.a.weight  # tied

    model = nn.ModuleDict({"layers": nn.ModuleList([Block()])})
    report = decompose(model, rank=2)
    assert [d.name for d in report.modules] == ["layers.0.fc"], f"seed={seed}: {report.modules}"
    why = dict(report.skipped)
    assert set(why) == {"layers.0.attn.in_proj_weight", "layers.0.attn.out_proj.weight", "layers.0.a.weight"}, why
    assert why["layers.0.attn.in_proj_weight"].startswith("not the weight of an nn.Linear"), why
    assert "NonDynamicallyQuantizableLinear" in why["layers.0.attn.out_proj.weight"], why
    assert why["layers.0.a.weight"].startswith("tied to layers.0.b.weight"), why
    assert type(model["layers"][0].a) is nn.Linear and "3 weights skipped" in str(report), str(report)


# -- a transformers model ------------------------------------------------------------------------------
def test_decomposed_llama_matches_the_dense_model(seed):
    """Each block weight made rank 16 first: decomposing at rank 16 (or at energy just under 1) must
    then give the dense model's logits; lm_head and embeddings stay dense."""
    model = tiny_llama().double().eval()
    expected = block_linears(model)
    assert len(expected) == 14
    with torch.no_grad():
        for name in expected:
            w = model.get_submodule(name).weight
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            w.copy_((u[:, :16] * s[:16]) @ vh[:16])
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        dense_logits = model(ids).logits
    twin = tiny_llama().double().eval()
    twin.load_state_dict(model.state_dict())

    report = decompose(model, rank=16)
    assert [d.name for d in report.modules] == expected and not report.skipped, f"seed={seed}"
    assert type(model.lm_head) is nn.Linear, f"seed={seed}: lm_head is not in numbered blocks"
    report = decompose(twin, energy=1 - 1e-9, quantize=None)
    assert {d.rank for d in report.modules} == {16}, f"seed={seed}: {[d.rank for d in report.modules]}"
    with torch.no_grad():
        for m in (model, twin):
            got = m(ids).logits
            rel = float((got - dense_logits).norm() / dense_logits.norm())
            assert rel < 1e-10, f"seed={seed}: logits differ by {rel:.2e} (relative)"
    assert "decomposed 14 linear layers" in str(report), str(report)


def test_types_choose_like_a_scan(seed):
    model = tiny_llama()
    report = decompose(model, types=["mlp.down_proj"], rank=8)
    assert [d.name for d in report.modules] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    report = decompose(model, types=[r"self_attn\.[qk]_proj"], rank=8)
    assert [d.name for d in report.modules] == [f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qk"]
    # types match the whole type: "proj" alone names no type
    with pytest.raises(SelectionError, match=r"no tensor matches types=\['proj'\]"):
        decompose(model, types=["proj"], rank=8)


# -- SequentialFreezing ----------------------------------------------------------------------------------
def test_sequential_freezing_grads_and_switching(seed):
    rng = random.Random(seed)
    model = chain([rng.randint(24, 48) for _ in range(4)], rng)
    decompose(model, rank=4)
    steps = rng.randint(1, 3)
    start = rng.choice(["first", "second"])
    sf = SequentialFreezing(model, steps=steps, start=start)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sf.apply()
    layers = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    assert len(layers) == 3
    other = {"first": "second", "second": "first"}
    for k in range(4 * steps):
        trained = start if (k // steps) % 2 == 0 else other[start]
        assert sf.trained_factor == trained, f"seed={seed} step {k}: {sf.trained_factor} != {trained}"
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        x = torch.randn(8, layers[0].in_features, dtype=torch.float64)
        model(x).pow(2).mean().backward()
        for i, layer in enumerate(layers):
            assert getattr(layer, trained).weight.grad is not None, f"seed={seed} step {k} layer {i}: no grad"
            assert getattr(layer, other[trained]).weight.grad is None, f"seed={seed} step {k} layer {i}: frozen grad"
            assert layer.second.bias.grad is not None, f"seed={seed}: biases are left trainable"
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # zeros, not None: apply() must drop the frozen factors' grads
        for n, p in model.named_parameters():
            frozen = n.endswith(f"{other[trained]}.weight")
            assert torch.equal(p, before[n]) == frozen, \
                f"seed={seed} step {k}: {n} {'changed while frozen' if frozen else 'did not train'}"
        switched = sf.step()
        assert switched == ((k + 1) % steps == 0), f"seed={seed} step {k}: switched={switched}"


def test_sequential_freezing_needs_low_rank_layers_and_valid_options(seed):
    with pytest.raises(SelectionError, match=r"no LowRankLinear layer: call spectrum_fast\.decompose"):
        SequentialFreezing(nn.Sequential(nn.Linear(4, 4)), steps=1)
    model = chain([16, 24], random.Random(seed))
    decompose(model, rank=2)
    for kwargs in ({"steps": 0}, {"steps": 1.5}, {"steps": 2, "start": "both"}):
        with pytest.raises(spectrum_fast.SpectrumFastError, match=r"^SequentialFreezing: "):
            SequentialFreezing(model, **kwargs)


def test_trainer_alternates_factors(tmp_path, seed):
    model = tiny_llama()
    decompose(model, rank=8)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
    changed: list[set[str]] = []

    class Recorder(transformers.TrainerCallback):
        """Which factors each optimizer step moved (runs before the schedule's on_step_end)."""

        def on_step_begin(self, args, state, control, **kwargs):
            self.before = {f"{n}.{f}": getattr(m, f).weight.detach().clone() for n, m in layers.items()
                           for f in ("first", "second")}

        def on_step_end(self, args, state, control, **kwargs):
            moved = {name.rsplit(".", 1)[1] for name, w in self.before.items()
                     if not torch.equal(w, model.get_submodule(name).weight)}
            frozen = [name for name, w in self.before.items() if torch.equal(w, model.get_submodule(name).weight)]
            changed.append(moved)
            # every factor of the trained kind moved, none of the other
            assert len(frozen) == len(layers), f"seed={seed} step {state.global_step}: frozen {len(frozen)}"

    sf = SequentialFreezing(model, steps=2)
    ids = [torch.randint(0, 128, (16,)) for _ in range(16)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
        weight_decay=0.1, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=seed,
        dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=[{"input_ids": i, "labels": i} for i in ids],
                                   callbacks=[Recorder(), sf.callback()])
    trainer.train()
    assert changed == [{"first"}, {"first"}, {"second"}, {"second"}], f"seed={seed}: {changed}"
    assert sf.optimizer_steps == 4 and sf.trained_factor == "first", f"seed={seed}"


def test_lowrank_imports_without_transformers():
    """lowrank.py must not import transformers (only SequentialFreezing.callback() does)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['transformers'] = None; import spectrum_fast.lowrank as l; "
            "print(l.LowRankLinear.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "LowRankLinear", out.stderr
    assert re.search(r"^from transformers", open(spectrum_fast.lowrank.__file__).read(), re.M) is None
