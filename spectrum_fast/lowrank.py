"""Low-rank decomposition of a model's linear layers, and training one factor at a time.

After Hajimolahoseini et al., "Training acceleration of low-rank decomposed networks using
sequential freezing and rank quantization" (arXiv 2309.03824):

- ``LowRankLinear``: W [out, in] replaced by B [out, r] @ A [r, in], run as two linears
  (``first`` = A, then ``second`` = B with the original bias). From the SVD W = U S Vh, the rank-r
  factors are A = sqrt(S_r) Vh_r and B = U_r sqrt(S_r): sqrt(S) split evenly, so both factors have
  the same scale and neither's gradients dwarf the other's. B A is then the best rank-r
  approximation of W (Eckart-Young).
- ``decompose(model, ...)``: replaces the chosen nn.Linear layers in place, each at a rank given,
  set by an energy fraction, or set by a total parameter budget; ranks quantized (ranks.py).
- ``SequentialFreezing``: trains the ``first`` factors, then the ``second`` ones, alternating every
  ``steps`` optimizer steps. A frozen factor has requires_grad False, so backward computes no
  gradient for its weight (it still propagates through it to earlier layers).

Which layers: chosen as a scan chooses matrices (targets.plan_tasks, same ``types``), then only
those whose weight belongs to a plain ``torch.nn.Linear``; the others are listed in the report's
``skipped`` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import SelectionError, SpectrumFastError
from .naming import module_name
from .ranks import budget_ranks, energy_rank, kept_energy, max_saving_rank, quantize_rank
from .sources import ModuleSource
from .targets import plan_tasks, require_some

SVD_METHODS = ("exact", "randomized", "lanczos")
FACTORS = ("first", "second")


class LowRankLinear(nn.Module):
    """y = second(first(x)) = x A^T B^T + bias: a linear layer of rank ``rank`` stored as two factors.

    ``first``: nn.Linear(in_features, rank, bias=False), weight A [rank, in_features];
    ``second``: nn.Linear(rank, out_features, bias=bias), weight B [out_features, rank].
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.second.bias is not None}")

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, *, svd: str = "exact", seed: int | None = None) -> LowRankLinear:
        """The rank-``rank`` factorization of ``linear`` (1 <= rank <= min(out, in)), on its device in
        its dtype; factors and bias keep the weight's and bias's requires_grad.

        Any rank up to min(out, in) is accepted here, so at full rank B A == W to rounding;
        ``decompose`` refuses ranks whose factors are not smaller than W.
        svd: "exact" (default: torch.linalg.svd in float64; slow for large matrices on a CPU) or
        "randomized" / "lanczos" (spectrum_fast.linalg.truncated_svd: the top ``rank`` triplets
        only, fp32, for large weights on a GPU; ``seed`` picks its random numbers).
        """
        return _factorize(linear, rank, svd, seed, label=f"nn.Linear({linear.in_features}, {linear.out_features})")[0]

    def to_linear(self) -> nn.Linear:
        """One nn.Linear with weight B @ A (multiplied in float64, then rounded once to the factors' dtype)."""
        a, b = self.first.weight, self.second.weight
        linear = nn.Linear(self.in_features, self.out_features, bias=self.second.bias is not None, device="meta")
        weight = (b.detach().double() @ a.detach().double()).to(a.dtype)
        linear.weight = nn.Parameter(weight, requires_grad=a.requires_grad or b.requires_grad)
        if self.second.bias is not None:
            linear.bias = nn.Parameter(self.second.bias.detach().clone(), requires_grad=self.second.bias.requires_grad)
        return linear


