"""Spectrum in transformers' Trainer: ``SpectrumCallback`` freezes the model before the optimizer exists.

When it freezes: ``on_init_end``, the last event of ``Trainer.__init__``, which passes the model.
The Trainer creates its optimizer later, in ``train()`` (``_prepare_for_training`` calls
``create_optimizer``, which takes only parameters with ``requires_grad``), so frozen tensors never
enter the optimizer and get no optimizer state.

If an optimizer already exists at that point (``Trainer(optimizers=(opt, sched))``), it holds every
parameter. torch's optimizers skip a parameter whose ``.grad`` is None, weight decay included, and
freeze() clears the ``.grad`` of what it freezes, so frozen tensors still stay unchanged; the
callback logs a warning, since another optimizer may not skip them.

Fused expert tensors trained in part (gradient masks, expert_masks.py) also need their weight decay
masked. Trainer's optimizer is out of a callback's reach (callbacks are handed the optimizer given
to ``Trainer()``, not the one it builds), so from ``on_train_begin`` to ``on_train_end`` the callback
masks the weight decay of every optimizer in the process that holds such a tensor
(``weight_decay.mask_weight_decay_of_every_optimizer``).
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from .errors import SpectrumFastError
from .freeze import FreezeReport, freeze
from .results import ScanResult
from .selection import check_top_percent
from .weight_decay import mask_weight_decay_of_every_optimizer

logger = logging.getLogger(__name__)


class SpectrumCallback(TrainerCallback):
    """Freeze the Trainer's model by Spectrum's selection when the Trainer is created.

    selection: None to scan the Trainer's model then (``scan_options`` go to ``scan()``, e.g.
        ``types=``, ``device=``), a ScanResult, a result JSON path, an unfrozen_parameters YAML path,
        a list of patterns, or a ``strategies.Selection``: whatever ``freeze()`` takes.
    top_percent: Spectrum's percentage per type; needed unless the selection is a YAML, a list or a
        Selection (which has made its choice: a top_percent with it is an error).

    After the Trainer is created, ``callback.report`` is the FreezeReport. The count of trainable
    parameters is logged (logger ``spectrum_fast.training``, level INFO) and added to
    ``trainer.state.log_history`` when training starts, as ``spectrum_trainable_parameters`` and
    ``spectrum_total_parameters``. (The Trainer's own "Number of trainable parameters" counts a fused
    expert tensor trained in part as wholly trainable.)

    Not supported: ``Trainer(model_init=...)`` (train() then builds a new model, which callbacks
    never see), and sharded training that flattens parameters (DeepSpeed ZeRO, FSDP without
    ``use_orig_params``), where per-parameter requires_grad and gradient hooks do not apply.
    """

    def __init__(self, selection=None, top_percent: float | None = None, **scan_options):
        from .strategies import Selection

        if isinstance(selection, Selection) and top_percent is not None:
            raise SpectrumFastError(f"SpectrumCallback: a Selection ({selection.strategy}) has made its choice: drop "
                                    f"top_percent={top_percent!r}")
        needs_percent = selection is None or isinstance(selection, ScanResult) or (
            not isinstance(selection, Selection) and str(selection).lower().endswith(".json"))
        if needs_percent:
            if top_percent is None:
                raise SpectrumFastError("SpectrumCallback needs top_percent=, e.g. 50, to select from SNRs")
            top_percent = check_top_percent(top_percent)
        if scan_options and selection is not None:
            raise SpectrumFastError(f"SpectrumCallback: scan options {sorted(scan_options)} apply only when it scans "
                                    f"the model (selection=None)")
        self.selection = selection
        self.top_percent = top_percent
        self.scan_options = scan_options
        self.report: FreezeReport | None = None
        self._masked_decay = None

    def on_init_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:
            raise SpectrumFastError("SpectrumCallback: the Trainer has no model to freeze: pass model=, not model_init=")
        selection = self.selection
        if selection is None:
            from .scan import scan

            selection = scan(model, progress=False, **self.scan_options)
        self.report = freeze(model, selection, self.top_percent)
        logger.info(f"spectrum_fast: {self.report}")
        if self.report.unmatched:
            shown = ", ".join(self.report.unmatched[:3]) + (" ..." if len(self.report.unmatched) > 3 else "")
            logger.warning(f"spectrum_fast: {len(self.report.unmatched)} patterns match no parameter ({shown})")
        if optimizer is not None:
            logger.warning("spectrum_fast: the optimizer was created before freezing; it still holds the frozen "
                           "parameters, and torch.optim optimizers skip them only because they have no gradient")

    def on_train_begin(self, args, state, control, **kwargs):
        if self.report is None:
            return
        if self.report.trained_experts and self._masked_decay is None:
            self._masked_decay = mask_weight_decay_of_every_optimizer()
        state.log_history.append({"spectrum_trainable_parameters": self.report.trainable,
                                  "spectrum_total_parameters": self.report.total, "step": state.global_step})

    def on_train_end(self, args, state, control, **kwargs):
        if self._masked_decay is not None:
            self._masked_decay.remove()
            self._masked_decay = None
