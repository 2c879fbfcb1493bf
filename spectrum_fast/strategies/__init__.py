"""Targeted-training strategies other than a plain scan, each answering with a ``Selection``."""

from .selection import Selection

__all__ = ["Selection"]
