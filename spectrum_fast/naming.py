"""Names and types, exactly as Spectrum derives them.

module name = parameter name without ``.weight``;
type        = the dotted tail after the first all-digit part of the module name
              (``model.layers.3.self_attn.q_proj`` -> ``self_attn.q_proj``), or the whole name
              when no part is all digits (``lm_head``, ``model.embed_tokens``).
"""

from __future__ import annotations


def module_name(param_name: str) -> str:
    """``model.layers.0.mlp.down_proj.weight`` -> ``model.layers.0.mlp.down_proj``."""
    return param_name[: -len(".weight")] if param_name.endswith(".weight") else param_name


def _first_digit_part(parts: list[str]) -> int | None:
    for i, part in enumerate(parts):
        if part.isdigit():
            return i
    return None


def in_numbered_block(name: str) -> bool:
    """True when some dotted part is all digits (``layers.3``, ``h.0``, ``experts.7``)."""
    return _first_digit_part(name.split(".")) is not None


def layer_type(module: str) -> str:
    parts = module.split(".")
    i = _first_digit_part(parts)
    if i is None or i == len(parts) - 1:
        return module
    return ".".join(parts[i + 1 :])


def pooled_type(type_name: str) -> str:
    """Pool expert indices into one type: ``mlp.experts.7.down_proj`` -> ``mlp.experts.*.down_proj``."""
    return ".".join("*" if p.isdigit() else p for p in type_name.split("."))


def model_slug(model_name: str) -> str:
    """File-name slug used by spectrum.py: ``meta-llama/Meta-Llama-3-8B`` -> ``meta-llama-Meta-Llama-3-8B``."""
    return model_name.replace("/", "-").replace("_", "-")


def percent_label(top_percent: float) -> str:
    """How spectrum.py prints the percentage in file names (it reads it as an int)."""
    return str(int(top_percent)) if float(top_percent).is_integer() else repr(float(top_percent))
