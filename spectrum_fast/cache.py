"""The result cache and the resume journal: a second scan of the same weights is instant, and an
interrupted scan continues from its last finished batch.

Layout of the cache folder ($SPECTRUM_FAST_CACHE, else $XDG_CACHE_HOME/spectrum_fast, else
~/.cache/spectrum_fast):

- ``results/<key>.json``: a finished scan's rows (one record per matrix, by module name);
- ``journals/<key>.jsonl``: the rows of a scan in progress, one JSON line per matrix, appended and
  fsync'ed after each batch; a scan that ends normally folds them into ``results/<key>.json`` and
  removes the journal, so a journal that remains belongs to an interrupted scan. Each rank of a
  distributed scan (distributed.py) appends to its own, ``<key>.rank<r>.jsonl``; every scan of
  the key reads them all, so a scan resumes whatever ranks the interrupted one ran on;
- ``file-digests/``: each weight file's content digest, remembered by its stat (checksums.py).

The key is a digest of everything that decides the numbers (scan_key): the weights' content, the
precision, method, estimator and eigen route, where the maths runs, and the versions of torch and
spectrum_fast. Which matrices a scan covers (``types``) and how they are named into types
(``pool_experts``) are not in it: rows are stored per matrix, so a later scan with other types
reuses the matrices it shares with earlier ones and computes the rest.

Nothing here may fail a scan: an unreadable or corrupt entry or journal is ignored with a one-line
CacheWarning (its matrices are computed again), and a folder that cannot be written turns the
cache off for that scan with one warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from . import checksums
from .files import atomic_write_text
from .results import MatrixRow
from .sources import DictSource, ModuleSource, SafetensorsSource, TensorInfo, TorchBinSource, WeightSource
from .targets import MatrixTask

CACHE_FORMAT = 1
CACHE_ENV = "SPECTRUM_FAST_CACHE"
NO_CACHE_ENV = "SPECTRUM_FAST_NO_CACHE"
_STATUSES = ("ok", "nonfinite", "zero")


class CacheWarning(UserWarning):
    """The cache could not be used for part of a scan; the scan goes on and computes what it needs."""


def _warn(message: str) -> None:
    warnings.warn(message, CacheWarning, stacklevel=3)


def cache_folder() -> Path:
    """Where the cache lives: $SPECTRUM_FAST_CACHE, else $XDG_CACHE_HOME/spectrum_fast, else
    ~/.cache/spectrum_fast."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().absolute() / "spectrum_fast"


def cache_disabled_by_env() -> bool:
    """SPECTRUM_FAST_NO_CACHE set to anything but "" or "0": every scan runs as with cache=False."""
    return os.environ.get(NO_CACHE_ENV, "") not in ("", "0")


