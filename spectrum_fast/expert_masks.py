"""Gradient masks: train some experts of a fused expert tensor and leave the others exactly as they are.

transformers 5 stores the experts of a MoE layer as one parameter of shape [E, n, m]
(``mlp.experts.gate_up_proj``, ``mlp.experts.down_proj``); a scan names its matrices
``<parameter>.<e>``. ``requires_grad`` is per tensor, so it cannot train experts 1 and 3 and freeze
the rest. A mask does: a tensor hook (``param.register_hook``) replaces the gradient of every
unselected expert by exact zeros before it reaches ``.grad``, on every backward pass (so gradient
accumulation, clipping and all-reduce see zeros there too).

A zero gradient leaves a slice unchanged under SGD (with or without momentum) and under Adam and
AdamW without weight decay: their moments stay 0 and the update is 0. Weight decay is the
exception: it shrinks the parameter itself, gradient or not. ``weight_decay.mask_weight_decay``
handles that.

The mask lives on the parameter (attribute ``_spectrum_fast_expert_mask``), so it follows the
parameter through ``model.to(...)`` and is found again by the optimizer hooks; installing a new
mask removes the old hook first, so masks never stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.hooks import RemovableHandle

# The attribute a parameter keeps its gradient mask in: one slot, shared with slice_masks.py.
MASK_ATTRIBUTE = "_spectrum_fast_expert_mask"


def _selected_rows(experts: tuple[int, ...], num_experts: int, device: torch.device) -> torch.Tensor:
    rows = torch.zeros(num_experts, dtype=torch.bool, device=device)
    rows[list(experts)] = True
    return rows


@dataclass
class ExpertMask:
    """Which experts (indices into dim 0) of a fused parameter receive gradients."""

    experts: tuple[int, ...]  # selected, sorted
    num_experts: int
    handle: RemovableHandle

    def selected_slices(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``tensor`` (the parameter, its gradient or a state of the same shape), one per
        selected expert: contiguous row blocks, so in-place ops on them touch nothing else."""
        return [tensor[e] for e in self.experts]


def _zero_frozen_experts_hook(experts: tuple[int, ...], num_experts: int):
    frozen_by_device: dict[torch.device, torch.Tensor] = {}

    def zero_frozen_experts(grad: torch.Tensor) -> torch.Tensor:
        frozen = frozen_by_device.get(grad.device)
        if frozen is None:
            frozen = frozen_by_device[grad.device] = ~_selected_rows(experts, num_experts, grad.device)
        # masked_fill, not a multiply: 0 * inf and 0 * nan are nan, and an fp16 overflow in a frozen
        # expert must not reach the optimizer.
        return grad.masked_fill(frozen.view(-1, *([1] * (grad.dim() - 1))), 0)

    return zero_frozen_experts


def install_expert_mask(param: torch.Tensor, experts) -> ExpertMask:
    """Let only ``experts`` (indices into dim 0) of ``param`` receive gradients; replaces any mask
    installed before."""
    remove_expert_mask(param)
    selected = tuple(sorted(set(experts)))
    hook = _zero_frozen_experts_hook(selected, param.shape[0])
    mask = ExpertMask(selected, param.shape[0], param.register_hook(hook))
    setattr(param, MASK_ATTRIBUTE, mask)
    if param.grad is not None:  # a gradient left from before freezing: clear its frozen experts too
        with torch.no_grad():
            param.grad.copy_(hook(param.grad))
    return mask


def remove_expert_mask(param: torch.Tensor) -> None:
    mask = getattr(param, MASK_ATTRIBUTE, None)
    if mask is not None:
        mask.handle.remove()
        delattr(param, MASK_ATTRIBUTE)


def expert_mask_of(param: torch.Tensor) -> ExpertMask | None:
    """The mask ``freeze()`` installed on ``param``, or None (the whole tensor trains or is frozen)."""
    return getattr(param, MASK_ATTRIBUTE, None)
