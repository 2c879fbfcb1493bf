"""freeze()'s pattern matching: the lookup of literal patterns (module names, ``^name$`` lines) gives
exactly what re.match of every pattern (dots escaped, Axolotl's rule) gives, on random names and
patterns with prefixes that are prefixes of other names (layer 1 of layer 10), anchors, regex
syntax and empty patterns; a bad regex is one line."""

from __future__ import annotations

import random
import re

import pytest

from spectrum_fast.errors import SelectionError
from spectrum_fast.freeze import PatternMatcher


def random_names(rng: random.Random, count: int) -> list[str]:
    parts = ["self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj", "mlp.experts.{e}.up_proj", "input_layernorm"]
    names = []
    for _ in range(count):
        part = rng.choice(parts).format(e=rng.randrange(12))
        names.append(f"model.layers.{rng.randrange(12)}.{part}.{rng.choice(['weight', 'bias'])}")
    return names + ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"]


def random_patterns(rng: random.Random, names: list[str], count: int) -> list[str]:
    patterns = []
    for _ in range(count):
        name = rng.choice(names)
        cut = name[: rng.randrange(1, len(name) + 1)]  # any prefix, also mid-word and "layers.1" of "layers.10"
        kind = rng.randrange(6)
        if kind == 0:
            patterns.append(f"^{name}$")
        elif kind == 1:
            patterns.append(f"^{cut}")
        elif kind == 2:
            patterns.append(cut.replace("layers.", "layers.[0-9]+", 1) if "layers." in cut else cut + "(weight|bias)")
        elif kind == 3:
            patterns.append(cut + "$")
        else:
            patterns.append(cut)
    return patterns + ["", "^"]


def by_regex(patterns: list[str], name: str) -> set[int]:
    return {i for i, p in enumerate(patterns) if re.match(p.replace(".", "\\."), name)}


def test_lookup_matches_re_match(seed):
    rng = random.Random(seed)
    names = random_names(rng, 300)
    patterns = random_patterns(rng, names, 400)
    matcher = PatternMatcher(patterns)
    assert matcher.regexes and matcher.prefixes and matcher.exact, "every kind of pattern should be drawn"
    for name in names + ["model.layers.1", "lm_head", ""]:
        assert set(matcher.matches(name)) == by_regex(patterns, name), (seed, name)


def test_a_bad_regex_is_one_line():
    with pytest.raises(SelectionError, match=r"unfrozen pattern 'model\.layers\.\(1' is not a valid regex") as caught:
        PatternMatcher(["model.layers.0.mlp", "model.layers.(1"])
    assert "\n" not in str(caught.value)
