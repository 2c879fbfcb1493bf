"""spectrum_fast: pick the layers worth fine-tuning, by Spectrum's signal-to-noise rule, fast and exact.

    import spectrum_fast
    result = spectrum_fast.scan("path/to/model")      # or a torch.nn.Module, or a dict of tensors
    result.to_spectrum_json("out/")                   # spectrum.py's JSON files
    result.to_yaml("out/", top_percent=50)            # Axolotl's unfrozen_parameters YAML
    spectrum_fast.freeze(model, result, top_percent=50)
    model = spectrum_fast.load_pretrained("path/to/model", top_percent=50)  # bf16, frozen but the selection
    spectrum_fast.mask_weight_decay(optimizer)        # weight decay spares frozen experts of fused tensors
    trainer = Trainer(..., callbacks=[spectrum_fast.SpectrumCallback(top_percent=50)])
    report = spectrum_fast.decompose(model, energy=0.9)   # nn.Linear -> LowRankLinear (two factors), in place
    sf = spectrum_fast.SequentialFreezing(model, steps=100)  # train one factor at a time; sf.callback() for Trainer
    allocation = spectrum_fast.components.allocate(model, batches, budget=256)  # which singular-direction scales train
"""

from . import components  # spectrum_fast.components: allocate, apply, merge (generic names: kept in their module)
from ._extension import kernels_available
from .cache import CacheWarning
from .errors import SelectionError, SourceError, SpectrumFastError
from .freeze import FreezeReport, freeze, masked_parameters
from .lowrank import DecompositionReport, LowRankLinear, SequentialFreezing, decompose
from .pretrained import load_pretrained
from .results import MatrixRow, ScanResult, load_results
from .scan import scan
from .sources import TensorInfo, WeightSource
from .weight_decay import mask_weight_decay

__version__ = "0.1.0"

__all__ = [
    "scan", "freeze", "load_pretrained", "load_results", "kernels_available", "ScanResult", "MatrixRow", "FreezeReport",
    "mask_weight_decay", "masked_parameters", "SpectrumCallback",
    "decompose", "DecompositionReport", "LowRankLinear", "SequentialFreezing", "components",
    "SpectrumFastError", "SourceError", "SelectionError", "CacheWarning", "WeightSource", "TensorInfo", "__version__",
]


def __getattr__(name: str):
    # SpectrumCallback subclasses transformers' TrainerCallback: import transformers only when asked.
    if name == "SpectrumCallback":
        from .training import SpectrumCallback

        return SpectrumCallback
    raise AttributeError(f"module 'spectrum_fast' has no attribute {name!r}")