def _factorize(linear: nn.Linear, rank: int, svd: str, seed: int | None, label: str) -> tuple[LowRankLinear, float]:
    """-> (the LowRankLinear, fraction of ||W||_F^2 its factors keep)."""
    n, m = linear.out_features, linear.in_features
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= min(n, m):
        raise SelectionError(f"{label}: rank must be an int from 1 to min({n}, {m}) = {min(n, m)}, got {rank!r}")
    if svd not in SVD_METHODS:
        raise SpectrumFastError(f"{label}: svd must be one of {SVD_METHODS}, got {svd!r}")
    w = weight_of(linear, label)
    u, s, vh = top_singular_triplets(w, rank, svd, seed)
    root = s.sqrt()
    a = root[:, None] * vh  # [rank, in]
    b = u * root[None, :]  # [out, rank]
    layer = LowRankLinear(m, n, rank, bias=linear.bias is not None, device="meta")
    layer.first.weight = nn.Parameter(a.to(w.dtype), requires_grad=linear.weight.requires_grad)
    layer.second.weight = nn.Parameter(b.to(w.dtype), requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        layer.second.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
    total = float((w.double() ** 2).sum())
    return layer, (float((s**2).sum()) / total if total > 0 else 1.0)


def top_singular_triplets(w: torch.Tensor, rank: int, svd: str = "exact",
                          seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (U_r [n, r], S_r [r], Vh_r [r, m]) of the ``rank`` largest singular values of ``w``, float64.
    svd: "exact" (torch.linalg.svd in float64) or "randomized" / "lanczos" (truncated_svd, fp32)."""
    if svd == "exact":
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank]
    from .linalg import truncated_svd  # imports the Triton kernels: only when asked

    u, s, vh = (t.double() for t in truncated_svd(w, rank, method=svd, seed=seed))
    return u, s, vh


def replace_module(model: nn.Module, name: str, layer: nn.Module) -> None:
    """Put ``layer`` where ``model``'s submodule ``name`` is (nn.Module.set_submodule does this from
    torch 2.5 on; this package supports 2.4)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, layer)


def weight_of(linear: nn.Linear, label: str) -> torch.Tensor:
    """``linear``'s weight, detached; refused (SelectionError naming ``label``) when it is not loaded
    or not finite, since it then has no SVD."""
    w = linear.weight.detach()
    if w.is_meta:
        raise SelectionError(f"{label}: the weight is on the meta device (not loaded): load the model's weights first")
    if not torch.isfinite(w).all():
        raise SelectionError(f"{label}: the weight has non-finite values (inf or NaN): it has no SVD")
    return w


# -- decompose ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecomposedModule:
    name: str
    shape: tuple[int, int]  # the dense weight's (out_features, in_features)
    rank: int
    kept_energy: float  # fraction of ||W||_F^2 the factors keep (1 - relative squared error of B A)
    dense_params: int  # out * in (the bias, unchanged, is counted in neither)
    lowrank_params: int  # rank * (out + in)


@dataclass
class DecompositionReport:
    modules: list[DecomposedModule] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (weight, why not decomposed)

    @property
    def dense_params(self) -> int:
        return sum(d.dense_params for d in self.modules)

    @property
    def lowrank_params(self) -> int:
        return sum(d.lowrank_params for d in self.modules)

    @property
    def fraction(self) -> float:
        """Low-rank over dense parameters of the decomposed layers."""
        return self.lowrank_params / self.dense_params if self.dense_params else 0.0

    def __str__(self) -> str:
        if not self.modules:
            return "decomposed no layer"
        ranks = [d.rank for d in self.modules]
        energies = [d.kept_energy for d in self.modules]
        k = len(self.modules)
        text = (f"decomposed {k} linear layer{'s' if k != 1 else ''}: {self.dense_params:,} -> "
                f"{self.lowrank_params:,} weight parameters ({100 * self.fraction:.2f}%), ranks {min(ranks)} to "
                f"{max(ranks)}, kept energy {min(energies):.4f} min, {sum(energies) / k:.4f} mean")
        if self.skipped:
            text += f"; {len(self.skipped)} weights skipped (see .skipped)"
        return text


