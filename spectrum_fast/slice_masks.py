"""Gradient masks over rows or columns: train some output rows (or input columns) of a weight and
leave the others exactly as they are.

A selection finer than a tensor (gradient impact with ``granularity="row"`` or ``"column"``) cannot
be expressed by ``requires_grad``. As for fused experts (expert_masks.py), a tensor hook replaces
the gradient of every unselected index along ``dim`` by exact zeros before it reaches ``.grad``,
on every backward pass.

The mask is stored under the same parameter attribute as an expert mask, on purpose: a parameter
has at most one gradient mask, so freeze() (which removes any mask before it decides) clears these
too and never leaves a stale row mask behind, and ``mask_weight_decay`` finds them and decays the
selected rows or columns alone, through the same ``selected_slices`` method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.hooks import RemovableHandle

from .expert_masks import MASK_ATTRIBUTE, remove_expert_mask  # one mask slot per parameter (see above)


def _runs(indices: tuple[int, ...]) -> list[tuple[int, int]]:
    """Sorted indices as (start, length) runs of consecutive values: [1, 2, 3, 7] -> [(1, 3), (7, 1)]."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


@dataclass
class SliceMask:
    """Which indices along ``dim`` of a parameter receive gradients (dim 0: output rows of an
    nn.Linear weight [out, in]; dim 1: its input columns)."""

    dim: int
    indices: tuple[int, ...]  # selected, sorted
    size: int  # the parameter's extent along dim
    handle: RemovableHandle

    def selected_slices(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``tensor`` (the parameter, its gradient or an optimizer state of its shape) covering
        the selected indices, one per run of consecutive indices, so in-place ops touch nothing else."""
        return [tensor.narrow(self.dim, start, length) for start, length in _runs(self.indices)]


def _zero_unselected_hook(dim: int, indices: tuple[int, ...], size: int):
    frozen_by_device: dict[torch.device, torch.Tensor] = {}

    def zero_unselected(grad: torch.Tensor) -> torch.Tensor:
        frozen = frozen_by_device.get(grad.device)
        if frozen is None:
            frozen = torch.ones(size, dtype=torch.bool, device=grad.device)
            frozen[list(indices)] = False
            shape = [1] * grad.dim()
            shape[dim] = size
            frozen = frozen_by_device[grad.device] = frozen.view(shape)
        # masked_fill, not a multiply: 0 * inf is nan, and an overflow in a frozen row must not reach the optimizer.
        return grad.masked_fill(frozen, 0)

    return zero_unselected


def install_slice_mask(param: torch.Tensor, dim: int, indices) -> SliceMask:
    """Let only ``indices`` along ``dim`` of ``param`` receive gradients; replaces any mask
    (slice or expert) installed before."""
    remove_slice_mask(param)
    selected = tuple(sorted(set(int(i) for i in indices)))
    hook = _zero_unselected_hook(dim, selected, param.shape[dim])
    mask = SliceMask(dim, selected, param.shape[dim], param.register_hook(hook))
    setattr(param, MASK_ATTRIBUTE, mask)
    if param.grad is not None:  # a gradient left from before: clear its unselected slices too
        with torch.no_grad():
            param.grad.copy_(hook(param.grad))
    return mask


def remove_slice_mask(param: torch.Tensor) -> None:
    """Remove the gradient mask of ``param``, whichever kind it is."""
    remove_expert_mask(param)


def slice_mask_of(param: torch.Tensor) -> SliceMask | None:
    mask = getattr(param, MASK_ATTRIBUTE, None)
    return mask if isinstance(mask, SliceMask) else None