# -- the key --------------------------------------------------------------------------------------
def where_maths_runs(device: torch.device) -> str:
    """The device part of the key. Results agree across devices only to float64 rounding: the CPU's
    LAPACK and BLAS pick kernels by vector instruction set, and a GPU's routes and kernels by the
    card, so the last bits of a row can differ. A cached row must be the one a fresh scan here would
    give, so the key names the CPU's instruction set or the GPU's model (not its index)."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return f"{device.type} {torch.backends.cpu.get_cpu_capability()}"


def content_digest(source: WeightSource, infos: list[TensorInfo], memo_folder: Path | None) -> str | None:
    """The digest of the weights a source holds, or None for a source the cache cannot vouch for
    (a WeightSource subclass of your own: its read() may generate or fetch anything)."""
    if type(source) in (SafetensorsSource, TorchBinSource):
        files = _weight_files(infos)
        return _files_content(checksums.file_digests(files, memo_folder))
    if type(source) in (DictSource, ModuleSource):
        return checksums.tensors_digest((info.name, source.read(info)) for info in infos)
    return None


def _weight_files(infos: list[TensorInfo]) -> list[str]:
    return list(dict.fromkeys(info.file for info in infos if info.file))


def _files_content(digests: list[str]) -> str:
    return hashlib.sha256(json.dumps(["files", digests]).encode()).hexdigest()


def _memo_folder() -> Path | None:
    try:
        memo = cache_folder() / "file-digests"
        memo.mkdir(parents=True, exist_ok=True)
        return memo
    except (RuntimeError, OSError):  # for_scan says why, once per rank
        return None


def shared_content_digest(source: WeightSource, infos: list[TensorInfo], ranks) -> str | None:
    """content_digest for the ranks of a distributed scan (``ranks``: distributed.Ranks), the same
    on every rank and equal to a single process's: each rank checksums the files of about
    1/world of the bytes and the digests are gathered. A collective: every rank must call it.
    None (with a warning) when some rank could not checksum its files."""
    from .partition import split_files_by_size

    error, mine, content = None, {}, None
    try:
        memo = _memo_folder()
        if type(source) in (SafetensorsSource, TorchBinSource):
            files = _weight_files(infos)
            sizes = [os.stat(f).st_size for f in files]
            share = split_files_by_size(files, sizes, ranks.world)[ranks.rank]
            mine = dict(zip(share, checksums.file_digests([files[i] for i in share], memo)))
        else:
            content = content_digest(source, infos, memo)
    except (checksums.ChecksumError, OSError, RuntimeError) as e:
        error = " ".join(str(e).split())
    gathered = ranks.all_gather((error, mine, content))
    errors = [f"rank {r}: {e}" for r, (e, _, _) in enumerate(gathered) if e]
    if errors:
        _warn(f"cannot checksum the weights ({errors[0]}): scanning without the cache")
        return None
    if type(source) in (SafetensorsSource, TorchBinSource):
        digests = {i: d for _, share, _ in gathered for i, d in share.items()}
        return _files_content([digests[i] for i in range(len(digests))])
    contents = {c for _, _, c in gathered}
    if len(contents) > 1:
        _warn("the ranks hold different weights (their digests differ): scanning without the cache")
        return None
    return contents.pop()


def scan_key(content: str, *, precision: str, method: str, estimator: str, eigen_route: str,
             device: torch.device) -> tuple[str, dict[str, Any]]:
    """-> (the key, the fields it is a digest of). Every field can change a row's numbers:
    precision, method and estimator by definition; eigen_route because each route rounds
    differently (and a route asked for by name should be the one that ran); the device, torch and
    spectrum_fast versions because they choose the kernels. max_gpu_memory and max_batch_bytes
    are not in it: they size batches, and a matrix's row does not depend on the batch it was in
    (on a CPU its bits were identical with 1 and 64 matrices per batch)."""
    from . import __version__

    fields = {
        "format": CACHE_FORMAT, "content": content, "precision": precision, "method": method,
        "estimator": estimator, "eigen_route": eigen_route, "device": where_maths_runs(device),
        "torch": torch.__version__, "spectrum_fast": __version__,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:40], fields


# -- rows as JSON records -------------------------------------------------------------------------
def _record(task: MatrixTask, row: MatrixRow) -> dict[str, Any]:
    """A row as stored, with the tensor it came from (checked on reuse). Floats are written by
    repr, which reads back to the same float, NaN and infinities included (as NaN, Infinity)."""
    rec = dataclasses.asdict(row)
    rec["shape"] = list(row.shape) if row.shape is not None else None
    rec["tensor"], rec["expert"] = task.tensor.name, task.expert
    return rec


class _BadRecord(ValueError):
    pass


def _number(rec: dict, key: str, kinds=(int, float), optional: bool = True):
    value = rec[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise _BadRecord(f"{key} is {value!r}")
    return value


def _check_record(rec: Any) -> dict[str, Any]:
    """Raise _BadRecord unless ``rec`` has every field of a row, with the right types."""
    try:
        if not isinstance(rec, dict) or not isinstance(rec["name"], str) or not isinstance(rec["tensor"], str):
            raise _BadRecord("not a row")
        if rec["status"] not in _STATUSES or not isinstance(rec["estimate"], bool) or not isinstance(rec["dtype"], str):
            raise _BadRecord("bad status, estimate or dtype")
        if not (isinstance(rec["shape"], list) and len(rec["shape"]) == 2):
            raise _BadRecord("bad shape")
        _number(rec, "snr", optional=False)
        for key in ("sigma_max", "sigma", "threshold", "seconds"):
            _number(rec, key)
        for key in ("n_signal", "n_noise", "expert"):
            _number(rec, key, kinds=(int,))
    except KeyError as e:
        raise _BadRecord(f"no {e}") from None
    return rec


def _row_for(task: MatrixTask, rec: dict[str, Any]) -> MatrixRow | None:
    """The cached row of ``task``, or None when the record is of another tensor or shape. Name and
    type come from the task: the type depends on pool_experts, which the key leaves out."""
    if (rec["tensor"], rec["expert"], tuple(rec["shape"]), rec["dtype"]) != \
            (task.tensor.name, task.expert, (task.n, task.m), task.tensor.dtype):
        return None
    as_float = (lambda v: None if v is None else float(v))
    return MatrixRow(
        name=task.name, type=task.type, snr=float(rec["snr"]), shape=(task.n, task.m), dtype=task.tensor.dtype,
        sigma_max=as_float(rec["sigma_max"]), sigma=as_float(rec["sigma"]), threshold=as_float(rec["threshold"]),
        n_signal=rec["n_signal"], n_noise=rec["n_noise"], status=rec["status"], seconds=as_float(rec["seconds"]),
        estimate=rec["estimate"],
    )


# -- one scan's use of the cache ------------------------------------------------------------------
class ScanCache:
    """The cache as one scan sees it: the rows already known for its key (a finished entry, an
    interrupted scan's journal), the journal it appends to, and the entry it leaves behind."""

    def __init__(self, folder: Path, key: str, fields: dict[str, Any], rank: int | None = None):
        self.folder, self.key, self.fields = folder, key, fields
        self.entry_path = folder / "results" / f"{key}.json"
        self.journal_path = folder / "journals" / (f"{key}.jsonl" if rank is None else f"{key}.rank{rank}.jsonl")
        self.cached_rows = 0  # rows taken from a finished entry
        self.resumed_rows = 0  # rows taken from an interrupted scan's journal
        self._entry: dict[str, dict] = {}
        self._journal: dict[str, dict] = {}
        self._journal_bytes = 0  # length of the journal's complete lines (a killed write leaves a tail)
        self._journal_file = None
        self._pending: list[str] = []  # lines of the batch in progress
        self._new: dict[str, dict] = {}
        self._broken = False  # writing failed once: stop trying for this scan

    @classmethod
    def for_scan(cls, source: WeightSource, infos: list[TensorInfo], device: torch.device, *, precision: str,
                 method: str, estimator: str, eigen_route: str, content: str | None = None,
                 rank: int | None = None) -> ScanCache | None:
        """The cache for this scan, or None when it cannot be used (a source of your own, weights
        that could not be checksummed: a CacheWarning says why). ``content``: the weights' digest
        when the caller has it (a distributed scan's ranks checksum a share of the files each);
        ``rank``: the rank whose journal this scan appends to."""
        try:
            folder = cache_folder()
        except RuntimeError as e:  # Path.home() without a home folder
            _warn(f"no cache folder ({e}): set {CACHE_ENV} to a folder, or pass --no-cache")
            return None
        memo = folder / "file-digests"
        try:
            memo.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            memo = None  # still look for an entry: a read-only cache can serve results
            _warn(f"cache folder {folder} cannot be written ({e.strerror or e}): results will not be "
                  f"stored; set {CACHE_ENV} to a writable folder or pass --no-cache")
        if content is None:
            try:
                content = content_digest(source, infos, memo)
            except (checksums.ChecksumError, OSError, RuntimeError) as e:
                _warn(f"cannot checksum the weights ({' '.join(str(e).split())}): scanning without the cache")
                return None
        if content is None:
            return None
        key, fields = scan_key(content, precision=precision, method=method, estimator=estimator,
                               eigen_route=eigen_route, device=device)
        cache = cls(folder, key, fields, rank)
        cache._broken = memo is None
        return cache

    # -- reading ----------------------------------------------------------------------------------
    def _read_entry(self) -> dict[str, dict]:
        try:
            text = self.entry_path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):  # no entry (a folder that is a file warned already)
            return {}
        except (OSError, UnicodeDecodeError) as e:
            _warn(f"cache entry {self.entry_path} is unreadable ({e}): ignored, its matrices are computed again")
            return {}
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("key") != self.fields or not isinstance(data.get("rows"), list):
                raise _BadRecord("not an entry of this key")
            return {rec["name"]: rec for rec in map(_check_record, data["rows"])}
        except (ValueError, TypeError) as e:  # json.JSONDecodeError and _BadRecord are ValueErrors
            _warn(f"cache entry {self.entry_path} is corrupt ({e}): ignored, its matrices are computed again")
            return {}

    def _journal_paths(self) -> list[Path]:
        """This key's journals: a single process's and each rank's of a distributed scan."""
        folder = self.journal_path.parent
        try:
            found = set(folder.glob(f"{self.key}.rank*.jsonl")) | {folder / f"{self.key}.jsonl"}
        except OSError:
            found = {folder / f"{self.key}.jsonl"}
        return sorted(found | {self.journal_path})

    def _read_journal(self) -> dict[str, dict]:
        """Rows of the complete lines of this key's journals. A kill during an append leaves a last
        line without its newline: that line is dropped (its rows are computed again), and the next
        append to this scan's own journal starts where its complete lines end."""
        rows = {}
        for path in self._journal_paths():
            try:
                data = path.read_bytes()
            except (FileNotFoundError, NotADirectoryError):  # none (a folder that is a file warned already)
                continue
            except OSError as e:
                _warn(f"resume journal {path} is unreadable ({e.strerror or e}): ignored")
                continue
            complete = data[: data.rfind(b"\n") + 1]
            found = {}
            try:
                for line in complete.decode("utf-8").splitlines():
                    rec = _check_record(json.loads(line))
                    found[rec["name"]] = rec
            except (ValueError, TypeError) as e:
                _warn(f"resume journal {path} is corrupt ({e}): ignored, its matrices are computed again")
                complete, found = b"", {}
            rows.update(found)
            if path == self.journal_path:
                self._journal_bytes = len(complete)
        return rows

    def known_rows(self, tasks: list[MatrixTask]) -> dict[int, MatrixRow]:
        """{task.order: row} for the tasks whose rows are in the entry or the journal."""
        self._entry, self._journal = self._read_entry(), self._read_journal()
        known = {}
        for task in tasks:
            for source, counter in ((self._entry, "cached_rows"), (self._journal, "resumed_rows")):
                rec = source.get(task.name)
                row = _row_for(task, rec) if rec is not None else None
                if row is not None:
                    known[task.order] = row
                    setattr(self, counter, getattr(self, counter) + 1)
                    break
        return known

    # -- writing ----------------------------------------------------------------------------------
    def _write_failed(self, what: Path, e: OSError) -> None:
        if not self._broken:
            _warn(f"cannot write {what} ({e.strerror or e}): this scan's results are not cached; "
                  f"set {CACHE_ENV} to a writable folder or pass --no-cache")
        self._broken = True

    def add(self, task: MatrixTask, row: MatrixRow) -> None:
        """A finished matrix: journaled with its batch (commit_batch)."""
        rec = _record(task, row)
        self._new[task.name] = rec
        self._pending.append(json.dumps(rec, separators=(",", ":")) + "\n")

    def commit_batch(self) -> None:
        """Append the batch's rows to the journal in one write, then flush and fsync, so they
        survive a kill -9 or a power cut from here on."""
        lines, self._pending = self._pending, []
        if self._broken or not lines:
            return
        try:
            if self._journal_file is None:
                self.journal_path.parent.mkdir(parents=True, exist_ok=True)
                self._journal_file = open(self.journal_path, "ab")
                self._journal_file.truncate(self._journal_bytes)  # drop a killed append's partial line
            self._journal_file.write("".join(lines).encode("utf-8"))
            self._journal_file.flush()
            os.fsync(self._journal_file.fileno())
        except OSError as e:
            self._write_failed(self.journal_path, e)

    def adopt(self, rows: list[tuple[MatrixTask, MatrixRow]]) -> None:
        """Rows other ranks computed (gathered): written into the entry by finish(), not journaled
        here (each rank journaled its own)."""
        for task, row in rows:
            self._new[task.name] = _record(task, row)

    def finish(self) -> None:
        """The scan ended normally: write the entry (every row known for this key, this scan's and
        earlier ones') in one atomic write, then remove the key's journals (a distributed scan's
        ranks had all finished: their rows are in the entry)."""
        self.close()
        if self._broken or not (self._new or self._journal):
            return  # nothing new: the entry on disk already holds every row this scan used
        rows = {**self._entry, **self._journal, **self._new}
        entry = {"key": self.fields, "rows": list(rows.values())}
        try:
            atomic_write_text(self.entry_path, json.dumps(entry, separators=(",", ":")))
        except OSError as e:
            self._write_failed(self.entry_path, e)
            return  # the journals stay: the next scan resumes from them
        for path in self._journal_paths():
            self._remove(path)

    def drop_journal(self) -> None:
        """A rank other than 0 at the end of a distributed scan: rank 0 wrote the entry with every
        rank's rows, so this rank's journal is done (on a node of its own, it would only linger)."""
        self.close()
        self._remove(self.journal_path)

    @staticmethod
    def _remove(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            _warn(f"cannot remove resume journal {path} ({e.strerror or e})")

    def close(self) -> None:
        if self._journal_file is not None:
            try:
                self._journal_file.close()
            except OSError:
                pass
            self._journal_file = None
