"""Targeted-training strategies other than a plain scan, each answering with a ``Selection``."""

from .apply import apply_masks
from .impact import impact
from .salf import salf
from .selection import Selection

__all__ = ["Selection"]
__all__ += ["salf", "impact", "apply_masks"]