def decompose(model: nn.Module, *, types="auto", rank: int | None = None, energy: float | None = None,
              param_budget: int | float | None = None, quantize: int | None = 64, svd: str = "exact",
              seed: int | None = None) -> DecompositionReport:
    """Replace the chosen nn.Linear layers of ``model`` by LowRankLinear factorizations, in place.

    types: as scan()'s: "auto" (the weights of the numbered blocks), "all", or type names / regexes
        matched against the whole type.
    Exactly one of:
    rank: the same rank for every layer, used as given (no quantization); it must save parameters
        in every layer: rank (out + in) < out * in.
    energy: per layer, the smallest rank keeping at least this fraction of sum(S^2), 0 < energy <= 1,
        then quantized.
    param_budget: the total parameters of the factors (weights only), as a count, or as a fraction
        in (0, 1) of the chosen layers' dense count; ranks from one global threshold on the
        singular values' energy shares (ranks.budget_ranks), quantized; the total stays within it.
    quantize: chosen ranks are rounded up to a multiple of it (rank quantization), but never past
        the largest rank that still saves parameters; None or 1: no rounding.
    svd: "exact" (float64) or, with rank= only, "randomized" / "lanczos" (LowRankLinear.from_linear).

    Everything is checked before the model is touched: a bad request raises SelectionError with one
    line naming the layer, and leaves the model as it was.
    """
    given = {k: v for k, v in (("rank", rank), ("energy", energy), ("param_budget", param_budget)) if v is not None}
    if len(given) != 1:
        raise SelectionError(f"decompose: give exactly one of rank=, energy= or param_budget=, got "
                             f"{', '.join(given) or 'none'}")
    _check_options(rank, energy, param_budget, quantize, svd)
    chosen, skipped = chosen_linears(model, types)
    ranks = _plan_ranks(chosen, rank, energy, param_budget, quantize)

    report = DecompositionReport(skipped=skipped)
    for (name, linear), r in zip(chosen, ranks):
        layer, kept = _factorize(linear, r, svd, seed, label=name)
        replace_module(model, name, layer)
        n, m = linear.out_features, linear.in_features
        report.modules.append(DecomposedModule(name, (n, m), r, kept, n * m, r * (n + m)))
    return report


def _check_options(rank, energy, param_budget, quantize, svd) -> None:
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise SelectionError(f"decompose: rank must be an int >= 1, got {rank!r}")
    if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1):
        raise SelectionError(f"decompose: energy is the fraction of sum(S^2) to keep, 0 < energy <= 1, got {energy!r}")
    if param_budget is not None:
        is_count = isinstance(param_budget, int) and not isinstance(param_budget, bool) and param_budget >= 1
        is_fraction = isinstance(param_budget, float) and 0 < param_budget < 1
        if not (is_count or is_fraction):
            raise SelectionError(f"decompose: param_budget must be a parameter count (int >= 1) or a fraction in "
                                 f"(0, 1) of the dense count, got {param_budget!r}")
    if quantize is not None and (not isinstance(quantize, int) or isinstance(quantize, bool) or quantize < 1):
        raise SelectionError(f"decompose: quantize must be an int >= 1 (e.g. 64) or None, got {quantize!r}")
    if svd not in SVD_METHODS:
        raise SelectionError(f"decompose: svd must be one of {SVD_METHODS}, got {svd!r}")
    if svd != "exact" and rank is None:
        raise SelectionError(f"decompose: svd={svd!r} finds the top singular values only, and energy= or "
                             f"param_budget= need them all: give rank=, or use svd='exact'")


