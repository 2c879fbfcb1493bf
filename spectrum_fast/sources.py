"""Where the weights come from: a module, a model folder, one file, or a dict of tensors.

Every source lists its tensors from metadata alone (safetensors headers, state-dict keys) and reads
one tensor at a time on request, so a scan never holds the whole model in host memory.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import SourceError
from .file_reader import FileReader

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
}

# Parameter names of input embeddings and output heads across the common architectures.
_EMBEDDING_RE = re.compile(r"(^|\.)(embed_tokens|word_embeddings|wte|tok_embeddings|embed_in)\.weight$")
_HEAD_RE = re.compile(r"(^|\.)(lm_head|embed_out|output)\.weight$")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # "bfloat16", "float32", "int64", ...
    floating: bool
    file: str | None = None  # which file holds it (for messages)


class WeightSource(ABC):
    """``tensors()`` lists from metadata, ``read(info)`` loads one tensor (CPU or where it lives)."""

    label: str = "weights"
    model_name: str = "model"

    @abstractmethod
    def tensors(self) -> list[TensorInfo]: ...

    @abstractmethod
    def read(self, info: TensorInfo) -> torch.Tensor: ...

    # Reads of one tensor may be split into pieces of this many bytes, read by several threads at
    # once (None: one read per tensor, for sources whose tensors are already in memory).
    read_piece_bytes: int | None = None

    def device_of(self, info: TensorInfo) -> torch.device:
        """Where ``read(info)`` returns the tensor: the CPU for files; the tensor's own device for
        modules and dicts (weights already on a GPU are copied device to device)."""
        return torch.device("cpu")

    def file_offset(self, info: TensorInfo) -> int | None:
        """Byte offset of the tensor's data in its file when read_into reads it from a file as
        stored (then the loader can lay out buffers for direct reads), else None."""
        return None

    def read_into(self, info: TensorInfo, out: torch.Tensor, first: int = 0) -> None:
        """Copy ``out.numel()`` elements of the tensor, from flat element ``first`` on, into ``out``
        (contiguous, the tensor's dtype). Several threads may call this at once for disjoint pieces:
        the engine splits big tensors so reads run in parallel."""
        out.view(-1).copy_(self.read(info).reshape(-1)[first : first + out.numel()])

    def close(self) -> None:
        pass

    def embedding_name(self) -> str | None:
        return _find_name(self.tensors(), _EMBEDDING_RE)

    def head_name(self) -> str | None:
        return _find_name(self.tensors(), _HEAD_RE)


def _find_name(infos: list[TensorInfo], pattern: re.Pattern) -> str | None:
    for info in infos:
        if len(info.shape) == 2 and pattern.search(info.name) and not any(p.isdigit() for p in info.name.split(".")):
            return info.name
    return None


def _natural_key(name: str) -> list[tuple[int, int, str]]:
    """Sort key comparing all-digit parts as numbers: ``layers.2`` before ``layers.10``."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]


def natural_order(infos: list[TensorInfo]) -> list[TensorInfo]:
    """Checkpoint files list tensors alphabetically (safetensors headers, shard by shard), so layer 10
    comes before layer 2. Spectrum ranks ties (every 1-D norm has SNR exactly 1.0) in model order,
    and within one type natural order is layer order: rows and selections then match a model scan."""
    return sorted(infos, key=lambda info: _natural_key(info.name))


def _torch_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _info_from_tensor(name: str, t: torch.Tensor, file: str | None = None) -> TensorInfo:
    return TensorInfo(name, tuple(t.shape), _torch_dtype_name(t.dtype), t.is_floating_point(), file)


class DictSource(WeightSource):
    def __init__(self, tensors: dict[str, Any], model_name: str = "state_dict"):
        bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise SourceError(f"dict entry {bad[0]!r} is not a torch.Tensor: pass a dict of name -> tensor")
        self._tensors = tensors
        self.label = "dict of tensors"
        self.model_name = model_name

    def tensors(self) -> list[TensorInfo]:
        return [_info_from_tensor(k, v) for k, v in self._tensors.items()]

    def read(self, info: TensorInfo) -> torch.Tensor:
        return self._tensors[info.name].detach()

    def device_of(self, info: TensorInfo) -> torch.device:
        return self._tensors[info.name].device


class ModuleSource(WeightSource):
    """An in-memory torch.nn.Module (a transformers model included). Tied weights count once.

    Models dispatched by accelerate (``device_map="auto"`` with CPU or disk offload,
    ``cpu_offload``, ``disk_offload``) keep offloaded weights as meta parameters and the real
    ones in their module's hook (``module._hf_hook.weights_map``: host memory, or a file read on
    access); those are read from there, one at a time. Parameters on several GPUs are read where
    they are. Only a meta parameter with no offloaded copy (a model built on the meta device and
    never loaded) has nothing to read."""

    def __init__(self, module: torch.nn.Module, model_name: str | None = None):
        self.module = module
        self._params = dict(module.named_parameters())  # remove_duplicate=True: tied weights once
        self._offloaded = _offloaded_weights(module, self._params)
        self.label = type(module).__name__
        cfg = getattr(module, "config", None)
        self.model_name = model_name or getattr(module, "name_or_path", None) or getattr(cfg, "_name_or_path", None) \
            or type(module).__name__

    def tensors(self) -> list[TensorInfo]:
        return [_info_from_tensor(k, v) for k, v in self._params.items()]

    def read(self, info: TensorInfo) -> torch.Tensor:
        offloaded = self._offloaded.get(info.name)
        if offloaded is not None:
            weights_map, key = offloaded
            return weights_map[key].detach()
        return self._params[info.name].detach()

    def device_of(self, info: TensorInfo) -> torch.device:
        if info.name in self._offloaded:
            return torch.device("cpu")  # host memory, or a file mapped into it
        return self._params[info.name].device

    def is_meta(self, info: TensorInfo) -> bool:
        """A meta parameter with no offloaded copy to read."""
        return self._params[info.name].is_meta and info.name not in self._offloaded

    def _param_of(self, getter: str) -> str | None:
        fn = getattr(self.module, getter, None)
        mod = fn() if callable(fn) else None
        weight = getattr(mod, "weight", None)
        if weight is None:
            return None
        # Name it by the module it belongs to (lm_head.weight even when tied to the embedding).
        for name, m in self.module.named_modules():
            if m is mod:
                return f"{name}.weight" if name else "weight"
        return None

    def embedding_name(self) -> str | None:
        return self._param_of("get_input_embeddings") or super().embedding_name()

    def head_name(self) -> str | None:
        return self._param_of("get_output_embeddings") or super().head_name()


def _offload_hooks(hook) -> list:
    """The hooks of a module's ``_hf_hook`` that hold offloaded weights (accelerate's AlignDevicesHook
    with a weights_map), looking inside a SequentialHook's chain."""
    chain = getattr(hook, "hooks", None)
    hooks = list(chain) if isinstance(chain, (list, tuple)) else [hook]
    return [h for h in hooks if getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None]


def _offloaded_weights(module: torch.nn.Module, params: dict[str, torch.nn.Parameter]) -> dict[str, tuple[Any, str]]:
    """{parameter name: (weights_map, key)} for the meta parameters whose real weight an accelerate
    offload hook holds. The map of a hooked module is keyed by names relative to that module; with
    place_submodules it covers the submodules' parameters too."""
    wanted = {name for name, p in params.items() if p.is_meta}
    found: dict[str, tuple[Any, str]] = {}
    if not wanted:
        return found
    for prefix, sub in module.named_modules():
        for hook in _offload_hooks(getattr(sub, "_hf_hook", None)):
            keys = _weights_map_keys(hook.weights_map)
            for local, _ in sub.named_parameters(recurse=bool(getattr(hook, "place_submodules", False))):
                name = f"{prefix}.{local}" if prefix else local
                if name in wanted and name not in found and local in keys:
                    found[name] = (hook.weights_map, local)
    return found


def _weights_map_keys(weights_map) -> set[str]:
    """The keys ``weights_map[key]`` answers, without loading a tensor: a membership test on
    accelerate's maps would load it (Mapping.__contains__ calls __getitem__, which reads a disk-
    offloaded weight). Its PrefixedDataset iterates the full names (prefix included) but is
    indexed by the names after the prefix."""
    prefix = getattr(weights_map, "prefix", "")
    try:
        names = list(iter(weights_map))
    except (TypeError, OSError):
        return set()
    return {n[len(prefix):] for n in names if n.startswith(prefix)}


class SafetensorsSource(WeightSource):
    """One or more .safetensors files: listed through safe_open, read straight into the caller's
    buffer (read_into), in pieces that several threads read at once."""

    read_piece_bytes = 16 << 20

    def __init__(self, files: list[Path], model_name: str, label: str):
        from safetensors import SafetensorError, safe_open

        self.label = label
        self.model_name = model_name
        self._handles: dict[str, Any] = {}
        self._infos: list[TensorInfo] = []
        self._file_of: dict[str, str] = {}
        self._extents: dict[str, tuple[int, int]] = {}  # name -> (first byte in its file, byte count)
        self._readers: dict[str, FileReader] = {}
        self._readers_lock = threading.Lock()
        for path in files:
            if not path.is_file():
                raise SourceError(f"{path}: shard is missing: download it again or fix the index file")
            try:
                handle = safe_open(str(path), framework="pt")
                keys = list(handle.keys())
                infos = []
                for k in keys:
                    sl = handle.get_slice(k)
                    dt = sl.get_dtype()
                    tdt = _SAFETENSORS_DTYPES.get(dt)
                    infos.append(TensorInfo(k, tuple(sl.get_shape()), _torch_dtype_name(tdt) if tdt else dt.lower(),
                                            tdt is not None, str(path)))
            except SafetensorError as e:
                raise SourceError(f"{path}: not a readable safetensors file ({e}): it is truncated or corrupt, "
                                  f"download or save it again") from None
            self._handles[str(path)] = handle
            self._extents.update(_data_extents(path, infos))
            for info in infos:
                self._file_of[info.name] = str(path)
            self._infos.extend(infos)
        self._infos = natural_order(self._infos)

    def tensors(self) -> list[TensorInfo]:
        return self._infos

    def read(self, info: TensorInfo) -> torch.Tensor:
        from safetensors import SafetensorError

        path = self._file_of[info.name]
        try:
            return self._handles[path].get_tensor(info.name)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise SourceError(f"{path}: cannot read tensor {info.name} ({e}): the file is damaged, "
                              f"download or save it again") from None

    def file_offset(self, info: TensorInfo) -> int | None:
        if sys.byteorder != "little" or info.name not in self._extents:
            return None
        return self._extents[info.name][0]

    def read_into(self, info: TensorInfo, out: torch.Tensor, first: int = 0) -> None:
        """Read the bytes straight from the file into ``out`` (pinned host memory, for a GPU scan).

        safetensors can only hand back a new tensor (a copy, or a memory map whose page faults then
        happen one thread at a time); reading into the caller's buffer (file_reader: O_DIRECT for
        uncached ranges, no kernel copy) releases the GIL and lets several threads keep the disk
        busy. The data is little-endian, as safetensors stores it, so this runs on little-endian
        hosts; elsewhere it falls back to safetensors."""
        if self.file_offset(info) is None:
            return super().read_into(info, out, first)
        path = self._file_of[info.name]
        start, size = self._extents[info.name]
        itemsize = out.element_size()
        offset, want = start + first * itemsize, out.numel() * itemsize
        if first < 0 or (first * itemsize) + want > size:
            raise ValueError(f"{info.name}: elements {first}..{first + out.numel()} outside the tensor")
        view = memoryview(out.view(-1).view(torch.uint8).numpy())
        try:
            self._reader(path).read_into(view, out.data_ptr(), offset)
        except EOFError:
            raise SourceError(f"{path}: ends inside tensor {info.name}: the file is truncated, "
                              f"download or save it again") from None
        except OSError as e:
            raise SourceError(f"{path}: cannot read tensor {info.name} ({e.strerror or e})") from None

    def _reader(self, path: str) -> FileReader:
        with self._readers_lock:  # IO threads ask at once: open each file once, leak none
            reader = self._readers.get(path)
            if reader is None:
                try:
                    reader = self._readers[path] = FileReader(path)
                except OSError as e:
                    raise SourceError(f"{path}: cannot open ({e.strerror or e})") from None
            return reader

    def close(self) -> None:
        self._handles.clear()
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def _data_extents(path: Path, infos: list[TensorInfo]) -> dict[str, tuple[int, int]]:
    """name -> (first byte in the file, byte count) for each tensor, from the safetensors header
    (an 8-byte little-endian header size, then a JSON object with "data_offsets" relative to the
    end of the header). safe_open has already validated this header; a mismatch with its dtype and
    shape, or data past the end of the file, means a damaged file."""
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
    file_size = path.stat().st_size
    extents = {}
    for info in infos:
        begin, end = header[info.name]["data_offsets"]
        dtype = getattr(torch, info.dtype, None) if info.floating else None
        if dtype is None:
            continue  # never read into a buffer (skipped or read through safetensors)
        if end - begin != math.prod(info.shape) * dtype.itemsize or 8 + header_size + end > file_size:
            raise SourceError(f"{path}: tensor {info.name} does not fit the file (header says bytes "
                              f"{begin}..{end}): the file is truncated or corrupt, download or save it again")
        extents[info.name] = (8 + header_size + begin, end - begin)
    return extents


class TorchBinSource(WeightSource):
    """pytorch_model*.bin shards, read with torch.load(weights_only=True, mmap=True)."""

    def __init__(self, files: list[Path], model_name: str, label: str):
        self.label = label
        self.model_name = model_name
        self._state: dict[str, torch.Tensor] = {}
        self._infos: list[TensorInfo] = []
        for path in files:
            if not path.is_file():
                raise SourceError(f"{path}: shard is missing: download it again or fix the index file")
            state = _torch_load(path)
            for k, v in state.items():
                if isinstance(v, torch.Tensor):
                    self._state[k] = v
                    self._infos.append(_info_from_tensor(k, v, str(path)))
        self._infos = natural_order(self._infos)

    def tensors(self) -> list[TensorInfo]:
        return self._infos

    def read(self, info: TensorInfo) -> torch.Tensor:
        return self._state[info.name]

    def close(self) -> None:
        self._state.clear()


def _torch_load(path: Path) -> dict:
    import pickle
    import zipfile

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise SourceError(f"{path}: cannot load ({e}): the file is damaged, download or save it again") from None
        # Legacy (non-zip) checkpoints cannot be memory-mapped: read them whole. Silence torch's
        # warnings here: the CLI promises one error line, and a damaged file is reported below.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e2:  # noqa: BLE001 - any failure here is a damaged file
            raise SourceError(f"{path}: cannot load ({e2}): the file is damaged, download or save it again") from None
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise SourceError(f"{path}: cannot load ({e.__class__.__name__}: {e}): the file is damaged or not a "
                          f"PyTorch checkpoint, download or save it again") from None
    if not isinstance(state, dict):
        raise SourceError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return state


def model_name_of_folder(folder: Path) -> str:
    """The name a model folder's files carry (Spectrum's): the hub id in its config.json, else the folder's name."""
    cfg = folder / "config.json"
    if cfg.is_file():
        try:
            name = json.loads(cfg.read_text(encoding="utf-8")).get("_name_or_path")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            name = None
        # A hub id (org/name) is what spectrum.py used; a local absolute path is not a name.
        if isinstance(name, str) and name and not os.path.isabs(name) and name.count("/") <= 1:
            return name
    return folder.resolve().name


def _read_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = list(dict.fromkeys(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise SourceError(f"{index}: not a valid index (expected a JSON object with a weight_map): "
                          f"download it again") from None
    return [index.parent / s for s in shards]


def open_source(source: Any, model_name: str | None = None) -> WeightSource:
    """Resolve what the user passed into a WeightSource, or raise a one-line SourceError.

    A WeightSource instance is taken as is: subclass it (tensors(), read()) to scan weights that
    live elsewhere, such as generated benchmark weights (bench/workloads.py)."""
    if isinstance(source, WeightSource):
        return source
    if isinstance(source, torch.nn.Module):
        return ModuleSource(source, model_name)
    if isinstance(source, dict):
        return DictSource(source, model_name or "state_dict")
    if not isinstance(source, (str, os.PathLike)):
        raise SourceError(f"cannot scan a {type(source).__name__}: pass a model, a folder, a .safetensors/.bin "
                          f"file or a dict of tensors")
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder: give a model folder, a .safetensors or .bin file")
    if path.is_file():
        name = model_name or (path.parent.resolve().name if path.stem.startswith(("model", "pytorch_model"))
                              else path.stem)
        if path.suffix == ".safetensors":
            return SafetensorsSource([path], name, str(path))
        if path.suffix in (".bin", ".pt", ".pth"):
            return TorchBinSource([path], name, str(path))
        if path.name.endswith(".index.json"):
            return open_source(path.parent, model_name)
        raise SourceError(f"{path}: unknown weight file type: give a .safetensors or .bin file, or the model folder")
    name = model_name or model_name_of_folder(path)
    if (path / "model.safetensors.index.json").is_file():
        return SafetensorsSource(_read_index(path / "model.safetensors.index.json"), name, str(path))
    if (path / "model.safetensors").is_file():
        return SafetensorsSource([path / "model.safetensors"], name, str(path))
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        return SafetensorsSource(shards, name, str(path))
    if (path / "pytorch_model.bin.index.json").is_file():
        return TorchBinSource(_read_index(path / "pytorch_model.bin.index.json"), name, str(path))
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins:
        return TorchBinSource(bins, name, str(path))
    raise SourceError(f"{path}: no weights found (looked for model.safetensors, *.safetensors with or without "
                      f"an index, pytorch_model*.bin): point at the folder that holds them")
