"""Fused 3-D expert tensors trained in part: gradient masks (freeze) and masked weight decay.

The module below has one fused parameter [E, n, m] and a loss that is a sum over experts, each term
depending on one expert only. So the selected experts of a masked run see exactly the gradients of
a plain run on those experts alone, and their values can be compared to a plain optimizer's.
"""

from __future__ import annotations

import math

import pytest
import torch

import spectrum_fast
from spectrum_fast.expert_masks import expert_mask_of

E, N, M, BATCH = 6, 5, 7, 9
NAME = "layers.0.mlp.experts.down_proj"


class FusedExperts(torch.nn.Module):
    """``layers.0.mlp.experts.down_proj`` [E, n, m] as in transformers 5, plus a 1-D scale so the
    optimizer's group also holds an ordinary parameter."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Module()])
        self.layers[0].mlp = torch.nn.Module()
        self.layers[0].mlp.experts = torch.nn.Module()
        self.layers[0].mlp.experts.down_proj = torch.nn.Parameter(torch.randn(E, N, M) / math.sqrt(M))
        self.scale = torch.nn.Parameter(1 + 0.1 * torch.randn(N))

    @property
    def fused(self) -> torch.nn.Parameter:
        return self.layers[0].mlp.experts.down_proj


def expert_loss(weights: torch.Tensor, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum_e ||x_e W_e^T - t_e||^2 / BATCH: expert e's term depends on W_e only."""
    return (torch.bmm(x, weights.transpose(1, 2)) - target).pow(2).sum() / BATCH


def batches(steps: int, experts: int = E):
    return [(torch.randn(experts, BATCH, M), torch.randn(experts, BATCH, N)) for _ in range(steps)]


OPTIMIZERS = {
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "sgd-momentum-nesterov-decay": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                                              weight_decay=0.3),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.02, weight_decay=0.5),
    "adamw-foreach": lambda ps: torch.optim.AdamW(ps, lr=0.02, weight_decay=0.5, foreach=True),
    "adamw-fused": lambda ps: torch.optim.AdamW(ps, lr=0.02, weight_decay=0.5, fused=True),
    "adam-coupled-decay-maximize": lambda ps: torch.optim.Adam(ps, lr=0.02, weight_decay=0.5, maximize=True),
    "rmsprop-decay": lambda ps: torch.optim.RMSprop(ps, lr=0.01, weight_decay=0.2, momentum=0.5),
}
DECAYING = [k for k in OPTIMIZERS if "decay" in k or k.startswith("adamw")]


def run(model, optimizer, data, scheduler=None):
    for x, t in data:
        optimizer.zero_grad()
        (expert_loss(model.fused, x, t) + model.scale.square().sum()).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def pick_experts() -> list[int]:
    k = int(torch.randint(1, E - 1, ()))
    return sorted(torch.randperm(E)[:k].tolist())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_frozen_experts_stay_bit_identical(seed, name):
    model = FusedExperts()
    chosen = pick_experts()
    frozen = [e for e in range(E) if e not in chosen]
    report = spectrum_fast.freeze(model, [f"{NAME}.{e}" for e in chosen] + ["scale"])
    assert report.trained_experts == {NAME: chosen} and report.unmatched == []
    assert report.trainable == len(chosen) * N * M + N
    initial = model.fused.detach().clone()

    # The reference: the same optimizer on the selected experts alone, as their own tensor.
    reference = torch.nn.Parameter(initial[chosen].clone())
    ref_scale = torch.nn.Parameter(model.scale.detach().clone())
    ref_opt = OPTIMIZERS[name]([reference, ref_scale])
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref_opt, lambda step: 1 / (1 + step))

    optimizer = OPTIMIZERS[name](model.parameters())
    spectrum_fast.mask_weight_decay(optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))  # decay must follow the lr
    groups_before = [[id(p) for p in g["params"]] for g in optimizer.param_groups]

    data = batches(5)
    run(model, optimizer, data, scheduler)
    for x, t in data:
        ref_opt.zero_grad()
        (expert_loss(reference, x[chosen], t[chosen]) + ref_scale.square().sum()).backward()
        ref_opt.step()
        ref_sched.step()

    after = model.fused.detach()
    assert torch.equal(after[frozen], initial[frozen]), f"[seed={seed}] {name}: frozen experts {frozen} moved"
    for e in chosen:
        assert not torch.equal(after[e], initial[e]), f"[seed={seed}] {name}: selected expert {e} did not train"
    # The selected experts follow the plain optimizer's arithmetic, element by element: bit for bit, but
    # for the fused kernels, which round the decay as p - lr*wd*p where we (and torch's for-loop and
    # foreach implementations) round p * (1 - lr*wd): an ulp per step at most.
    if "fused" in name:
        torch.testing.assert_close(after[chosen], reference.detach(), rtol=1e-6, atol=1e-7,
                                   msg=lambda m: f"[seed={seed}] {name}: selected experts differ from plain {name}: {m}")
    else:
        diff = (after[chosen] - reference.detach()).abs().max().item()
        assert torch.equal(after[chosen], reference.detach()), f"[seed={seed}] {name}: off plain {name} by {diff}"
    assert torch.equal(model.scale.detach(), ref_scale.detach())
    # The groups are the optimizer's own again (schedulers and state_dict() index them).
    assert [[id(p) for p in g["params"]] for g in optimizer.param_groups] == groups_before
    assert not hasattr(optimizer, "_spectrum_fast_split")


