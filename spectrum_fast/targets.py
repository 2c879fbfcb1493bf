"""Which tensors a scan reads, and how each becomes one or more matrices.

types="auto": every >=2-D floating weight inside the numbered blocks (attention, MLP, experts).
types="all" : every floating weight (not biases): adds embeddings, lm_head and norms; a 1-D
              weight is read as a 1 x n matrix, as spectrum.py does.
types=[...] : type names or regexes, matched against the whole type (re.fullmatch), exactly.
              spectrum.py matches by substring, so its "output.dense" also catches
              "attention.output.dense"; here it does not.
A 3-D fused expert tensor [E, n, m] becomes E matrices named ``<module>.<e>``; a tensor of more
than 3 dimensions is read as [shape[0], rest].
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import SelectionError
from .naming import in_numbered_block, layer_type, module_name, pooled_type
from .sources import TensorInfo


@dataclass(frozen=True)
class MatrixTask:
    name: str  # module name in results (``<module>.<e>`` for an expert of a fused tensor)
    type: str
    tensor: TensorInfo
    expert: int | None  # index into dim 0 of a 3-D tensor, else None
    n: int
    m: int
    order: int  # position in the source, to write rows in model order


def _is_bias(name: str) -> bool:
    # ``_bias``: fused expert biases stored beside their weights (gpt-oss ``mlp.experts.gate_up_proj_bias``).
    return name.endswith((".bias", "_bias")) or name == "bias"


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    if len(shape) == 0:
        return None
    if len(shape) == 1:
        return (1, shape[0])
    if len(shape) == 3:
        return (shape[1], shape[2])
    return (shape[0], math.prod(shape[1:]))


def _compile(types: Sequence[str]) -> list[re.Pattern]:
    patterns = []
    for t in types:
        try:
            patterns.append(re.compile(t))
        except re.error as e:
            raise SelectionError(f"type {t!r} is not a valid regex ({e}): give a type name such as "
                                 f"self_attn.q_proj or a regex such as 'mlp\\..*'") from None
    return patterns


def plan_tasks(
    infos: list[TensorInfo], types: str | Sequence[str] = "auto", pool_experts: bool = False
) -> tuple[list[MatrixTask], list[tuple[str, str]]]:
    """-> (matrices to scan in model order, [(tensor, why skipped)])."""
    if isinstance(types, str) and types not in ("auto", "all"):
        types = [types]
    patterns = None if isinstance(types, str) else _compile(types)
    tasks: list[MatrixTask] = []
    skipped: list[tuple[str, str]] = []
    for info in infos:
        if _is_bias(info.name) or _matrix_shape(info.shape) is None:
            continue
        mod = module_name(info.name)
        if types == "auto" and not (in_numbered_block(mod) and len(info.shape) >= 2):
            continue
        names = [f"{mod}.{e}" for e in range(info.shape[0])] if len(info.shape) == 3 else [mod]
        wanted = []
        for e, name in enumerate(names):
            t = layer_type(name)
            if patterns is not None and not any(p.fullmatch(t) or p.fullmatch(pooled_type(t)) for p in patterns):
                continue
            wanted.append((e if len(info.shape) == 3 else None, name, pooled_type(t) if pool_experts else t))
        if not wanted:
            continue
        if not info.floating:
            skipped.append((info.name, f"{info.dtype} tensor, not a floating-point weight"))
            continue
        if 0 in info.shape:
            skipped.append((info.name, "empty tensor"))
            continue
        n, m = _matrix_shape(info.shape)
        for expert, name, t in wanted:
            tasks.append(MatrixTask(name, t, info, expert, n, m, len(tasks)))
    return tasks, skipped


def describe_types(tasks: list[MatrixTask]) -> list[tuple[str, int, list[tuple[int, int]]]]:
    """[(type, count, distinct shapes)] in order of first appearance: what spectrum.py asked in dialogs."""
    seen: dict[str, list] = {}
    for t in tasks:
        entry = seen.setdefault(t.type, [0, []])
        entry[0] += 1
        if (t.n, t.m) not in entry[1]:
            entry[1].append((t.n, t.m))
    return [(t, c, shapes) for t, (c, shapes) in seen.items()]


def require_some(tasks: list[MatrixTask], infos: list[TensorInfo], types, label: str) -> None:
    if tasks:
        return
    available = sorted({layer_type(module_name(i.name)) for i in infos if i.floating and not _is_bias(i.name)})
    hint = ", ".join(available[:8]) + (" ..." if len(available) > 8 else "")
    raise SelectionError(f"{label}: no tensor matches types={types!r}: available types include {hint or 'none'}; "
                         f"run `spectrum-fast types` to list them")
