"""Weight decay that spares frozen experts.

A gradient mask (expert_masks.py) keeps the frozen experts of a fused tensor still under SGD and
Adam: their gradient is exactly 0, so their moments and updates are 0. Weight decay does not look
at the gradient. torch's AdamW multiplies the whole tensor by (1 - lr * wd) before the Adam update;
SGD, Adam and the others add wd * p to the gradient, which makes the frozen experts' gradient
nonzero. Either way the frozen experts would shrink at every step.

``mask_weight_decay(optimizer)`` fixes that with a step pre-hook and a step post-hook. Before each
step, each masked parameter in a group with weight decay moves, for this step only, into a copy of
its group with ``weight_decay=0``, and the decay is applied to its selected experts alone, exactly
where and how torch would apply it:

- decoupled (AdamW; Adam, NAdam, RAdam with ``decoupled_weight_decay=True``): the selected experts
  are multiplied by ``1 - lr * wd`` before the update, the order of torch's for-loop and foreach
  implementations (the fused kernels round ``p - lr * wd * p`` differently, by an ulp at most);
- coupled (SGD, Adam, Adagrad, RMSprop, Adamax, Adadelta, NAdam, RAdam): the step sees the gradient
  plus ``wd * p`` on the selected experts (``-wd * p`` under ``maximize``, since torch negates the
  gradient first); the parameter's own ``.grad`` is put back after the step.

After the step the groups are restored, so learning-rate schedulers and ``state_dict()`` see the
groups the optimizer was built with. Frozen experts stay bit-identical; selected experts follow
the optimizer's own arithmetic, element by element.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle

from .errors import SpectrumFastError
from .expert_masks import expert_mask_of

_SPLIT = "_spectrum_fast_split"  # optimizer attribute: the state to undo after the step
_OWN_HOOKS = "_spectrum_fast_masked_decay"  # optimizer attribute: mask_weight_decay() was called on it

_COUPLED_ONLY = (torch.optim.SGD, torch.optim.Adagrad, torch.optim.RMSprop, torch.optim.Adamax, torch.optim.Adadelta)
_DECOUPLED_BY_FLAG = (torch.optim.Adam, torch.optim.NAdam, torch.optim.RAdam)  # group["decoupled_weight_decay"]


def _decay_rule(optimizer: torch.optim.Optimizer, group: dict) -> str | None:
    """"decoupled", "coupled", or None for an optimizer whose weight decay we do not know."""
    if isinstance(optimizer, torch.optim.AdamW):  # a subclass of Adam in new torch, not in old
        return "decoupled"
    if isinstance(optimizer, _DECOUPLED_BY_FLAG):
        return "decoupled" if group.get("decoupled_weight_decay", False) else "coupled"
    if isinstance(optimizer, _COUPLED_ONLY):
        return "coupled"
    return None


@dataclass
class _Split:
    groups: list[tuple[dict, list]] = field(default_factory=list)  # (group, its params before the split)
    temporary: list[dict] = field(default_factory=list)  # groups added for this step
    grads: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (param, its own .grad)


def _undo(optimizer: torch.optim.Optimizer) -> None:
    split = getattr(optimizer, _SPLIT, None)
    if split is None:
        return
    for group, params in split.groups:
        group["params"] = params
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if not any(g is t for t in split.temporary)]
    for param, grad in split.grads:
        param.grad = grad
    delattr(optimizer, _SPLIT)


def _split_before_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    _undo(optimizer)  # left by a step that raised
    todo = []  # (group, its masked params, weight decay, rule): checked in full before anything changes
    for group in optimizer.param_groups:
        wd = group.get("weight_decay", 0)
        masked = [p for p in group["params"] if expert_mask_of(p) is not None]
        if not masked or (not isinstance(wd, torch.Tensor) and wd == 0):
            continue
        rule = _decay_rule(optimizer, group)
        if rule is None:
            raise SpectrumFastError(
                f"{type(optimizer).__name__} applies weight decay {float(wd)} to fused expert tensors whose frozen "
                f"experts it would shrink: use a torch.optim optimizer (AdamW, Adam, SGD, ...) or put those tensors "
                f"in a group with weight_decay=0")
        todo.append((group, masked, wd, rule))
    if not todo:
        return
    closure = args[1] if len(args) > 1 else kwargs.get("closure")  # args[0] is the optimizer
    if closure is not None:
        raise SpectrumFastError("mask_weight_decay: step(closure) is not supported (the closure would run after "
                                "the decay): call loss.backward() yourself, then optimizer.step()")
    split = _Split()
    setattr(optimizer, _SPLIT, split)
    for group, masked, wd, rule in todo:
        split.groups.append((group, group["params"]))
        group["params"] = [p for p in group["params"] if expert_mask_of(p) is None]
        temporary = {**group, "params": masked, "weight_decay": 0.0}
        split.temporary.append(temporary)
        optimizer.param_groups.append(temporary)
        with torch.no_grad():
            _decay_selected_experts([p for p in masked if p.grad is not None], group, wd, rule, split)


def _decay_selected_experts(params: list, group: dict, wd, rule: str, split: _Split) -> None:
    # Parameters without a gradient are skipped by torch's optimizers, decay included: so here too.
    if rule == "decoupled":
        views = [v for p in params for v in expert_mask_of(p).selected_slices(p)]
        if views:
            torch._foreach_mul_(views, 1 - group["lr"] * wd)  # AdamW's own op, on the selected experts only
        return
    alpha = -wd if group.get("maximize", False) else wd
    for p in params:
        grad = p.grad.clone()
        mask = expert_mask_of(p)
        torch._foreach_add_(mask.selected_slices(grad), mask.selected_slices(p), alpha=alpha)
        split.grads.append((p, p.grad))
        p.grad = grad


def _undo_after_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    _undo(optimizer)


class _Handles:
    def __init__(self, optimizer, handles: list[RemovableHandle]):
        self._optimizer, self._handles = optimizer, handles

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        if self._optimizer is not None and getattr(self._optimizer, _OWN_HOOKS, None) is self:
            delattr(self._optimizer, _OWN_HOOKS)


def mask_weight_decay(optimizer: torch.optim.Optimizer) -> _Handles:
    """Make ``optimizer``'s weight decay spare the frozen experts of fused tensors that freeze() masked.

    Call it once, after freeze() and after building the optimizer (before or after a learning-rate
    scheduler); masks installed later by another freeze() are followed. Returns a handle whose
    ``remove()`` undoes it. Calling it again on the same optimizer returns the same handle.
    Supported: torch.optim's SGD, Adam, AdamW, NAdam, RAdam, Adagrad, RMSprop, Adamax, Adadelta; any
    other optimizer raises at its first step if it decays a masked tensor. ``step(closure)`` is not
    supported when there is decay to mask.
    """
    optimizer = _torch_optimizer(optimizer)
    existing = getattr(optimizer, _OWN_HOOKS, None)
    if existing is not None:
        return existing
    handles = _Handles(optimizer, [optimizer.register_step_pre_hook(_split_before_step),
                                   optimizer.register_step_post_hook(_undo_after_step)])
    setattr(optimizer, _OWN_HOOKS, handles)
    return handles


def _torch_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers such as accelerate's AcceleratedOptimizer."""
    inner = optimizer
    while not isinstance(inner, torch.optim.Optimizer) and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    if not isinstance(inner, torch.optim.Optimizer):
        raise SpectrumFastError(f"mask_weight_decay: {type(optimizer).__name__} is not a torch.optim.Optimizer")
    return inner


