"""The result cache and the resume journal (spectrum_fast/cache.py, checksums.py): a second scan of
the same weights comes from the cache and writes the same files byte for byte; changed weights or
numeric options are computed again; an interrupted scan (Ctrl-C, kill -9) resumes and ends with the
files an uninterrupted scan writes; a corrupt or unwritable cache never fails a scan."""

from __future__ import annotations

import importlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import spectrum_fast
from spectrum_fast import cache as cache_mod
from spectrum_fast import checksums, fast_engine
from spectrum_fast.cache import CacheWarning

scan_mod = importlib.import_module("spectrum_fast.scan")  # the module: the package's ``scan`` is the function

TYPES = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (32, 64), "mlp.up_proj": (96, 64), "mlp.down_proj": (64, 96)}


def _trained_like(n: int, m: int) -> torch.Tensor:
    """Gaussian bulk / sqrt(m) plus a few spikes of random strength: SNRs that differ per matrix and run."""
    k = min(n, m)
    rank = random.randint(1, max(1, k // 8))
    u, v = torch.linalg.qr(torch.randn(n, rank))[0], torch.linalg.qr(torch.randn(m, rank))[0]
    spikes = 8 * torch.arange(1, rank + 1, dtype=torch.float32) ** -0.7 * (0.5 + torch.rand(rank))
    return torch.randn(n, m) / m**0.5 + (u * spikes) @ v.T


def _weights(seed: int, layers: int = 6, special: bool = True) -> dict[str, torch.Tensor]:
    """layers x 4 matrices in bf16 and fp32; with ``special``, one all-zero matrix (status "zero") and
    one with an infinity (status "nonfinite", SNR NaN: the JSON holds NaN) among them."""
    random.seed(seed)
    state = {}
    for i in range(layers):
        for j, (t, (n, m)) in enumerate(TYPES.items()):
            w = _trained_like(n, m)
            state[f"model.layers.{i}.{t}.weight"] = w.to(torch.bfloat16) if (i + j) % 2 else w
    state["model.embed_tokens.weight"] = torch.randn(40, 64)
    if special:
        state["model.layers.0.mlp.down_proj.weight"].zero_()
        w = state["model.layers.1.self_attn.k_proj.weight"]
        w[random.randrange(w.shape[0]), random.randrange(w.shape[1])] = float("inf")
    return state


def _model_folder(folder: Path, seed: int, layers: int = 6, special: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_weights(seed, layers, special), str(folder / "model.safetensors"))
    return folder


def _numbers(result) -> str:
    """Every field of every row but its time, as text (NaN compares equal to NaN)."""
    return repr([(r.name, r.type, r.snr, tuple(r.shape), r.dtype, r.sigma_max, r.sigma, r.threshold, r.n_signal,
                  r.n_noise, r.status, r.estimate) for r in result.rows])


def _files(result, folder: Path) -> dict[str, bytes]:
    """The files the CLI writes (both JSON layouts, the YAML at 25% and 50%), by name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [*result.to_spectrum_json(folder), result.to_yaml(folder, 25), result.to_yaml(folder, 50)]
    return {p.name: p.read_bytes() for p in paths}


def _scan(source, **kw):
    return spectrum_fast.scan(source, device="cpu", progress=False, **kw)


def _entries(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "results").glob("*.json")) if (cache_dir / "results").is_dir() else []


def _journals(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "journals").glob("*.jsonl")) if (cache_dir / "journals").is_dir() else []


def _no_computing(monkeypatch):
    """Any attempt to compute a row fails the test: what comes back must come from the cache."""
    def refuse(*a, **k):
        raise AssertionError("a row was computed, not taken from the cache")
    monkeypatch.setattr(scan_mod, "run_batches", refuse)
    monkeypatch.setattr(fast_engine, "run_batches_fast", refuse)


def _interrupting_bar(after_updates: int):
    """A stand-in for tqdm whose update() raises KeyboardInterrupt (Ctrl-C) after ``after_updates`` batches."""
    class Bar:
        def __init__(self, *a, **k):
            self.updates = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.updates += 1
            if self.updates >= after_updates:
                raise KeyboardInterrupt

    return Bar


def _scan_interrupted(folder, monkeypatch, after_batches: int) -> None:
    """A scan of one matrix per batch, stopped by Ctrl-C after ``after_batches`` batches."""
    with monkeypatch.context() as m:
        m.setattr("tqdm.auto.tqdm", _interrupting_bar(after_updates=after_batches))
        with pytest.raises(KeyboardInterrupt):
            _scan(folder, max_batch_bytes=1)


# -- a second scan --------------------------------------------------------------------------------
def test_second_scan_comes_from_the_cache_with_identical_files(cache_dir, tmp_path, seed, monkeypatch):
    folder = _model_folder(tmp_path / "m", seed)
    fresh = _scan(folder)
    assert not fresh.from_cache and fresh.cached_rows == fresh.resumed_rows == 0
    assert len(_entries(cache_dir)) == 1 and _journals(cache_dir) == [], "a finished scan leaves an entry, no journal"
    assert {r.status for r in fresh.rows} == {"ok", "zero", "nonfinite"}, "the NaN and zero rows are in the test"

    _no_computing(monkeypatch)
    again = _scan(folder)
    assert again.from_cache and again.cached_rows == len(fresh.rows) and again.resumed_rows == 0
    assert _numbers(again) == _numbers(fresh), f"seed={seed}"
    assert [r.seconds for r in again.rows] == [r.seconds for r in fresh.rows], "rows keep the time they took"
    assert (again.model_name, again.embedding_name, again.skipped) == (fresh.model_name, fresh.embedding_name,
                                                                       fresh.skipped)
    assert _files(again, tmp_path / "cached") == _files(fresh, tmp_path / "fresh"), f"seed={seed}"

    # The same weights copied elsewhere have the same content: the same entry serves them.
    copy = tmp_path / "copy_of_m"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    assert _scan(copy).from_cache


def test_cached_rows_equal_a_scan_without_the_cache(cache_dir, tmp_path, seed):
    folder = _model_folder(tmp_path / "m", seed)
    _scan(folder)
    cached, uncached = _scan(folder), _scan(folder, cache=False)
    assert cached.from_cache and not uncached.from_cache
    assert _numbers(cached) == _numbers(uncached), f"seed={seed}"
    assert _files(cached, tmp_path / "a") == _files(uncached, tmp_path / "b")


def test_module_and_dict_sources_are_cached_by_their_values(cache_dir, seed, monkeypatch):
    layers = torch.nn.ModuleDict({"layers": torch.nn.ModuleList(
        [torch.nn.Linear(n, m, bias=False) for n, m in ((48, 80), (80, 48), (48, 80))])})
    with torch.no_grad():
        for p in layers.parameters():
            p.copy_(_trained_like(*p.shape))
    first = _scan(layers)
    assert not first.from_cache and _scan(layers).from_cache
    # A training step changes the values in place: the next scan computes again, and matches a fresh scan.
    with torch.no_grad():
        w = layers["layers"][2].weight
        w[random.randrange(w.shape[0])] += torch.randn(w.shape[1])
    changed = _scan(layers)
    assert not changed.from_cache and changed.cached_rows == 0
    assert _numbers(changed) == _numbers(_scan(layers, cache=False)), f"seed={seed}"
    state = {n: p.detach().clone() for n, p in layers.named_parameters()}
    dict_first = _scan(state)
    _no_computing(monkeypatch)
    assert _scan(state).from_cache and _numbers(_scan(state)) == _numbers(dict_first)


def test_meta_weights_are_left_out_of_the_key(cache_dir, seed):
    model = torch.nn.ModuleDict({"layers": torch.nn.ModuleList([torch.nn.Linear(40, 72, bias=False)
                                                               for _ in range(3)])})
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(_trained_like(*p.shape))
    model["layers"][1].to("meta")  # offloaded: skipped by the scan, no bytes to hash
    first = _scan(model)
    assert [r.name for r in first.rows] == ["layers.0", "layers.2"]
    again = _scan(model)
    assert again.from_cache and _numbers(again) == _numbers(first)
    assert again.skipped == first.skipped and again.skipped


# -- what the key covers --------------------------------------------------------------------------
def test_changed_file_is_scanned_again_even_with_its_old_size_and_mtime(cache_dir, tmp_path, seed, monkeypatch):
    monkeypatch.setattr(checksums, "RACY_WINDOW_NS", 0)  # remember the digest of a file written just now
    folder = _model_folder(tmp_path / "m", seed, special=False)
    path = folder / "model.safetensors"
    before = _scan(folder)
    assert len(list((cache_dir / "file-digests").iterdir())) == 1, "the file's digest is remembered"

    # Unchanged: the remembered digest is used, the file is not read again.
    def no_hashing(*a, **k):
        raise AssertionError("an unchanged file was hashed again")
    with monkeypatch.context() as m:
        m.setattr(checksums, "_hash_file_piece", no_hashing)
        assert _scan(folder).from_cache

    # Overwrite one tensor's bytes in place, same size, and put the old mtime back: only the ctime
    # tells (git's rule), and it must be enough.
    st = os.stat(path)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    name = f"model.layers.{random.randrange(6)}.mlp.up_proj.weight"
    begin, end = header[name]["data_offsets"]
    dtype = {"F32": torch.float32, "BF16": torch.bfloat16}[header[name]["dtype"]]
    new = _trained_like(*header[name]["shape"]).to(dtype)
    assert new.numel() * new.element_size() == end - begin
    time.sleep(0.01)  # a new ctime even on file systems with coarse timestamps
    with open(path, "r+b") as f:
        f.seek(8 + header_len + begin)
        f.write(new.view(torch.uint8).numpy().tobytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    after = _scan(folder)
    assert not after.from_cache and after.cached_rows == 0
    assert _numbers(after) == _numbers(_scan(folder, cache=False)), f"seed={seed}"
    module = name.removesuffix(".weight")
    assert next(r.snr for r in after.rows if r.name == module) != next(r.snr for r in before.rows if r.name == module)


@pytest.mark.parametrize("option", [{"estimator": "gavish-donoho"}, {"precision": "float32"},
                                    {"eigen_route": "two_stage"}, {"method": "fast"}])
def test_numeric_options_are_in_the_key(cache_dir, seed, option):
    state = _weights(seed, layers=2, special=False)
    default = _scan(state)
    other = _scan(state, **option)
    assert not other.from_cache and other.cached_rows == 0, f"{option} took rows computed with other options"
    assert _scan(state, **option).from_cache and _scan(state).from_cache
    assert _numbers(_scan(state)) == _numbers(default)
    # Each option's rows are its own (the options that change numbers visibly do change them).
    if option.get("estimator") or option.get("method"):
        assert [r.threshold for r in other.rows] != [r.threshold for r in default.rows]


def test_key_names_the_cpu_and_versions():
    key, fields = cache_mod.scan_key("abc", precision="float64", method="exact", estimator="spectrum",
                                     eigen_route="auto", device=torch.device("cpu"))
    assert fields["device"] == f"cpu {torch.backends.cpu.get_cpu_capability()}"
    assert fields["torch"] == torch.__version__ and fields["spectrum_fast"] == spectrum_fast.__version__
    assert key != cache_mod.scan_key("abd", precision="float64", method="exact", estimator="spectrum",
                                     eigen_route="auto", device=torch.device("cpu"))[0]


def test_other_types_reuse_the_matrices_they_share(cache_dir, seed, monkeypatch):
    state = _weights(seed, layers=3, special=False)
    state["model.layers.0.mlp.experts.down_proj.weight"] = torch.stack([_trained_like(24, 40) for _ in range(4)])
    auto = _scan(state)
    everything = _scan(state, types="all")
    assert not everything.from_cache and everything.cached_rows == len(auto.rows)
    assert len(everything.rows) == len(auto.rows) + 1, "the embedding is the one new matrix"
    assert _numbers(everything) == _numbers(_scan(state, types="all", cache=False)), f"seed={seed}"
    # Pooling experts renames types only: every row comes from the cache, under the pooled type.
    _no_computing(monkeypatch)
    pooled = _scan(state, pool_experts=True)
    assert pooled.from_cache
    assert {r.type for r in pooled.rows if ".experts." in r.name} == {"mlp.experts.down_proj.*"}
    monkeypatch.undo()
    assert _numbers(pooled) == _numbers(_scan(state, pool_experts=True, cache=False))


# -- resume ---------------------------------------------------------------------------------------
def test_ctrl_c_keeps_finished_batches_and_the_next_scan_resumes(cache_dir, tmp_path, seed, monkeypatch):
    folder = _model_folder(tmp_path / "m", seed)
    _scan_interrupted(folder, monkeypatch, after_batches=3)  # one matrix per batch: Ctrl-C after the third
    assert _entries(cache_dir) == [], "an interrupted scan writes no entry"
    (journal,) = _journals(cache_dir)
    lines = journal.read_bytes().splitlines()
    assert len(lines) == 3, "each finished batch is journaled, nothing else"

    resumed = _scan(folder)  # batched differently from the interrupted scan
    assert resumed.resumed_rows == 3 and resumed.cached_rows == 0 and not resumed.from_cache
    uninterrupted = _scan(folder, cache=False)
    assert _numbers(resumed) == _numbers(uninterrupted), f"seed={seed}"
    assert _files(resumed, tmp_path / "resumed") == _files(uninterrupted, tmp_path / "uninterrupted")
    assert _journals(cache_dir) == [] and len(_entries(cache_dir)) == 1, "the journal became the entry"
    assert _scan(folder).from_cache


def test_a_killed_append_leaves_a_partial_line_that_is_dropped(cache_dir, tmp_path, seed, monkeypatch):
    folder = _model_folder(tmp_path / "m", seed)
    _scan_interrupted(folder, monkeypatch, after_batches=2)
    (journal,) = _journals(cache_dir)
    complete = journal.read_bytes()
    third = json.dumps({"name": "model.layers.3.mlp.up_proj", "snr": 1.5}).encode()
    journal.write_bytes(complete + third[: random.randrange(1, len(third))])  # killed mid-write
    _scan_interrupted(folder, monkeypatch, after_batches=1)  # resumes, journals one more batch after the partial line
    lines = journal.read_bytes().splitlines()
    assert len(lines) == 3 and all(json.loads(ln)["tensor"] for ln in lines), "the partial line was cut off"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # a partial last line is expected, not worth a warning
        resumed = _scan(folder)
    assert resumed.resumed_rows == 3
    assert _numbers(resumed) == _numbers(_scan(folder, cache=False)), f"seed={seed}"


def test_every_batch_is_fsynced_to_the_journal(cache_dir, seed, monkeypatch):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the file of a descriptor")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    state = _weights(seed, layers=2, special=False)
    result = _scan(state, max_batch_bytes=1)
    journal_syncs = [p for p in synced if p.endswith(".jsonl")]
    assert len(journal_syncs) == len(result.rows), "one fsync of the journal per batch (one matrix each here)"


def test_cli_killed_scan_resumes_to_byte_identical_files(tmp_path, seed):
    """kill -9 in the middle of a CLI scan, then the same command: the files equal a fresh run's."""
    folder = _model_folder(tmp_path / "model", seed, layers=12)
    matrices = 12 * len(TYPES)

    def env(cache: Path) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if k != "SPECTRUM_FAST_NO_CACHE"}
        return {**e, "SPECTRUM_FAST_CACHE": str(cache), "OMP_NUM_THREADS": "1"}

    def cli(cache: Path, out: Path, *extra) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "spectrum_fast", "scan", str(folder), "--device", "cpu",
                               "--top-percent", "25", "50", "--out", str(out), "--no-progress", *extra],
                              env=env(cache), capture_output=True, text=True, timeout=120)

    # The CLI's own main(), in a process that batches 4 matrices and holds each batch 0.15 s so
    # that the kill lands mid-scan (12 batches: 1.8 s at least).
    slow = ("import sys, time\n"
            "import spectrum_fast.engine as engine, spectrum_fast.ops as ops\n"
            "engine.MAX_BATCH = 4\n"
            "gram = ops.gram\n"
            "ops.gram = lambda *a, **k: (time.sleep(0.15), gram(*a, **k))[1]\n"
            "from spectrum_fast.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    cache_a, out_killed = tmp_path / "cache_a", tmp_path / "out_killed"
    proc = subprocess.Popen([sys.executable, "-c", slow, "scan", str(folder), "--device", "cpu", "--top-percent",
                             "25", "50", "--out", str(out_killed), "--no-progress"], env=env(cache_a),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal_dir = cache_a / "journals"
    deadline = time.monotonic() + 90
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            journals = list(journal_dir.glob("*.jsonl")) if journal_dir.is_dir() else []
            if journals and b"\n" in journals[0].read_bytes():
                break
            time.sleep(0.01)
    finally:
        proc.kill()  # SIGKILL: no handler, no cleanup, as an OOM kill
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the scan ended (rc {proc.returncode}) before it could be killed"
    (journal,) = journal_dir.glob("*.jsonl")
    journaled = journal.read_bytes().count(b"\n")
    assert 0 < journaled < matrices
    assert list(out_killed.iterdir()) == [], "a killed scan writes no output file"
    assert not (cache_a / "results").exists() or not list((cache_a / "results").iterdir())

    resumed = cli(cache_a, tmp_path / "out_resumed")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {journaled} of {matrices} matrices from an interrupted scan" in resumed.stdout, resumed.stdout
    assert not journal.exists()

    fresh = cli(tmp_path / "cache_b", tmp_path / "out_fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert "from the cache" not in fresh.stdout and "resumed" not in fresh.stdout
    cached = cli(cache_a, tmp_path / "out_cached")
    assert cached.returncode == 0, cached.stderr
    assert f"all {matrices} matrices from the cache ({cache_a})" in cached.stdout, cached.stdout
    uncached = cli(tmp_path / "cache_c", tmp_path / "out_uncached", "--no-cache")
    assert uncached.returncode == 0, uncached.stderr
    assert not (tmp_path / "cache_c").exists(), "--no-cache writes nothing"

    def files(out: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    want = files(tmp_path / "out_fresh")
    assert len(want) == 4, sorted(want)
    for out in ("out_resumed", "out_cached", "out_uncached"):
        assert files(tmp_path / out) == want, f"{out} differs from a fresh run (seed={seed})"


def test_cli_ctrl_c_says_how_to_resume_and_the_rerun_resumes(cache_dir, tmp_path, seed, monkeypatch, capsys):
    from spectrum_fast.cli import main

    folder = _model_folder(tmp_path / "m", seed)
    argv = ["scan", str(folder), "--device", "cpu", "--out", str(tmp_path / "out"), "--no-progress"]
    with monkeypatch.context() as m:
        m.setattr("tqdm.auto.tqdm", _interrupting_bar(after_updates=2))
        m.setattr(scan_mod, "DEFAULT_CPU_BUDGET", 1)  # one matrix per batch
        assert main(argv) == 130
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"kept in {cache_dir}: run the same command again to resume" in err[0], err
    assert list((tmp_path / "out").iterdir()) == []
    assert main(argv) == 0
    assert f"resumed 2 of {6 * len(TYPES)} matrices from an interrupted scan ({cache_dir}); " \
           f"{6 * len(TYPES) - 2} computed" in capsys.readouterr().out


# -- a cache that cannot be used ------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated", "other-key", "bad-row", "directory"])
def test_corrupt_entry_is_ignored_with_one_warning(cache_dir, tmp_path, seed, damage):
    folder = _model_folder(tmp_path / "m", seed)
    first = _scan(folder)
    (entry,) = _entries(cache_dir)
    text = entry.read_text()
    if damage == "garbage":
        entry.write_bytes(os.urandom(200))
    elif damage == "truncated":
        entry.write_text(text[: random.randrange(1, len(text) - 1)])
    elif damage == "other-key":
        data = json.loads(text)
        data["key"]["content"] = "0" * 64
        entry.write_text(json.dumps(data))
    elif damage == "bad-row":
        data = json.loads(text)
        random.choice(data["rows"])["snr"] = "high"
        entry.write_text(json.dumps(data))
    else:
        entry.unlink()
        entry.mkdir()
    with pytest.warns(CacheWarning) as caught:
        again = _scan(folder)
    assert len(caught) == (2 if damage == "directory" else 1), [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert str(entry) in message and "\n" not in message
    assert not again.from_cache and again.cached_rows == 0
    assert _numbers(again) == _numbers(first), f"seed={seed}"
    if damage != "directory":  # rewritten whole: the next scan reads it without a warning
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error", CacheWarning)
            assert _scan(folder).from_cache


def test_corrupt_journal_line_starts_over_with_a_warning(cache_dir, tmp_path, seed, monkeypatch):
    folder = _model_folder(tmp_path / "m", seed)
    _scan_interrupted(folder, monkeypatch, after_batches=3)
    (journal,) = _journals(cache_dir)
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[1] = b"{not json\n"
    journal.write_bytes(b"".join(lines))
    with pytest.warns(CacheWarning, match="corrupt"):
        result = _scan(folder)
    assert result.resumed_rows == 0
    assert _numbers(result) == _numbers(_scan(folder, cache=False)), f"seed={seed}"


def test_unwritable_cache_folder_warns_once_and_scans(tmp_path, seed, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.delenv("SPECTRUM_FAST_NO_CACHE", raising=False)
    monkeypatch.setenv("SPECTRUM_FAST_CACHE", str(blocker / "cache"))
    state = _weights(seed, layers=2)
    with pytest.warns(CacheWarning) as caught:
        result = _scan(state)
    assert len(caught) == 1 and str(blocker) in str(caught[0].message), [str(w.message) for w in caught]
    assert _numbers(result) == _numbers(_scan(state, cache=False))
    assert blocker.read_text() == "not a folder"


def test_cli_reports_a_corrupt_entry_and_a_bad_folder_in_one_line_each(tmp_path, seed):
    folder = _model_folder(tmp_path / "m", seed, layers=2)
    cache = tmp_path / "cache"
    blocker = tmp_path / "a_file"
    blocker.write_text("x")

    def cli(cache_folder: Path, out: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "SPECTRUM_FAST_NO_CACHE"}
        return subprocess.run([sys.executable, "-m", "spectrum_fast", "scan", str(folder), "--device", "cpu",
                               "--out", str(tmp_path / out), "--no-progress"],
                              env={**env, "SPECTRUM_FAST_CACHE": str(cache_folder)}, capture_output=True, text=True,
                              timeout=120)

    assert cli(cache, "first").returncode == 0
    (entry,) = _entries(cache)
    entry.write_text("{")
    for proc, names in ((cli(cache, "second"), str(entry)), (cli(blocker, "third"), str(blocker))):
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("spectrum-fast: warning: ") and names in lines[0], lines
        assert "from the cache" not in proc.stdout
    first = {p.name: p.read_bytes() for p in (tmp_path / "first").iterdir()}
    assert first == {p.name: p.read_bytes() for p in (tmp_path / "second").iterdir()}
    assert first == {p.name: p.read_bytes() for p in (tmp_path / "third").iterdir()}


def test_switches_that_turn_the_cache_off(cache_dir, seed, monkeypatch):
    state = _weights(seed, layers=2, special=False)
    assert not _scan(state, cache=False).from_cache and not cache_dir.exists()
    monkeypatch.setenv("SPECTRUM_FAST_NO_CACHE", "1")
    assert not _scan(state).from_cache and not _scan(state).from_cache and not cache_dir.exists()
    with pytest.raises(spectrum_fast.SelectionError, match="cache="):
        _scan(state, cache="yes")


def test_a_source_of_your_own_is_not_cached(cache_dir, seed):
    state = _weights(seed, layers=2, special=False)

    class Generated(spectrum_fast.WeightSource):
        def tensors(self):
            return [spectrum_fast.TensorInfo(n, tuple(t.shape), str(t.dtype).removeprefix("torch."), True)
                    for n, t in state.items()]

        def read(self, info):
            return state[info.name]

    assert not _scan(Generated()).from_cache and not _scan(Generated()).from_cache
    assert _entries(cache_dir) == []


# -- the digests ----------------------------------------------------------------------------------
def test_file_digest_sees_every_byte_whatever_the_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(checksums, "PIECE_BYTES", 4096)
    data = bytearray(os.urandom(random.randrange(5 * 4096, 9 * 4096)))
    path = tmp_path / "w.safetensors"
    path.write_bytes(data)
    one, four = checksums.file_digests([path], threads=1), checksums.file_digests([path], threads=4)
    assert one == four
    for where in (0, random.randrange(len(data)), len(data) - 1):  # first piece, anywhere, the partial last piece
        flipped = bytearray(data)
        flipped[where] ^= 1 << random.randrange(8)
        path.write_bytes(flipped)
        assert checksums.file_digests([path], threads=3) != one, f"a flipped bit at byte {where} went unseen"
    path.write_bytes(data + b"\x00")
    assert checksums.file_digests([path]) != one, "a longer file is another file"


def test_tensor_digest_reads_values_not_memory_layout(seed, monkeypatch):
    monkeypatch.setattr(checksums, "PIECE_BYTES", 256)  # several pieces per tensor
    a, b = torch.randn(37, 29), torch.randn(50, 20).to(torch.bfloat16)
    base = checksums.tensors_digest([("a", a), ("b", b)])
    assert checksums.tensors_digest([("a", a.T.contiguous().T), ("b", b.clone())], threads=1) == base
    assert checksums.tensors_digest([("a", a), ("b", b), ("m", torch.empty(8, 8, device="meta"))]) == base
    for name, t in (("a", a), ("b", b)):
        changed = {"a": a.clone(), "b": b.clone()}
        changed[name][random.randrange(t.shape[0]), random.randrange(t.shape[1])] += 1
        assert checksums.tensors_digest(list(changed.items())) != base, f"a changed value of {name} went unseen"
    assert checksums.tensors_digest([("a", a.reshape(29, 37)), ("b", b)]) != base, "the shape is part of it"
    assert checksums.tensors_digest([("renamed", a), ("b", b)]) != base, "the name is part of it"