@pytest.mark.parametrize("name", DECAYING)
def test_without_mask_weight_decay_decay_moves_frozen_experts(seed, name):
    """Why mask_weight_decay exists: the gradient mask alone leaves weight decay free to shrink frozen experts."""
    model = FusedExperts()
    chosen = pick_experts()
    frozen = [e for e in range(E) if e not in chosen]
    spectrum_fast.freeze(model, [f"{NAME}.{e}" for e in chosen])
    initial = model.fused.detach().clone()
    optimizer = OPTIMIZERS[name](model.parameters())
    run(model, optimizer, batches(2))
    for e in frozen:
        assert model.fused.grad[e].abs().max() == 0, "the mask zeroes frozen experts' gradients"
        assert not torch.equal(model.fused.detach()[e], initial[e]), f"[seed={seed}] {name}: expected decay on {e}"


def test_remove_restores_plain_decay(seed):
    model = FusedExperts()
    spectrum_fast.freeze(model, [f"{NAME}.0"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.5)
    handle = spectrum_fast.mask_weight_decay(optimizer)
    assert spectrum_fast.mask_weight_decay(optimizer) is handle, "a second call must not add hooks"
    initial = model.fused.detach().clone()
    run(model, optimizer, batches(1))
    assert torch.equal(model.fused.detach()[1:], initial[1:])
    handle.remove()
    run(model, optimizer, batches(1))
    assert not torch.equal(model.fused.detach()[1:], initial[1:])


def test_unknown_optimizer_with_decay_is_refused(seed):
    class HomeMadeSGD(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 0.1, "weight_decay": 0.1})

        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.mul_(1 - g["lr"] * g["weight_decay"]).add_(p.grad, alpha=-g["lr"])

    model = FusedExperts()
    spectrum_fast.freeze(model, [f"{NAME}.2"])
    optimizer = HomeMadeSGD(model.parameters())
    spectrum_fast.mask_weight_decay(optimizer)
    initial = model.fused.detach().clone()
    with pytest.raises(spectrum_fast.SpectrumFastError, match="HomeMadeSGD applies weight decay") as info:
        run(model, optimizer, batches(1))
    assert "\n" not in str(info.value)
    assert torch.equal(model.fused.detach(), initial), "a refused step must change nothing"
    assert len(optimizer.param_groups) == 1