# -- every optimizer of the process (for trainers that build the optimizer out of our reach) ----------
_global_users = 0
_global_handles: list[RemovableHandle] = []


def _split_before_any_step(optimizer, args, kwargs) -> None:
    if getattr(optimizer, _OWN_HOOKS, None) is None:  # its own hooks do it, once
        _split_before_step(optimizer, args, kwargs)


def _undo_after_any_step(optimizer, args, kwargs) -> None:
    if getattr(optimizer, _OWN_HOOKS, None) is None:
        _undo(optimizer)


def mask_weight_decay_of_every_optimizer() -> _Handles:
    """mask_weight_decay() for every optimizer of this process, until ``remove()``: for trainers that
    create the optimizer where a callback cannot reach it (transformers' Trainer). An optimizer
    holding no masked parameter is left alone. Nested calls are counted."""
    global _global_users
    if _global_users == 0:
        _global_handles[:] = [register_optimizer_step_pre_hook(_split_before_any_step),
                              register_optimizer_step_post_hook(_undo_after_any_step)]
    _global_users += 1
    return _GlobalUse()


class _GlobalUse(_Handles):
    def __init__(self):
        super().__init__(None, [])
        self._removed = False

    def remove(self) -> None:
        global _global_users
        if self._removed:
            return
        self._removed = True
        _global_users -= 1
        if _global_users == 0:
            for h in _global_handles:
                h.remove()
            _global_handles.clear()
