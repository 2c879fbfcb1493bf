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

from ..files import atomic_write_text


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
        import yaml

        header = f"# {self}\n"
        return header + yaml.safe_dump({"unfrozen_parameters": list(self.patterns)}, sort_keys=False)

    def to_yaml(self, path: str | os.PathLike) -> Path:
        """Write Axolotl's ``unfrozen_parameters`` YAML (a directory gets ``<strategy>_unfrozen_parameters.yaml``)."""
        path = Path(path)
        if path.is_dir():
            path = path / f"{self.strategy}_unfrozen_parameters.yaml"
        return atomic_write_text(path, self.yaml_text())

    def to_dict(self) -> dict:
        return asdict(self) | {"fraction": self.fraction}

    def to_json(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")
