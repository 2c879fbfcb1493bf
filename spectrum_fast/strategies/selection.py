"""``Selection``: what any strategy decided to train, in one form that freeze(), the YAML writer and
the report take.

Every strategy (Spectrum's SNR rule, SALF, gradient impact, the SVD-based ones) ends in the same
question, "which parameters receive gradients", so they all answer with this object: the
``unfrozen_parameters`` patterns Axolotl reads (freeze() applies them by Axolotl's rule), the count
of parameters that train, and how the choice was made (budget, per-module scores), kept as plain
JSON-able data so a comparison can print or save it next to its losses.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import SelectionError
from ..files import atomic_write_text, names_directory, read_json_file


@dataclass
class Selection:
    strategy: str  # "snr", "salf", "impact", "lowrank", "components", ...
    patterns: list[str]  # unfrozen_parameters entries, as freeze() and Axolotl read them
    trainable_params: int  # elements that receive gradients under this selection
    total_params: int  # elements of the model it was made for
    modules: list[str] = field(default_factory=list)  # chosen modules, most important first where ranked
    how: dict = field(default_factory=dict)  # how it was chosen: budget, scores, ... (JSON-able)

    @property
    def fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def __str__(self) -> str:
        return (f"{self.strategy}: {self.trainable_params:,} of {self.total_params:,} parameters train "
                f"({100 * self.fraction:.2f}%), {len(self.modules)} modules")

    def yaml_text(self) -> str:
        """Axolotl's ``unfrozen_parameters:`` file, laid out as ScanResult.yaml_text lays it out (the key,
        then one ``- pattern`` line each), under a comment line saying what was chosen."""
        lines = [f"# {self}", "unfrozen_parameters:"]
        lines += [f"- {_yaml_scalar(p)}" for p in self.patterns]
        return "\n".join(lines) + "\n"

    def to_yaml(self, path: str | os.PathLike) -> Path:
        """Write Axolotl's ``unfrozen_parameters`` YAML (a directory gets ``<strategy>_unfrozen_parameters.yaml``)."""
        if names_directory(path):
            path = Path(path) / f"{self.strategy}_unfrozen_parameters.yaml"
        return atomic_write_text(path, self.yaml_text())

    def to_dict(self) -> dict:
        return asdict(self) | {"fraction": self.fraction}

    def to_json(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict, source: str = "selection") -> Selection:
        """The Selection ``to_dict`` gave (``fraction`` is recomputed, not read); ``source`` names it in errors."""
        kinds = {"strategy": str, "patterns": list, "trainable_params": int, "total_params": int, "modules": list,
                 "how": dict}
        if not isinstance(data, dict):
            raise SelectionError(f"{source}: expected a JSON object with the fields {', '.join(kinds)}")
        for key, kind in kinds.items():
            value = data.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise SelectionError(f"{source}: field {key!r} should be a {kind.__name__}, got {value!r:.60}: "
                                     f"give a file written by Selection.to_json")
        for key in ("patterns", "modules"):
            if not all(isinstance(x, str) for x in data[key]):
                raise SelectionError(f"{source}: field {key!r} should be a list of strings: give a file written by "
                                     f"Selection.to_json")
        return cls(**{key: data[key] for key in kinds})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Selection:
        data = read_json_file(path, "no such file: give the JSON written by Selection.to_json",
                              "give the file written by Selection.to_json")
        return cls.from_dict(data, str(Path(path)))


def _yaml_scalar(pattern: str) -> str:
    """``pattern`` as a YAML list item reads it back: bare where it reads back as itself (patterns are
    mostly module names and ``^name$``), quoted by PyYAML otherwise (a leading ``[``, ``*``, ``: `` ...)."""
    import yaml

    try:
        if yaml.safe_load(f"- {pattern}") == [pattern] and "\n" not in pattern:
            return pattern
    except yaml.YAMLError:
        pass
    return yaml.safe_dump(pattern, default_style='"', width=float("inf"), allow_unicode=True).strip()
