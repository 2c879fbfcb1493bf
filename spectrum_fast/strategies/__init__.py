"""Targeted-training strategies other than a plain scan, each answering with a ``Selection``."""

from .component_scales import components_selection
from .lowrank_factors import lowrank_selection
from .selection import Selection
from .snr_rule import snr
from .trainable import trainable_selection

__all__ = ["Selection", "snr", "lowrank_selection", "components_selection", "trainable_selection"]
