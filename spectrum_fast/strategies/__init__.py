"""Targeted-training strategies other than a plain scan, each answering with a ``Selection``."""

from .apply import apply_masks
from .component_scales import components_selection
from .impact import impact
from .lowrank_factors import lowrank_selection
from .salf import salf
from .selection import Selection
from .snr_rule import snr
from .trainable import trainable_selection

__all__ = ["Selection", "snr", "salf", "impact", "apply_masks", "lowrank_selection", "components_selection",
           "trainable_selection"]
