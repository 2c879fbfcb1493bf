"""``freeze()``: train only the selected modules, the way Axolotl reads ``unfrozen_parameters``.

Axolotl's rule (``freeze_layers_except``): each entry is a regex in which ``.`` is a literal dot,
matched with ``re.match`` (anchored at the start only) against every parameter name. So the module
``model.layers.3.mlp.down_proj`` unfreezes ``model.layers.3.mlp.down_proj.weight`` (and its
bias), and ``^lm_head.weight$`` unfreezes the head. freeze() applies exactly that rule, so what
it trains is what Axolotl trains from the same YAML.

Tied weights (an embedding shared with the head) are one tensor with two names: it is trainable
when either name is selected.

One addition: a pattern ending in ``.<digits>`` (an expert of a fused 3-D tensor, scanned as
``<parameter>.<e>``) also unfreezes the parameter named exactly as the pattern without that suffix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import SelectionError
from .results import ScanResult


_EXPERT_SUFFIX = re.compile(r"(.+)\.\d+")  # ``<parameter>.<e>``: one expert of a fused 3-D tensor


@dataclass
class FreezeReport:
    trainable: int  # parameters (elements) left trainable
    total: int
    trainable_tensors: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # patterns that matched no parameter

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} / {self.total:,} parameters ({100 * self.fraction:.2f}%)"


def read_unfrozen_yaml(path: str | os.PathLike) -> list[str]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SelectionError(f"{path}: no such YAML file: give the unfrozen_parameters file written by a scan")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SelectionError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    entries = data.get("unfrozen_parameters") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise SelectionError(f"{path}: expected a list under 'unfrozen_parameters:'")
    return entries


def _patterns(selection, top_percent: float | None) -> list[str]:
    if isinstance(selection, ScanResult):
        if top_percent is None:
            raise SelectionError("freeze(model, scan_result) needs top_percent=, e.g. 50")
        names = selection.select(top_percent)
        extra = [n for n in (selection.embedding_name, selection.head_name) if n]
        return [f"^{n}$" for n in extra] + names
    if isinstance(selection, (str, os.PathLike)):
        return read_unfrozen_yaml(selection)
    if isinstance(selection, Iterable):
        return [str(s) for s in selection]
    raise SelectionError(f"cannot freeze from a {type(selection).__name__}: pass a ScanResult, a list of names "
                         f"or a YAML path")


def freeze(model: torch.nn.Module, selection, top_percent: float | None = None) -> FreezeReport:
    """Freeze every parameter of ``model``, then unfreeze those the selection names.

    selection: a ScanResult (with top_percent=; its embedding and head are kept trainable, as in
        spectrum.py's YAML), a list of module names / Axolotl patterns, or an unfrozen_parameters
        YAML path.
    """
    patterns = _patterns(selection, top_percent)
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p.replace(".", "\\.")))
        except re.error as e:
            raise SelectionError(f"unfrozen pattern {p!r} is not a valid regex ({e})") from None
    # A fused expert tensor ([E, n, m], e.g. transformers 5's in-memory ``mlp.experts.gate_up_proj``)
    # is scanned as E matrices named ``<parameter>.<e>``. Such a name is longer than the parameter's,
    # so Axolotl's rule never matches it and the YAML line would train nothing. requires_grad is per
    # tensor, so selecting any one expert has to unfreeze the whole fused tensor (all its experts):
    # a pattern ending in ``.<digits>`` also matches the parameter named exactly as the pattern
    # without that suffix. (Axolotl itself does not do this: see the README.)
    fused_names = [m.group(1) if (m := _EXPERT_SUFFIX.fullmatch(p)) else None for p in patterns]
    params: dict[int, torch.nn.Parameter] = {}
    names_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        params[id(param)] = param
        names_of.setdefault(id(param), []).append(name)
    used = [False] * len(compiled)
    trainable_names = []
    trainable = total = 0
    for key, param in params.items():
        hit = False
        for i, pat in enumerate(compiled):
            if any(pat.match(n) or n == fused_names[i] for n in names_of[key]):
                used[i] = hit = True
        param.requires_grad_(hit)
        total += param.numel()
        if hit:
            trainable += param.numel()
            trainable_names.append(names_of[key][0])
    unmatched = [p for p, u in zip(patterns, used) if not u]
    return FreezeReport(trainable, total, trainable_names, unmatched)
