"""``load_pretrained()``: a Hugging Face model loaded for training, in bf16, with Spectrum's
selection trainable and everything else frozen, reading its weights once.

Spectrum's own way is three passes: load the model in float32 for the scan, write the YAML, load
it again in bf16 to train. Here every weight is read once, and no float32 copy of the model exists:
- one read, fused (a local safetensors checkpoint whose tensor names are the model's parameter
  names, onto one device): transformers builds the model with its weights on the meta device;
  the scan reads the checkpoint with its own reader (overlapping reads and compute), and each
  batch of matrices, once on the device, is also copied into the model's parameters in
  ``torch_dtype`` (scan(on_matrices=...)); the tensors the scan does not analyse (embeddings,
  head, norms, biases) are read after it. The scan sees the checkpoint's values, as scan(path)
  does;
- otherwise (a device_map over several devices or with offload, renamed or converted weights,
  .bin files, quantized checkpoints, modules kept in float32): transformers loads the model,
  then the scan reads every weight from memory (scan(model); offloaded ones from their
  accelerate hooks).
``freeze()`` then sets requires_grad from the result. The scan's working memory on the GPU is
bounded by ``max_gpu_memory`` (default LOAD_SCAN_GPU_MEMORY, on top of the model).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .errors import SelectionError
from .freeze import freeze
from .scan import scan
from .selection import check_top_percent
from .sources import model_name_of_folder, open_source

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
    scan_options: more arguments for scan() (e.g. method, estimator, max_gpu_memory, progress;
        cache=True to use the result cache, off here since its key reads the files once more;
        distributed=True to share the scan among torchrun's ranks, off here since every rank
        reads the whole model to load it).
    Returns the model (requires_grad set), or (model, ScanResult, FreezeReport) with return_scan.
    """
    top_percent = check_top_percent(top_percent)
    from transformers import AutoModel

    if device_map is None:
        device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    kwargs = {"dtype": torch_dtype, "device_map": device_map, **from_pretrained_kwargs}
    config = _read_config(path, from_pretrained_kwargs)
    cls = model_cls or _checkpoint_class(config)
    # No result cache unless asked: its key hashes every byte of the files, a second read of the weights.
    # Not shared among torchrun's ranks unless asked: each rank loads, so reads, the whole model anyway.
    options = {"types": types, "model_name": _model_name(path), "cache": False, "distributed": False} \
        | (scan_options or {})
    fused = _fused_load(path, config, cls, torch_dtype, device_map, from_pretrained_kwargs, options)
    if fused is not None:
        model, result = fused
    else:
        model = _from_pretrained(cls, path, kwargs, fallback=None if model_cls else AutoModel)
        result = scan(model, **_on_device(options, _scan_device(model)))
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


# from_pretrained arguments the fused path honours (anything else takes transformers' path).
_FUSED_KWARGS = {"local_files_only"}


def _on_device(options: dict, device: torch.device) -> dict:
    """scan() options with the device (unless given) and, on a GPU, the scan's budget beside the model."""
    options = {"device": device} | options
    if torch.device(options["device"]).type == "cuda":
        options.setdefault("max_gpu_memory", LOAD_SCAN_GPU_MEMORY)
    return options


