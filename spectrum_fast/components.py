"""Principal-component allocation: train scales on the top singular directions of chosen layers.

Each chosen nn.Linear W0 [out, in] (SVD W0 = U S V^T) gets its top r singular directions as
*nodes*: node i is the rank-one matrix u_i v_i^T with a trainable scale delta_i, initially 0, so
the layer computes W = W0 + U_r diag(delta) V_r^T with W0 frozen (``ComponentLinear``).
``allocate`` decides which nodes are worth training on a few calibration batches, ``apply`` wraps
the model so that exactly those scales train, and ``merge`` folds them back into plain nn.Linear.

allocate, in four steps:

1. Gradients at delta = 0: one forward and backward pass per calibration batch gives every node's
   gradient dL/d delta_i = u_i^T (dL/dW) v_i for that batch.
2. Group lasso: minimize L(delta) + lam * sum_g ||delta_g||_2 by proximal block coordinate
   descent (group_lasso.py), one group at a time, each group update on the next batch. Groups are
   all nodes of one module (``groups="module"``) or blocks of k consecutive directions within a
   module (``groups=k``). ``penalty`` and ``lr`` are relative, so they mean the same for any loss
   scale: lam = penalty * g_max and the step is lr / g_max, where g_max is the largest group norm
   of the mean gradient at delta = 0 (at lam >= g_max, delta = 0 is already optimal).
   A node's importance is |delta_i| afterwards; nodes of groups the lasso zeroed tie at 0 and are
   ordered by their mean |gradient| at delta = 0.
3. Dependencies between groups: a sparse Gaussian graphical model (graphical_lasso.py) of each
   group's per-batch gradient norm at delta = 0, fitted on their correlation matrix across the
   calibration batches; its edges (non-zero partial correlations) link groups whose sensitivity
   rises and falls together from batch to batch.
4. Selection, best-first through the graph: take the group with the largest ||delta_g||, then
   always the strongest not yet taken neighbour (by an edge) of any group taken so far, and jump to
   the strongest remaining group only when no neighbour is left, so connected groups are kept
   together; within a group, nodes by importance. Groups the lasso zeroed come last (by gradient).
   Nodes are taken until ``budget`` of them are.

Which layers: as decompose (lowrank.py) chooses them: a scan's ``types``, then plain nn.Linear
modules only (the others are listed in ``skipped``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .budget import budget_limit
from .errors import SelectionError
from .graphical_lasso import graphical_lasso, partial_correlations
from .group_lasso import block_coordinate_descent
from .lowrank import chosen_linears, replace_module, top_singular_triplets, weight_of


class ComponentLinear(nn.Module):
    """y = base(x) + ((x V) * delta) U^T = x (W0 + U diag(delta) V^T)^T + bias.

    ``base``: the original nn.Linear (weight W0 and bias, left as they are: apply() freezes them);
    buffers ``u`` [out, k] and ``v`` [in, k]: the chosen singular directions, in the weight's dtype;
    ``directions`` [k]: which ones (0 = the largest singular value); parameter ``delta`` [k], zeros,
    float32 (or the weight's dtype when wider), so small updates are not lost in a bf16 scale.
    """

    def __init__(self, base: nn.Linear, u: torch.Tensor, v: torch.Tensor, directions: Sequence[int]):
        super().__init__()
        w = base.weight
        self.base = base
        self.register_buffer("u", u.detach().to(device=w.device, dtype=w.dtype).contiguous())
        self.register_buffer("v", v.detach().to(device=w.device, dtype=w.dtype).contiguous())
        self.register_buffer("directions", torch.tensor(list(directions), dtype=torch.long, device=w.device))
        dtype = torch.promote_types(w.dtype, torch.float32)
        self.delta = nn.Parameter(torch.zeros(len(directions), dtype=dtype, device=w.device))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, directions: Sequence[int] | None = None, *,
                    label: str | None = None) -> ComponentLinear:
        """Wrap ``linear`` with scales on its top-``rank`` singular directions (float64 SVD), or on
        those of them listed in ``directions``; 1 <= rank <= min(out, in)."""
        label = label or f"nn.Linear({linear.in_features}, {linear.out_features})"
        n, m = linear.out_features, linear.in_features
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= min(n, m):
            raise SelectionError(f"{label}: rank must be an int from 1 to min({n}, {m}) = {min(n, m)}, got {rank!r}")
        u, _, vh = top_singular_triplets(weight_of(linear, label), rank)
        return cls.from_svd(linear, u, vh, directions)

    @classmethod
    def from_svd(cls, linear: nn.Linear, u: torch.Tensor, vh: torch.Tensor,
                 directions: Sequence[int] | None = None) -> ComponentLinear:
        """Wrap ``linear`` given its top singular vectors U_r [out, r] and Vh_r [r, in] (of its weight:
        not checked), with scales on all r directions or on those listed in ``directions``."""
        directions = list(range(u.shape[1])) if directions is None else sorted(directions)
        return cls(linear, u[:, directions], vh[directions].T, directions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + ((x @ self.v) * self.delta.to(x.dtype)) @ self.u.T

    def delta_weight(self) -> torch.Tensor:
        """U diag(delta) V^T in float64, detached: what the scales add to W0."""
        return (self.u.double() * self.delta.detach().double()) @ self.v.double().T

    def to_linear(self) -> nn.Linear:
        """One nn.Linear with weight W0 + U diag(delta) V^T (summed in float64, rounded once to the
        weight's dtype) and the original bias parameter; the weight keeps W0's requires_grad."""
        w0 = self.base.weight
        linear = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None, device="meta")
        merged = (w0.detach().double() + self.delta_weight()).to(w0.dtype)
        linear.weight = nn.Parameter(merged, requires_grad=w0.requires_grad)
        if self.base.bias is not None:
            linear.bias = self.base.bias
        return linear

    def extra_repr(self) -> str:
        return f"directions={self.directions.tolist()}"


# -- the allocation ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AllocatedModule:
    name: str
    shape: tuple[int, int]  # the weight's (out_features, in_features)
    rank: int  # its nodes: the top min(rank, out, in) singular directions
    singular_values: tuple[float, ...]  # S_1 .. S_rank of the weight (apply checks it sees the same weights)
    importance: tuple[float, ...]  # per direction: |delta_i| after the group lasso
    nodes: tuple[int, ...]  # the directions kept trainable, ascending (0 = the largest singular value)


@dataclass
class Allocation:
    modules: list[AllocatedModule] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # group names: a module, or "<module>[a:b]" for a block
    order: list[str] = field(default_factory=list)  # the groups in the order they were taken (some in part)
    edges: list[tuple[str, str, float]] = field(default_factory=list)  # (group, group, partial correlation)
    penalty: float = 0.0  # lam, in the loss's units (penalty * g_max)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (weight, why not a candidate)

    @property
    def total_nodes(self) -> int:
        return sum(m.rank for m in self.modules)

    @property
    def kept_nodes(self) -> int:
        return sum(len(m.nodes) for m in self.modules)

    @property
    def kept(self) -> dict[str, list[int]]:
        """{module name: kept directions} for the modules that keep any."""
        return {m.name: list(m.nodes) for m in self.modules if m.nodes}

    def __str__(self) -> str:
        total, kept = self.total_nodes, self.kept_nodes
        used = len(self.kept)
        text = (f"kept {kept:,} of {total:,} component scales ({100 * kept / total:.2f}%) in {used} of "
                f"{len(self.modules)} linear layers; {len(self.groups)} groups, {len(self.edges)} graph edges; "
                f"lambda {self.penalty:.3g}")
        if self.skipped:
            text += f"; {len(self.skipped)} weights skipped (see .skipped)"
        return text


def allocate(model: nn.Module, batches: Iterable, *, budget: int | float, types="auto", rank: int = 8,
             groups: str | int = "module", penalty: float = 0.1, lr: float = 0.1, steps: int = 3,
             graph_penalty: float | None = None, loss_fn: Callable | None = None) -> Allocation:
    """Choose which component scales of ``model`` to train (see the module's docstring).

    batches: at least 2 calibration batches (the graph needs a covariance across them): model
        inputs; a dict with ``labels`` is run as ``model(**batch).loss`` (its tensors moved to the
        model's device), anything else needs ``loss_fn(model, batch) -> scalar loss``.
    budget: the component scales to keep trainable: a count, or a fraction in (0, 1] of all nodes.
    types: which layers, as scan()'s ``types``. rank: nodes per layer (capped at min(out, in)).
    groups: "module" (one group per layer) or an int k (blocks of k directions within a layer).
    penalty: lam as a fraction of g_max (>= 0; at 1 or more the lasso keeps delta at 0 and the
        gradients alone rank the nodes). lr: each group step is lr / g_max times its gradient, so the
        first step of the group with the largest gradient is lr long (delta is in the weight's units:
        ||U diag(delta) V^T||_F = ||delta||). steps: passes over all groups, each costing one forward
        and backward pass per group. graph_penalty: the graphical lasso's alpha on the correlations;
        default 1 / sqrt(batches), about the standard error of a sample correlation of 0, so
        edges need more evidence than noise gives.

    The model is left as it was (layers, weights, requires_grad, train/eval mode); it runs in eval
    mode meanwhile, and no gradient reaches its own parameters.
    """
    _check_options(rank, groups, penalty, lr, steps, graph_penalty)
    _refuse_wrapped(model, "allocate")
    chosen, skipped = chosen_linears(model, types, "allocate", "wrapped")
    ranks = [min(rank, linear.out_features, linear.in_features) for _, linear in chosen]
    count = _budget_count(budget, sum(ranks))
    batches = list(batches)
    if len(batches) < 2:
        raise SelectionError(f"allocate: got {len(batches)} calibration batch(es): give at least 2 (the dependency "
                             f"graph is a covariance across batches); a few dozen make it meaningful")

    triplets = [_top_directions(linear, r, name) for (name, linear), r in zip(chosen, ranks)]
    layers = [ComponentLinear.from_svd(linear, u, vh, None) for (_, linear), (u, _, vh) in zip(chosen, triplets)]
    offsets = np.cumsum([0] + ranks).tolist()
    group_index, group_names = _groups(chosen, ranks, offsets, groups)
    with _wrapped(model, [name for name, _ in chosen], layers):
        def gradient(delta: torch.Tensor, update: int) -> torch.Tensor:
            return _gradient(model, layers, delta, batches[update % len(batches)], loss_fn)

        zero = torch.zeros(offsets[-1], dtype=torch.float64)
        per_batch = torch.stack([gradient(zero, b) for b in range(len(batches))])  # [batches, nodes]
        mean = per_batch.mean(0)
        g_max = max(float(torch.linalg.vector_norm(mean[index])) for index in group_index)
        if g_max == 0:
            raise SelectionError("allocate: the loss has zero gradient for every component scale on the calibration "
                                 "batches: check that the loss depends on the chosen layers (types=)")
        delta = block_coordinate_descent(gradient, group_index, offsets[-1], lr=lr / g_max, penalty=penalty * g_max,
                                         cycles=steps)

    importance = delta.abs()
    fallback = per_batch.abs().mean(0)  # ranks the nodes the lasso left at zero
    statistics = torch.stack([per_batch[:, index].norm(dim=1) for index in group_index], 1)  # [batches, groups]
    edges = dependency_graph(statistics.numpy(), graph_penalty or 1 / len(batches) ** 0.5)
    neighbours: list[set[int]] = [set() for _ in group_index]
    for i, j, _ in edges:
        neighbours[i].add(j)
        neighbours[j].add(i)
    scores = [float(importance[index].norm()) for index in group_index]
    ties = [float(fallback[index].norm()) for index in group_index]
    order = take_order(scores, ties, neighbours)
    kept = _take_nodes(order, group_index, importance, fallback, count)

    allocation = Allocation(groups=group_names, edges=[(group_names[i], group_names[j], rho) for i, j, rho in edges],
                            order=[group_names[g] for g in order if kept & set(group_index[g].tolist())],
                            penalty=penalty * g_max, skipped=skipped)
    for (name, linear), r, start, (_, s, _) in zip(chosen, ranks, offsets, triplets):
        nodes = tuple(i - start for i in sorted(kept) if start <= i < start + r)
        allocation.modules.append(AllocatedModule(name, (linear.out_features, linear.in_features), r,
                                                  tuple(s.tolist()), tuple(importance[start:start + r].tolist()),
                                                  nodes))
    return allocation


def apply(model: nn.Module, allocation: Allocation) -> nn.Module:
    """Wrap each module of ``allocation`` that keeps nodes in a ComponentLinear training exactly
    those scales (delta = 0); every other parameter of the model gets requires_grad False (and
    loses its .grad). In place; returns ``model``. The directions come from a new float64 SVD of
    the current weights, which must be the ones allocate() saw."""
    _refuse_wrapped(model, "apply")
    modules = dict(model.named_modules())
    names, layers = [], []
    for am in allocation.modules:
        if not am.nodes:
            continue
        linear = modules.get(am.name)
        if type(linear) is not nn.Linear or (linear.out_features, linear.in_features) != am.shape:
            raise SelectionError(f"apply: {am.name} is not an nn.Linear of shape {am.shape} in this model: apply "
                                 f"the allocation to the model allocate() was given")
        u, s, vh = _top_directions(linear, am.rank, am.name)
        saved = torch.tensor(am.singular_values, dtype=torch.float64)
        if not torch.allclose(s, saved, rtol=1e-6, atol=1e-9 * float(saved[0])):
            raise SelectionError(f"apply: the weights of {am.name} changed since allocate() (top singular values "
                                 f"differ): allocate again on these weights")
        names.append(am.name)
        layers.append(ComponentLinear.from_svd(linear, u, vh, am.nodes))
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    for name, layer in zip(names, layers):
        replace_module(model, name, layer)
        layer.delta.requires_grad_(True)
    return model


def merge(model: nn.Module) -> nn.Module:
    """Replace every ComponentLinear by one nn.Linear with weight W0 + U diag(delta) V^T (in the
    weight's dtype; see ComponentLinear.to_linear). In place; returns ``model``."""
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, ComponentLinear)]
    if not wrapped:
        raise SelectionError("merge: the model has no ComponentLinear layer: nothing to merge (apply() wraps them)")
    for name, layer in wrapped:
        if name == "":
            raise SelectionError("merge: the model itself is a ComponentLinear: call its to_linear()")
        replace_module(model, name, layer.to_linear())
    return model


# -- the dependency graph and the order of the groups -----------------------------------------------
def dependency_graph(statistics: np.ndarray, alpha: float) -> list[tuple[int, int, float]]:
    """Edges (i, j, partial correlation), i < j, of the graphical lasso fitted on the correlation
    matrix of ``statistics`` [samples, variables]; variables that do not vary have no edge."""
    x = np.asarray(statistics, dtype=np.float64)
    spread = x.std(0)
    varying = np.flatnonzero(spread > 1e-12 * max(float(np.abs(x).max()), 1e-300))
    if x.shape[0] < 2 or len(varying) < 2:
        return []
    z = (x[:, varying] - x[:, varying].mean(0)) / spread[varying]
    corr = z.T @ z / x.shape[0]
    corr = (corr + corr.T) / 2
    np.fill_diagonal(corr, 1.0)
    rho = partial_correlations(graphical_lasso(corr, alpha)[0])
    return [(int(varying[a]), int(varying[b]), float(rho[a, b]))
            for a in range(len(varying)) for b in range(a + 1, len(varying)) if abs(rho[a, b]) > 1e-10]


def take_order(scores: Sequence[float], ties: Sequence[float], neighbours: Sequence[set[int]]) -> list[int]:
    """The order groups are taken in: best-first through the graph. Groups with a positive score
    first: the highest, then always the highest-scoring neighbour of any group taken so far, the
    highest remaining only when no neighbour is left; then the groups scoring 0, by ``ties``."""
    key = lambda g: (scores[g], ties[g], -g)  # noqa: E731 (ties by gradient, then model order)
    live = {g for g in range(len(scores)) if scores[g] > 0}
    order: list[int] = []
    frontier: set[int] = set()
    while live:
        g = max((frontier & live) or live, key=key)
        order.append(g)
        live.discard(g)
        frontier |= neighbours[g]
    taken = set(order)
    return order + sorted((g for g in range(len(scores)) if g not in taken), key=key, reverse=True)


def _take_nodes(order: list[int], group_index: list[torch.Tensor], importance: torch.Tensor,
                fallback: torch.Tensor, count: int) -> set[int]:
    """The first ``count`` nodes: groups in ``order``, nodes within a group by importance (then by
    gradient, then direction)."""
    kept: list[int] = []
    for g in order:
        nodes = sorted(group_index[g].tolist(), key=lambda i: (-float(importance[i]), -float(fallback[i]), i))
        kept += nodes[: count - len(kept)]
        if len(kept) == count:
            break
    return set(kept)


# -- helpers ----------------------------------------------------------------------------------------
def _check_options(rank, groups, penalty, lr, steps, graph_penalty) -> None:
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise SelectionError(f"allocate: rank must be an int >= 1 (singular directions per layer), got {rank!r}")
    if groups != "module" and (not isinstance(groups, int) or isinstance(groups, bool) or groups < 1):
        raise SelectionError(f"allocate: groups must be 'module' or an int >= 1 (directions per block), got {groups!r}")
    if not number(penalty) or not penalty >= 0:
        raise SelectionError(f"allocate: penalty must be a number >= 0 (a fraction of the largest group gradient), "
                             f"got {penalty!r}")
    if not number(lr) or not lr > 0:
        raise SelectionError(f"allocate: lr must be a number > 0, got {lr!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise SelectionError(f"allocate: steps must be an int >= 1 (passes over the groups), got {steps!r}")
    if graph_penalty is not None and (not number(graph_penalty) or not graph_penalty > 0):
        raise SelectionError(f"allocate: graph_penalty must be a number > 0 or None, got {graph_penalty!r}")


def _budget_count(budget, total: int) -> int:
    """The number of component scales ``budget`` (a count, or a fraction of ``total``) keeps."""
    count = int(budget_limit(budget, total, "allocate", "component scales"))
    if count < 1:
        raise SelectionError(f"allocate: budget {budget} of {total:,} component scales keeps none: give a larger "
                             f"fraction or a count")
    return count


def _refuse_wrapped(model: nn.Module, label: str) -> None:
    if any(isinstance(m, ComponentLinear) for m in model.modules()):
        raise SelectionError(f"{label}: the model already has ComponentLinear layers: call "
                             f"spectrum_fast.components.merge(model) first")


def _groups(chosen, ranks, offsets, groups) -> tuple[list[torch.Tensor], list[str]]:
    index, names = [], []
    for (name, _), r, start in zip(chosen, ranks, offsets):
        size = r if groups == "module" else groups
        for a in range(0, r, size):
            b = min(a + size, r)
            index.append(torch.arange(start + a, start + b))
            names.append(name if groups == "module" else f"{name}[{a}:{b}]")
    return index, names


def _top_directions(linear: nn.Linear, rank: int, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U_r, S_r, Vh_r) of the layer's weight, float64; S_r on the CPU (apply() checks it)."""
    u, s, vh = top_singular_triplets(weight_of(linear, name), rank)
    return u, s.cpu(), vh


@contextmanager
def _wrapped(model: nn.Module, names: list[str], layers: list[ComponentLinear]):
    """The model with ``layers`` in place of its linears, everything else frozen and in eval mode;
    restored afterwards (also on an error)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    for name, layer in zip(names, layers):
        replace_module(model, name, layer)
    try:
        yield
    finally:
        for name, layer in zip(names, layers):
            replace_module(model, name, layer.base)
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


def _gradient(model: nn.Module, layers: list[ComponentLinear], delta: torch.Tensor, batch, loss_fn) -> torch.Tensor:
    """dL/d delta at ``delta`` (float64, every layer's scales concatenated) on one batch."""
    start = 0
    with torch.no_grad():
        for layer in layers:
            k = layer.delta.numel()
            layer.delta.copy_(delta[start:start + k])
            layer.delta.grad = None
            start += k
    loss = calibration_loss(model, batch, loss_fn)
    loss.backward()
    return torch.cat([layer.delta.grad.detach().double().cpu() if layer.delta.grad is not None
                      else torch.zeros(layer.delta.numel(), dtype=torch.float64) for layer in layers])


def calibration_loss(model: nn.Module, batch, loss_fn, label: str = "allocate") -> torch.Tensor:
    """The loss of one calibration batch: ``loss_fn(model, batch)``, or ``model(**batch).loss`` for a dict
    with ``labels`` (its tensors moved to the model's device); checked to be a finite scalar that
    requires grad. ``label`` names the caller in errors. Shared by the data-driven strategies."""
    if loss_fn is not None:
        loss = loss_fn(model, batch)
    elif isinstance(batch, Mapping) and "labels" in batch:
        device = next(model.parameters()).device
        loss = model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}).loss
    else:
        raise SelectionError(f"{label}: a calibration batch is not a dict with 'labels' and no loss_fn was given: add "
                             "labels (transformers models then compute their loss) or pass loss_fn(model, batch)")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
        raise SelectionError(f"{label}: the loss must be a scalar tensor computed from the model's outputs (one that "
                             "requires grad)")
    if not torch.isfinite(loss):
        raise SelectionError(f"{label}: the loss on a calibration batch is not finite (inf or NaN): check the batches")
    return loss
