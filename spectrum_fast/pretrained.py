"""``load_pretrained()``: a Hugging Face model loaded for training, in bf16, with Spectrum's
selection trainable and everything else frozen, reading its weights once.

Spectrum's own way is three passes: load the model in float32 for the scan, write the YAML, load
it again in bf16 to train. Here transformers loads the checkpoint once, in ``torch_dtype``, onto
the devices it will train on (the GPU when there is one); the scan then reads every weight from
that memory (``scan(model)``: offloaded ones from their accelerate hooks), so no file is read
twice and no float32 copy of the model exists; ``freeze()`` sets requires_grad from the result.
The scan's working memory on the GPU is bounded by ``max_gpu_memory`` (default
LOAD_SCAN_GPU_MEMORY, on top of the model).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from .errors import SelectionError
from .freeze import freeze
from .scan import scan
from .selection import check_top_percent
from .sources import model_name_of_folder

log = logging.getLogger("spectrum_fast")

# The scan's GPU budget beside the loaded model: the bound is the bf16 model + 1.5 GB, and
# the allocator's slack and the batch read ahead come on top of the budget.
LOAD_SCAN_GPU_MEMORY = 1 << 30


def load_pretrained(
    path: str | os.PathLike,
    *,
    top_percent: float,
    types: str | list[str] = "auto",
    model_cls: Any = None,
    torch_dtype: torch.dtype = torch.bfloat16,
    device_map: Any = None,
    out: str | os.PathLike | None = None,
    scan_options: dict[str, Any] | None = None,
    return_scan: bool = False,
    **from_pretrained_kwargs: Any,
):
    """Load ``path`` with transformers, scan it, and freeze all but the top ``top_percent`` per type.

    path: a model folder (or a hub id transformers can resolve offline/online as usual).
    model_cls: the transformers class to load with (default: the class the checkpoint was saved
        from, its config's ``architectures``; else AutoModelForCausalLM, else AutoModel).
    device_map: as transformers takes it; default: the whole model on the current GPU when there is
        one, else the CPU. "auto" spreads it over GPUs and offloads; offloaded weights are scanned
        from their hooks.
    out: a folder to write the scan's files to (snr_results_<model>.json, ..._sorted.json and the
        unfrozen_parameters YAML at top_percent), as the CLI does.
    scan_options: more arguments for scan() (e.g. method, estimator, max_gpu_memory, progress).
    Returns the model (requires_grad set), or (model, ScanResult, FreezeReport) with return_scan.
    """
    top_percent = check_top_percent(top_percent)
    from transformers import AutoModel

    if device_map is None:
        device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    kwargs = {"dtype": torch_dtype, "device_map": device_map, **from_pretrained_kwargs}
    cls = model_cls or _checkpoint_class(path, from_pretrained_kwargs)
    model = _from_pretrained(cls, path, kwargs, fallback=None if model_cls else AutoModel)

    options = {"types": types, "model_name": _model_name(path)} | (scan_options or {})
    options.setdefault("device", _scan_device(model))
    if torch.device(options["device"]).type == "cuda":
        options.setdefault("max_gpu_memory", LOAD_SCAN_GPU_MEMORY)
    result = scan(model, **options)
    report = freeze(model, result, top_percent)
    log.info("spectrum_fast.load_pretrained: %s (%d of %d matrices selected at %g%%)", report,
             len(result.select(top_percent)), len(result.rows), top_percent)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        result.to_spectrum_json(folder)
        result.to_yaml(folder, top_percent)
    if return_scan:
        return model, result, report
    return model


def _checkpoint_class(path, from_pretrained_kwargs: dict):
    """The transformers class named first in the checkpoint's config (``architectures``), else
    AutoModelForCausalLM. (AutoModelForCausalLM alone would load, e.g., a BERT encoder as
    BertLMHeadModel with a fresh head.)"""
    import transformers

    passed = {k: v for k, v in from_pretrained_kwargs.items()
              if k in ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code")}
    try:
        config = transformers.AutoConfig.from_pretrained(path, **passed)
    except (OSError, ValueError) as e:
        raise SelectionError(f"{path}: transformers could not read its config: {str(e).splitlines()[0]}") from None
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM


def _from_pretrained(cls, path, kwargs: dict, fallback=None):
    """cls.from_pretrained(path, **kwargs); a config cls cannot load retries with ``fallback``.
    Failures are one line that names the path."""
    try:
        return cls.from_pretrained(path, **kwargs)
    except ValueError as e:
        if fallback is not None and "Unrecognized configuration class" in str(e):
            return _from_pretrained(fallback, path, kwargs)
        raise SelectionError(f"{path}: transformers could not load it: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise SelectionError(f"{path}: transformers could not load it: {str(e).splitlines()[0]}") from None


def _model_name(path) -> str:
    """The name the files carry, as scan(path) names them: the hub id in the folder's config.json
    when it has one, else the folder's name; a hub id as given."""
    folder = Path(path)
    return model_name_of_folder(folder) if folder.is_dir() else str(path)


def _scan_device(model: torch.nn.Module) -> torch.device:
    """Where the model's weights mostly are: the scan runs there (a GPU when any weight is on one)."""
    for p in model.parameters():
        if p.device.type == "cuda":
            return p.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = ["load_pretrained"]