def test_closure_is_refused_when_decay_is_masked(seed):
    model = FusedExperts()
    spectrum_fast.freeze(model, [f"{NAME}.2"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.5)
    spectrum_fast.mask_weight_decay(optimizer)
    x, t = batches(1)[0]

    def closure():
        optimizer.zero_grad()
        loss = expert_loss(model.fused, x, t)
        loss.backward()
        return loss

    with pytest.raises(spectrum_fast.SpectrumFastError, match="closure"):
        optimizer.step(closure)


def test_report_counts_selected_slices_only(seed):
    model = FusedExperts()
    report = spectrum_fast.freeze(model, [f"{NAME}.1", f"{NAME}.4"])
    assert report.trainable == 2 * N * M and report.total == E * N * M + N
    assert report.trainable_tensors == [NAME]
    assert model.fused.requires_grad and not model.scale.requires_grad
    assert set(spectrum_fast.masked_parameters(model)) == {NAME}
    assert str(report).endswith(", 1 fused expert tensor trained in part")
    # Every expert selected: the tensor trains whole, with no mask.
    report = spectrum_fast.freeze(model, [f"{NAME}.{e}" for e in range(E)])
    assert report.trainable == E * N * M and report.trained_experts == {}
    assert expert_mask_of(model.fused) is None and not model.fused._backward_hooks
    # A pattern that matches the tensor itself trains it whole too.
    report = spectrum_fast.freeze(model, [f"{NAME}.1", "layers.0.mlp.experts"])
    assert report.trainable == E * N * M and expert_mask_of(model.fused) is None


def test_second_freeze_replaces_the_mask(seed):
    model = FusedExperts()
    spectrum_fast.freeze(model, [f"{NAME}.0", f"{NAME}.1"])
    spectrum_fast.freeze(model, [f"{NAME}.3"])
    assert len(model.fused._backward_hooks) == 1, "masks must not stack"
    assert expert_mask_of(model.fused).experts == (3,)
    x, t = batches(1)[0]
    expert_loss(model.fused, x, t).backward()
    nonzero = [e for e in range(E) if model.fused.grad[e].abs().max() > 0]
    assert nonzero == [3], f"[seed={seed}] gradients reached experts {nonzero}"
    # Frozen entirely: mask and gradient gone.
    spectrum_fast.freeze(model, ["scale"])
    assert not model.fused.requires_grad and model.fused.grad is None and not model.fused._backward_hooks


def test_mask_zeroes_non_finite_gradients_of_frozen_experts(seed):
    model = FusedExperts()
    spectrum_fast.freeze(model, [f"{NAME}.0"])
    x = torch.randn(E, BATCH, M)
    x[2, 0, 0] = math.inf  # an overflow in a frozen expert's input
    (torch.bmm(x, model.fused.transpose(1, 2))).sum().backward()
    assert torch.isfinite(model.fused.grad).all()
    assert model.fused.grad[1:].abs().max() == 0 and model.fused.grad[0].abs().max() > 0


def test_gradient_from_before_freeze_is_masked(seed):
    model = FusedExperts()
    x, t = batches(1)[0]
    expert_loss(model.fused, x, t).backward()
    spectrum_fast.freeze(model, [f"{NAME}.2"])
    assert model.scale.grad is None, "a frozen parameter's old gradient must go"
    assert [e for e in range(E) if model.fused.grad[e].abs().max() > 0] == [2]


def test_expert_out_of_range_is_one_line_and_changes_nothing(seed):
    model = FusedExperts()
    spectrum_fast.freeze(model, [f"{NAME}.1"])
    with pytest.raises(spectrum_fast.SelectionError) as info:
        spectrum_fast.freeze(model, ["scale", f"{NAME}.{E}"])
    message = str(info.value)
    assert "\n" not in message and f"expert {E}" in message and f"has {E} experts" in message, message
    assert expert_mask_of(model.fused).experts == (1,) and not model.scale.requires_grad


def test_module_scan_names_select_experts(seed):
    """The names a scan gives a fused tensor (``<parameter>.<e>``) are the ones freeze() masks by."""
    model = FusedExperts()
    result = spectrum_fast.scan(model, device="cpu", progress=False)
    assert {r.name for r in result.rows} == {f"{NAME}.{e}" for e in range(E)}
    report = spectrum_fast.freeze(model, [r.name for r in result.rows[:2]])
    assert report.trained_experts == {NAME: [0, 1]}


def test_gpt_oss_expert_trains_its_bias_row(seed):
    """gpt-oss keeps per-expert biases beside the fused weight ([E, k]): expert e trains row e of it."""
    from conftest import tiny_gpt_oss

    model = tiny_gpt_oss()
    base = "model.layers.0.mlp.experts.gate_up_proj"
    report = spectrum_fast.freeze(model, [f"{base}.1", f"{base}.3"])
    assert report.trained_experts == {base: [1, 3], f"{base}_bias": [1, 3]}
    params = dict(model.named_parameters())
    assert report.trainable == (params[base].numel() + params[f"{base}_bias"].numel()) // 4 * 2
    assert not params["model.layers.0.mlp.experts.down_proj"].requires_grad
    # transformers 5 names: the scan of the module gives <parameter>.<e> for these tensors.
    names = {r.name for r in spectrum_fast.scan(model, device="cpu", progress=False).rows}
    assert f"{base}.3" in names
