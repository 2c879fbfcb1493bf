"""``freeze()``: train only the selected modules, the way Axolotl reads ``unfrozen_parameters``.

Axolotl's rule (``freeze_layers_except``): each entry is a regex in which ``.`` is a literal dot,
matched with ``re.match`` (anchored at the start only) against every parameter name. So the module
``model.layers.3.mlp.down_proj`` unfreezes ``model.layers.3.mlp.down_proj.weight`` (and its
bias), and ``^lm_head.weight$`` unfreezes the head. freeze() applies exactly that rule, so what
it trains is what Axolotl trains from the same YAML.

Tied weights (an embedding shared with the head) are one tensor with two names: it is trainable
when either name is selected.

One addition: a pattern ending in ``.<digits>`` names one expert of a fused 3-D expert tensor
[E, n, m] (scanned as ``<parameter>.<e>``). requires_grad cannot select part of a tensor, so such
a parameter is made trainable and given a gradient mask (expert_masks.py): only the selected
experts receive gradients, the others get exact zeros. Expert ``e`` of ``<parameter>`` also trains
row ``e`` of ``<parameter>_bias`` ([E, k], gpt-oss), as a module name also trains its ``.bias``
under Axolotl's rule.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import SelectionError
from .expert_masks import expert_mask_of, install_expert_mask, remove_expert_mask
from .results import REFERENCE_EMBEDDING_PATTERN, REFERENCE_HEAD_PATTERN, ScanResult, load_results


_EXPERT_SUFFIX = re.compile(r"(.+)\.(\d+)")  # ``<parameter>.<e>``: one expert of a fused 3-D tensor


@dataclass
class FreezeReport:
    trainable: int  # parameters (elements) that receive gradients: of a masked tensor, its selected experts only
    total: int
    trainable_tensors: list[str] = field(default_factory=list)  # masked tensors included
    unmatched: list[str] = field(default_factory=list)  # patterns that matched no parameter
    trained_experts: dict[str, list[int]] = field(default_factory=dict)  # masked fused tensor -> experts that train

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        text = f"trainable {self.trainable:,} / {self.total:,} parameters ({100 * self.fraction:.2f}%)"
        if self.trained_experts:
            k = len(self.trained_experts)
            text += f", {k} fused expert tensor{'s' if k != 1 else ''} trained in part"
        return text


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


def unfrozen_patterns(selection, top_percent: float | None = None) -> list[str]:
    """The ``unfrozen_parameters`` patterns freeze() applies for ``selection`` (see freeze())."""
    from .strategies.selection import Selection  # here, not above: strategies/ imports this module

    if isinstance(selection, Selection):
        if top_percent is not None:
            raise SelectionError(f"freeze(model, selection): the {selection.strategy!r} Selection already says what "
                                 f"trains: drop top_percent={top_percent!r}")
        return list(selection.patterns)
    if isinstance(selection, ScanResult):
        if top_percent is None:
            raise SelectionError("freeze(model, scan_result) needs top_percent=, e.g. 50")
        names = selection.select(top_percent)
        extra = [n for n in (selection.embedding_name, selection.head_name) if n]
        return [f"^{n}$" for n in extra] + names
    if isinstance(selection, (str, os.PathLike)):
        if Path(selection).suffix.lower() == ".json":
            # A result JSON: what the YAML written from it lists (``spectrum-fast yaml``), which is also
            # what Axolotl's Spectrum plugin builds from it: spectrum.py's two fixed lines + the selection.
            if top_percent is None:
                raise SelectionError(f"freeze(model, {str(selection)!r}) needs top_percent=, e.g. 50")
            return [REFERENCE_HEAD_PATTERN, REFERENCE_EMBEDDING_PATTERN] + load_results(selection).select(top_percent)
        return read_unfrozen_yaml(selection)
    if isinstance(selection, Iterable):
        return [str(s) for s in selection]
    raise SelectionError(f"cannot freeze from a {type(selection).__name__}: pass a Selection "
                         f"(spectrum_fast.strategies), a ScanResult, a list of names, a YAML path or a result JSON path")


# Characters that make a pattern more than literal text under Axolotl's rule (a "." is a literal dot).
_REGEX_SYNTAX = frozenset("\\^$*+?{}[]()|")


class PatternMatcher:
    """Which patterns match a parameter name, as re.match of each pattern (dots escaped) would say.

    Spectrum's lists are plain module names (a prefix: ``re.match`` is anchored at the start only)
    plus a few ``^name$`` lines. Those are looked up, not matched one by one: a name is matched by
    the literal patterns equal to one of its prefixes, so a name costs one set lookup per distinct
    pattern length, whatever the number of patterns. (Matching every pattern against every name is
    quadratic: 55.7 s against 0.18 s for DeepSeek-V2's 28,320 unfused expert modules with half of
    them selected, on the 2-core CI machine: bench/results/freeze_many_patterns_cpu_7275895.log.)
    Patterns with other regex syntax are matched as regexes."""

    def __init__(self, patterns: list[str]):
        self.prefixes: dict[str, list[int]] = {}
        self.exact: dict[str, list[int]] = {}
        self.regexes: list[tuple[int, re.Pattern]] = []
        for i, p in enumerate(patterns):
            body = p[1:] if p.startswith("^") else p
            exact = body.endswith("$")
            body = body[:-1] if exact else body
            if any(c in _REGEX_SYNTAX for c in body):
                try:
                    self.regexes.append((i, re.compile(p.replace(".", "\\."))))
                except re.error as e:
                    raise SelectionError(f"unfrozen pattern {p!r} is not a valid regex ({e})") from None
            else:
                (self.exact if exact else self.prefixes).setdefault(body, []).append(i)
        self.lengths = sorted({len(body) for body in self.prefixes})

    def matches(self, name: str) -> list[int]:
        """Indices of the patterns that match ``name``."""
        hits = list(self.exact.get(name, ()))
        for length in self.lengths:
            if length > len(name):
                break
            hits += self.prefixes.get(name[:length], ())
        hits += [i for i, regex in self.regexes if regex.match(name)]
        return hits


def _expert_patterns(patterns: list[str]) -> dict[str, list[tuple[int, int]]]:
    """{module: [(pattern index, expert)]} for the patterns ``<module>.<e>``."""
    by_module: dict[str, list[tuple[int, int]]] = {}
    for i, p in enumerate(patterns):
        if m := _EXPERT_SUFFIX.fullmatch(p):
            by_module.setdefault(m.group(1), []).append((i, int(m.group(2))))
    return by_module


def expert_module(name: str, param: torch.Tensor) -> str | None:
    """The scanned module whose experts index dim 0 of ``param``: a fused 3-D weight (named like the
    module, or ``<module>.weight``) or its per-expert bias [E, k] (``<module>_bias``, ``<module>.bias``)."""
    if param.dim() == 3:
        return name.removesuffix(".weight")
    for suffix in ("_bias", ".bias"):
        if param.dim() == 2 and name.endswith(suffix):
            return name.removesuffix(suffix)
    return None


def _experts_selected(patterns: list[str], by_module: dict[str, list[tuple[int, int]]], names: list[str],
                      param: torch.Tensor, used: list[bool]) -> set[int]:
    """Experts of ``param`` that patterns ``<module>.<e>`` select; raises on an index out of range."""
    experts = set()
    for name in names:
        module = expert_module(name, param)
        for i, e in by_module.get(module, []) if module else []:
            if e >= param.shape[0]:
                raise SelectionError(f"unfrozen pattern {patterns[i]!r} selects expert {e} of {name}, which has "
                                     f"{param.shape[0]} experts (0 to {param.shape[0] - 1}): the selection was made "
                                     f"for another model; scan this one")
            experts.add(e)
            used[i] = True
    return experts


def freeze(model: torch.nn.Module, selection, top_percent: float | None = None) -> FreezeReport:
    """Freeze every parameter of ``model``, then unfreeze those the selection names.

    selection: a ``strategies.Selection`` (its patterns; no top_percent), a ScanResult (with
        top_percent=; its embedding and head are kept trainable, as in spectrum.py's YAML), a list
        of module names / Axolotl patterns, an unfrozen_parameters YAML path, or a result JSON path
        (with top_percent=; spectrum.py's head and embedding lines are added, as in its YAML).

    A fused expert tensor [E, n, m] of which only some experts are selected stays
    ``requires_grad=True`` and gets a gradient mask: the other experts receive exact zeros, so
    they do not move under SGD, Adam or AdamW without weight decay. With weight decay, call
    ``spectrum_fast.mask_weight_decay(optimizer)`` (or use ``SpectrumCallback``, which does it):
    decay shrinks a parameter whatever its gradient. Calling freeze() again replaces the masks.
    Frozen parameters lose any ``.grad`` they had, so an optimizer built before freezing skips them.
    Nothing is changed when a pattern is invalid or selects an expert that does not exist.
    """
    plan = _plan(model, unfrozen_patterns(selection, top_percent))
    for key, param in plan.params.items():
        remove_expert_mask(param)  # from an earlier freeze(): masks never stack
        how = plan.how[key]
        param.requires_grad_(how is not False)
        if how is False:
            param.grad = None  # an optimizer skips parameters without a gradient
        elif how is not True:
            install_expert_mask(param, how)
    return plan.report()


def preview_freeze(model: torch.nn.Module, selection, top_percent: float | None = None) -> FreezeReport:
    """The FreezeReport freeze(model, selection, top_percent) would return, with the model left as it is."""
    return _plan(model, unfrozen_patterns(selection, top_percent)).report()


@dataclass
class _Plan:
    params: dict[int, torch.nn.Parameter]  # by id: a tied tensor once
    names_of: dict[int, list[str]]  # every name of each tensor, in model order
    how: dict[int, bool | tuple[int, ...]]  # True: trains whole; tuple: these experts only; False: frozen
    unmatched: list[str]

    def report(self) -> FreezeReport:
        report = FreezeReport(0, 0, unmatched=list(self.unmatched))
        for key, param in self.params.items():
            how = self.how[key]
            report.total += param.numel()
            if how is False:
                continue
            report.trainable_tensors.append(self.names_of[key][0])
            if how is True:
                report.trainable += param.numel()
            else:
                report.trainable += param.numel() // param.shape[0] * len(how)
                report.trained_experts[self.names_of[key][0]] = list(how)
        return report


def _plan(model: torch.nn.Module, patterns: list[str]) -> _Plan:
    """What trains under ``patterns``, decided before the model is touched, so a bad pattern raises
    with nothing changed."""
    matcher = PatternMatcher(patterns)
    params: dict[int, torch.nn.Parameter] = {}
    names_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        params[id(param)] = param
        names_of.setdefault(id(param), []).append(name)

    used = [False] * len(patterns)
    by_module = _expert_patterns(patterns)
    how: dict[int, bool | tuple[int, ...]] = {}
    for key, param in params.items():
        names = names_of[key]
        hits = {i for n in names for i in matcher.matches(n)}
        for i in hits:
            used[i] = True
        whole = bool(hits)
        experts = _experts_selected(patterns, by_module, names, param, used)
        if whole or (experts and len(experts) == param.shape[0]):
            how[key] = True
        else:
            how[key] = tuple(sorted(experts)) if experts else False
    return _Plan(params, names_of, how, [p for p, u in zip(patterns, used) if not u])


def masked_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters of ``model`` that freeze() gave a gradient mask: fused expert tensors trained in part."""
    return {n: p for n, p in model.named_parameters() if expert_mask_of(p) is not None}