def chosen_linears(model: nn.Module, types, label: str = "decompose",
                   verb: str = "decomposed") -> tuple[list[tuple[str, nn.Linear]], list[tuple[str, str]]]:
    """-> ([(module name, nn.Linear)] to replace, in model order; [(weight, why not)]).
    label, verb: name the caller in errors ("decompose: ... none can be decomposed")."""
    names_of: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)
    params = dict(model.named_parameters())
    infos = ModuleSource(model).tensors()  # tied weights once, as a scan of the module sees them
    tasks, _ = plan_tasks(infos, types)
    require_some(tasks, infos, types, label)

    modules = dict(model.named_modules())
    factors = {f"{n}.{f}" for n, m in modules.items() if isinstance(m, LowRankLinear) for f in FACTORS}
    chosen, skipped, seen = [], [], set()
    for task in tasks:
        weight = task.tensor.name
        if weight in seen:  # the experts of one fused tensor are several tasks
            continue
        seen.add(weight)
        mod = module_name(weight)
        owner = modules.get(mod)
        if weight != f"{mod}.weight" or not isinstance(owner, nn.Linear):
            skipped.append((weight, "not the weight of an nn.Linear (a fused expert tensor, GPT-2's Conv1D, ...)"))
        elif type(owner) is not nn.Linear:
            # e.g. nn.MultiheadAttention's out_proj, whose weight the attention reads directly.
            why = f"a subclass of nn.Linear ({type(owner).__name__}): other code may read its weight"
            skipped.append((weight, why))
        elif mod in factors:
            skipped.append((weight, "already a factor of a LowRankLinear"))
        elif len(names_of[id(params[weight])]) > 1:
            others = [n for n in names_of[id(params[weight])] if n != weight]
            skipped.append((weight, f"tied to {', '.join(others)}: decomposing it would untie them"))
        elif mod == "":
            skipped.append((weight, "the model itself: use LowRankLinear.from_linear"))
        else:
            chosen.append((mod, owner))
    if not chosen:
        raise SelectionError(f"{label}: types={types!r} chooses {len(seen)} weights but none can be {verb} "
                             f"({skipped[0][0]}: {skipped[0][1]}): choose nn.Linear layers with types=")
    return chosen, skipped


def _plan_ranks(chosen, rank, energy, param_budget, quantize) -> list[int]:
    """One rank per chosen layer; raises (naming the layer) before anything is decomposed."""
    shapes = [(linear.out_features, linear.in_features) for _, linear in chosen]
    for (name, _), (n, m) in zip(chosen, shapes):
        if max_saving_rank(n, m) == 0:
            raise SelectionError(f"{name}: no rank of its {n} x {m} weight has fewer parameters than the weight: "
                                 f"leave its type out with types=")
    if rank is not None:
        for (name, linear), (n, m) in zip(chosen, shapes):
            weight_of(linear, name)  # unloaded or non-finite: refused now, not after earlier layers were replaced
            if rank >= min(n, m):
                raise SelectionError(f"{name}: rank {rank} is not below min({n}, {m}) of its weight: give a smaller "
                                     f"rank, or leave its type out with types=")
            if rank * (n + m) >= n * m:
                raise SelectionError(f"{name}: at rank {rank} the factors have {rank * (n + m):,} parameters, the "
                                     f"{n} x {m} weight {n * m:,}: give a rank <= {max_saving_rank(n, m)}")
        return [rank] * len(chosen)

    # Singular values only: every layer's are needed before any layer changes, and holding each
    # layer's U and Vh meanwhile would take several times the model's memory. _factorize takes
    # each layer's SVD again as it replaces it.
    spectra = [torch.linalg.svdvals(weight_of(linear, name).double()) for name, linear in chosen]
    if energy is not None:
        ranks = []
        for (name, _), (n, m), s in zip(chosen, shapes, spectra):
            r, cap = energy_rank(s, energy), max_saving_rank(n, m)
            if r > cap:
                raise SelectionError(f"{name}: keeping {energy} of its energy needs rank {r} of {min(n, m)}, where "
                                     f"the factors are no smaller than the {n} x {m} weight (largest saving rank "
                                     f"{cap}, keeping {kept_energy(s, cap):.4f}): ask less energy, or leave its "
                                     f"type out with types=")
            ranks.append(quantize_rank(r, quantize, cap))
        return ranks

    dense = sum(n * m for n, m in shapes)
    budget = int(param_budget * dense) if isinstance(param_budget, float) else param_budget
    if budget > dense:
        raise SelectionError(f"decompose: param_budget {budget:,} is above the {dense:,} dense weight parameters of "
                             f"the {len(chosen)} chosen layers: low-rank factors must be smaller; give less")
    ranks = budget_ranks(spectra, shapes, budget, quantize)
    if ranks is None:
        smallest = sum(quantize_rank(1, quantize, max_saving_rank(n, m)) * (n + m) for n, m in shapes)
        raise SelectionError(f"decompose: param_budget {budget:,} is below the {smallest:,} parameters of the "
                             f"smallest ranks (1, quantized to multiples of {quantize}) of the {len(chosen)} chosen "
                             f"layers: give more, lower quantize=, or choose fewer layers with types=")
    return ranks


