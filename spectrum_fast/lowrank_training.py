"""SequentialFreezing in transformers' Trainer (kept apart so that lowrank.py imports without transformers).

When: ``on_train_begin`` comes after ``train()`` has built the optimizer (``_prepare_for_training``
calls ``create_optimizer``, which takes the parameters that require gradients then), so every factor
is in the optimizer before the first one is frozen. ``on_step_end`` comes after each optimizer step,
with ``state.global_step`` already counting it (gradient accumulation: once per optimizer step).
The schedule follows ``global_step``, so a resumed run continues the phase it stopped in.
"""

from __future__ import annotations

from transformers import TrainerCallback


class SequentialFreezingCallback(TrainerCallback):
    """Runs a ``spectrum_fast.lowrank.SequentialFreezing`` schedule; build it with ``schedule.callback()``."""

    def __init__(self, schedule):
        self.schedule = schedule

    def on_train_begin(self, args, state, control, **kwargs):
        self.schedule.optimizer_steps = state.global_step
        self.schedule.apply()

    def on_step_end(self, args, state, control, **kwargs):
        self.schedule.at_step(state.global_step)
