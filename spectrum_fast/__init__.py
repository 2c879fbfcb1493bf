"""spectrum_fast: pick the layers worth fine-tuning, by Spectrum's signal-to-noise rule, fast and exact.

    import spectrum_fast
    result = spectrum_fast.scan("path/to/model")      # or a torch.nn.Module, or a dict of tensors
    result.to_spectrum_json("out/")                   # spectrum.py's JSON files
    result.to_yaml("out/", top_percent=50)            # Axolotl's unfrozen_parameters YAML
    spectrum_fast.freeze(model, result, top_percent=50)
"""

from ._extension import kernels_available
from .cache import CacheWarning
from .errors import SelectionError, SourceError, SpectrumFastError
from .freeze import FreezeReport, freeze
from .results import MatrixRow, ScanResult, load_results
from .scan import scan
from .sources import TensorInfo, WeightSource

__version__ = "0.1.0"

__all__ = [
    "scan", "freeze", "load_results", "kernels_available", "ScanResult", "MatrixRow", "FreezeReport",
    "SpectrumFastError", "SourceError", "SelectionError", "CacheWarning", "WeightSource", "TensorInfo", "__version__",
]