# -- sequential freezing --------------------------------------------------------------------------
class SequentialFreezing:
    """Train one factor of every LowRankLinear at a time: ``start`` ("first" or "second") for
    ``steps`` optimizer steps, then the other for ``steps``, and so on.

    The frozen factor's weight gets requires_grad False and loses its ``.grad``, so backward does not
    compute its weight gradient and torch's optimizers skip it (no update, no weight decay, its
    moments kept for when it trains again). Build the optimizer over all factor parameters,
    *before* freezing any (``Trainer`` builds its optimizer from the parameters that require
    gradients when ``train()`` starts; the callback freezes after that). Biases and every other
    parameter are left as they are.

    Plain loop:
        sf = SequentialFreezing(model, steps=100)
        optimizer = torch.optim.AdamW(model.parameters(), ...)
        sf.apply()
        for batch in data:
            loss(model, batch).backward(); optimizer.step(); optimizer.zero_grad(); sf.step()
    transformers' Trainer: ``Trainer(..., callbacks=[sf.callback()])``.

    Not supported: DistributedDataParallel without ``find_unused_parameters=True`` (it expects a
    gradient for every parameter that required one when it was wrapped).
    """

    def __init__(self, model: nn.Module, steps: int, start: str = "first"):
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise SpectrumFastError(f"SequentialFreezing: steps must be an int >= 1 (optimizer steps per factor), "
                                    f"got {steps!r}")
        if start not in FACTORS:
            raise SpectrumFastError(f"SequentialFreezing: start must be 'first' or 'second', got {start!r}")
        self.layers = [m for m in model.modules() if isinstance(m, LowRankLinear)]
        if not self.layers:
            raise SelectionError("SequentialFreezing: the model has no LowRankLinear layer: call "
                                 "spectrum_fast.decompose(model, ...) first")
        self.steps = steps
        self.start = start
        self.optimizer_steps = 0

    @property
    def trained_factor(self) -> str:
        """The factor that trains at the current step: "first" or "second"."""
        phase = self.optimizer_steps // self.steps
        return FACTORS[(FACTORS.index(self.start) + phase) % 2]

    def apply(self) -> str:
        """Set requires_grad for the current step (and drop the frozen factors' gradients); -> the trained factor."""
        trained = self.trained_factor
        for layer in self.layers:
            for factor in FACTORS:
                weight = getattr(layer, factor).weight
                weight.requires_grad_(factor == trained)
                if factor != trained:
                    weight.grad = None
        return trained

    def step(self) -> bool:
        """Count one optimizer step; switches factors (apply()) when a phase ends. -> True when it switched."""
        return self.at_step(self.optimizer_steps + 1)

    def at_step(self, optimizer_steps: int) -> bool:
        """Go to step ``optimizer_steps`` (e.g. the Trainer's global_step after a resume); -> True when it switched."""
        before = self.trained_factor
        self.optimizer_steps = optimizer_steps
        if self.trained_factor == before:
            return False
        self.apply()
        return True

    def callback(self):
        """A transformers TrainerCallback running this schedule (transformers is imported here, not before)."""
        from .lowrank_training import SequentialFreezingCallback

        return SequentialFreezingCallback(self)
