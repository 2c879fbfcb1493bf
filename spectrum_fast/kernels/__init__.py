"""Triton kernels: one family per file; a plain-torch reference for each lives in the tests."""

from __future__ import annotations