def _fused_load(path, config, cls, dtype: torch.dtype, device_map, from_pretrained_kwargs: dict, options: dict):
    """(model, ScanResult) by the one-read path (module docstring), or None where it does not apply."""
    device = _single_device(device_map)
    folder = Path(path)
    # A shared scan (distributed=True) reads only this rank's share: the model needs every tensor.
    if (device is None or options.get("distributed") or set(from_pretrained_kwargs) - _FUSED_KWARGS
            or not folder.is_dir()
            or not any(folder.glob("*.safetensors"))):
        return None
    try:
        import accelerate  # its init_empty_weights builds the model without allocating it
    except ImportError:
        return None
    import transformers

    if getattr(config, "quantization_config", None) or getattr(cls, "_keep_in_fp32_modules", None):
        return None
    with accelerate.init_empty_weights(include_buffers=False), _default_dtype(dtype):
        model = cls.from_config(config) if cls.__name__.startswith("Auto") else cls(config)
    # Inside init_empty_weights, tying re-registers the head's weight as a new meta tensor: tie again.
    model.tie_weights()
    src = open_source(folder)
    try:
        infos = {info.name: info for info in src.tensors()}
        params = dict(model.named_parameters())  # tied parameters once
        buffers = dict(model.named_buffers())
        if any(n not in params and n not in buffers for n in infos) or any(n not in infos for n in params):
            return None  # renamed, converted or missing weights: transformers' loader knows them
        for name, buf in buffers.items():
            _set_tensor(model, name, buf.to(device), buffer=True)
        filled: set[str] = set()

        def put(tasks, w) -> None:
            """Copy a batch's matrices, as the scan read them, into the model's parameters."""
            for i, task in enumerate(tasks):
                name = task.tensor.name
                if name not in filled:
                    _set_tensor(model, name, torch.empty(params[name].shape, dtype=dtype, device=device))
                    filled.add(name)
                target = model.get_parameter(name).data
                target = target[task.expert] if task.expert is not None else target
                target.copy_(w[i].reshape(target.shape))

        result = scan(folder, on_matrices=put, **_on_device(options, device))
        for name, info in infos.items():  # what the scan did not analyse
            if name in filled:
                continue
            value = src.read(info)
            if name in buffers:
                _set_tensor(model, name, value.to(device=device, dtype=buffers[name].dtype), buffer=True)
            else:
                _set_tensor(model, name, value.to(device=device, dtype=dtype))
    finally:
        src.close()
    model.tie_weights()
    if any(p.is_meta for p in model.parameters()):
        return None
    model.config._name_or_path = str(path)
    model.config.dtype = dtype  # the dtype loaded, as from_pretrained records it
    model.eval()  # as from_pretrained returns it
    if (folder / "generation_config.json").is_file() and getattr(model, "generation_config", None) is not None:
        try:
            model.generation_config = transformers.GenerationConfig.from_pretrained(folder)
        except (OSError, ValueError):
            pass
    return model, result


def _single_device(device_map) -> torch.device | None:
    """The one device a device_map puts the whole model on ({"": d}), else None."""
    if isinstance(device_map, dict) and list(device_map) == [""]:
        target = device_map[""]
        if target in ("disk", "meta"):
            return None
        return torch.device(f"cuda:{target}" if isinstance(target, int) else target)
    return None


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """Modules built inside take ``dtype`` for floating tensors they create without one (as
    from_pretrained(dtype=...) builds them; buffers computed in float32 explicitly stay so)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _set_tensor(model: torch.nn.Module, name: str, value: torch.Tensor, buffer: bool = False) -> None:
    """Put ``value`` in place of the parameter (or buffer) ``name`` (a meta one, at first)."""
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    if buffer:
        owner._buffers[leaf] = value
    else:
        owner._parameters[leaf] = torch.nn.Parameter(value, requires_grad=value.is_floating_point())


def _read_config(path, from_pretrained_kwargs: dict):
    """The checkpoint's transformers config (the from_pretrained arguments that locate it passed on);
    a failure is one line that names the path."""
    import transformers

    passed = {k: v for k, v in from_pretrained_kwargs.items()
              if k in ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code")}
    try:
        return transformers.AutoConfig.from_pretrained(path, **passed)
    except (OSError, ValueError) as e:
        raise SelectionError(f"{path}: transformers could not read its config: {str(e).splitlines()[0]}") from None


def _checkpoint_class(config):
    """The transformers class named first in the checkpoint's config (``architectures``), else
    AutoModelForCausalLM. (AutoModelForCausalLM alone would load, e.g., a BERT encoder as
    BertLMHeadModel with a fresh head.)"""
    import transformers

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
    except (ValueError, OSError) as e:
        if fallback is not None and isinstance(e, ValueError) and "Unrecognized configuration class" in str(e):
            return _from_pretrained(fallback, path, kwargs)
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
