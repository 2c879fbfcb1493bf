"""Scans shared by torchrun's ranks (spectrum_fast/distributed.py, partition.py): the shares, the
files of a 2-process gloo run against one process, the cache across both, and the failures (a rank
killed mid-scan, a shard missing on one rank's copy, a copy with other tensors)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spectrum_fast.engine import plan_batches
from spectrum_fast.partition import (imbalance, matrix_cost, share_costs, split_batches, split_by_cost,
                                     split_files_by_size, tasks_cost)
from spectrum_fast.sources import TensorInfo
from spectrum_fast.targets import MatrixTask

transformers = pytest.importorskip("transformers")
HERE = Path(__file__).resolve().parent
OUTPUTS = ("snr_results_model.json", "snr_results_model_sorted.json",
           "snr_results_model_unfrozenparameters_50percent.yaml")


# -- the shares -----------------------------------------------------------------------------------
def random_tasks(rng: random.Random, count: int) -> list[MatrixTask]:
    shapes = [(rng.choice([64, 1024, 1536, 4096, 8192]), rng.choice([128, 5120, 14336])) for _ in range(6)]
    tasks = []
    for i in range(count):
        n, m = rng.choice(shapes)
        info = TensorInfo(f"model.layers.{i}.w.weight", (n, m), rng.choice(["bfloat16", "float32"]), True)
        tasks.append(MatrixTask(info.name[:-7], "w", info, None, n, m, i))
    return tasks


@pytest.mark.parametrize("ranks", [1, 2, 3, 8])
def test_every_matrix_goes_to_one_rank_and_the_shares_balance(ranks, seed):
    rng = random.Random(seed)
    tasks = random_tasks(rng, rng.randrange(1, 400))
    shares = split_by_cost(tasks, ranks)
    assert len(shares) == ranks
    assert sorted(t.order for share in shares for t in share) == list(range(len(tasks))), seed
    for share in shares:
        assert [t.order for t in share] == sorted(t.order for t in share), "each share in model order"
    assert split_by_cost(list(reversed(tasks)), ranks) == shares, "the same split whatever the input order"
    costs = share_costs(shares)
    biggest = max(matrix_cost(t.n, t.m, t.tensor.dtype) for t in tasks)
    # Longest-processing-time-first: no rank exceeds the mean by a whole matrix's cost.
    assert max(costs) <= sum(costs) / ranks + biggest + 1e-12, (seed, costs)


@pytest.mark.parametrize("ranks", [1, 2, 5])
def test_a_scan_shares_whole_batches(ranks, seed):
    """Each batch of the plan goes whole to one rank (so each matrix meets the kernels it meets in a
    single process), in the plan's order, about equal cost each."""
    rng = random.Random(seed)
    tasks = random_tasks(rng, rng.randrange(1, 300))
    batches = plan_batches(tasks, rng.choice([1 << 20, 64 << 20, 1 << 30]))
    shares = split_batches(batches, ranks)
    assert sorted(id(b) for share in shares for b in share) == sorted(id(b) for b in batches), seed
    position = {id(b): i for i, b in enumerate(batches)}
    for share in shares:
        assert [position[id(b)] for b in share] == sorted(position[id(b)] for b in share)
    costs = [tasks_cost([t for b in share for t in b.tasks]) for share in shares]
    biggest = max(tasks_cost(b.tasks) for b in batches)
    assert max(costs) <= sum(costs) / ranks + biggest + 1e-12, (seed, costs)


def test_the_cost_grows_with_the_work():
    assert matrix_cost(8192, 8192, "bfloat16") > matrix_cost(4096, 8192, "bfloat16") > matrix_cost(4096, 4096, "bfloat16")
    assert matrix_cost(1024, 4096, "float32") > matrix_cost(1024, 4096, "bfloat16"), "more bytes to read"
    assert matrix_cost(1024, 4096, "bfloat16") == matrix_cost(4096, 1024, "bfloat16")
    assert imbalance([1.0, 1.0]) == 1.0 and imbalance([3.0, 1.0]) == 1.5


def test_files_split_by_size(seed):
    rng = random.Random(seed)
    sizes = [rng.randrange(1, 10**9) for _ in range(rng.randrange(1, 40))]
    shares = split_files_by_size([f"f{i}" for i in range(len(sizes))], sizes, 3)
    assert sorted(i for share in shares for i in share) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in share) for share in shares]
    assert max(loads) <= sum(sizes) / 3 + max(sizes), (seed, loads)


# -- runs under torchrun (gloo, on the CPU) ------------------------------------------------------------
@pytest.fixture
def model_folder(tmp_path, seed) -> Path:
    """A tiny Llama in many shards (one or two tensors each): a rank reads a few of them."""
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():  # weights with a spread of spectra, not the init's near-zero ones
        for p in model.parameters():
            p.add_(torch.randn_like(p) * torch.rand(()) * 0.1)
    folder = tmp_path / "model"
    model.save_pretrained(folder, max_shard_size="20KB")
    assert len(list(folder.glob("*.safetensors"))) > 4
    return folder


def run_cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spectrum_fast", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def run_torchrun(ranks: int, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               str(HERE / "torchrun_scan.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


def scan_args(source, out) -> list[str]:
    return ["scan", str(source), "--device", "cpu", "--out", str(out), "--no-progress", "--model-name", "model"]


def assert_same_files(got: Path, want: Path) -> None:
    assert sorted(p.name for p in got.iterdir()) == sorted(OUTPUTS)
    for name in OUTPUTS:
        assert (got / name).read_bytes() == (want / name).read_bytes(), name


def our_errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("spectrum-fast: error:")]


def test_two_ranks_write_the_files_one_process_writes(model_folder, tmp_path):
    one = run_cli(scan_args(model_folder, tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = run_torchrun(2, scan_args(model_folder, tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_files(tmp_path / "two", tmp_path / "one")
    assert "on 2 ranks" in two.stdout and "rank 1 (" in two.stdout, two.stdout
    assert two.stdout.count("wrote ") == 3, "rank 0 alone writes and says so"


def test_two_ranks_keep_the_spectra_of_one(model_folder, tmp_path):
    import numpy as np

    from spectrum_fast.spectra import read_spectra

    one = run_cli(scan_args(model_folder, tmp_path / "one") + ["--keep-spectra"])
    two = run_torchrun(2, scan_args(model_folder, tmp_path / "two") + ["--keep-spectra"])
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    a = read_spectra(tmp_path / "one" / "snr_results_model_spectra.safetensors")
    b = read_spectra(tmp_path / "two" / "snr_results_model_spectra.safetensors")
    assert [(r.name, r.snr) for r in a.rows] == [(r.name, r.snr) for r in b.rows]
    assert a.spectra.keys() == b.spectra.keys() and len(a.spectra) == 28
    assert all(np.array_equal(a.spectra[k], b.spectra[k]) for k in a.spectra)


def test_the_cache_is_shared_between_ranks_and_a_single_process(model_folder, tmp_path, cache_dir):
    """The key does not depend on how many processes scanned: a single process reuses every row of
    a 2-rank scan (each rank checksummed a share of the files)."""
    two = run_torchrun(2, scan_args(model_folder, tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert list((cache_dir / "journals").glob("*.jsonl")) == [], "a finished scan leaves no journal"
    one = run_cli(scan_args(model_folder, tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    assert "all 28 matrices from the cache" in one.stdout, one.stdout
    assert_same_files(tmp_path / "two", tmp_path / "one")


def test_a_killed_rank_stops_the_scan_and_a_rerun_resumes(model_folder, tmp_path, cache_dir):
    out = tmp_path / "out"
    killed = run_torchrun(2, scan_args(model_folder, out), env={"SPECTRUM_FAST_TEST_KILL_RANK": "1"})
    assert killed.returncode != 0
    errors = our_errors(killed)
    assert len(errors) == 1 and "rank 1 of 2" in errors[0] and "no output was written" in errors[0], killed.stderr
    assert not out.exists() or list(out.iterdir()) == [], "no partial output"
    journals = list((cache_dir / "journals").glob("*.rank*.jsonl"))
    assert journals, "each rank journals its finished batches"

    rerun = run_torchrun(2, scan_args(model_folder, out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed" in rerun.stdout, rerun.stdout
    plain = run_cli(scan_args(model_folder, tmp_path / "plain") + ["--no-cache"])
    assert plain.returncode == 0, plain.stderr
    assert_same_files(out, tmp_path / "plain")


def test_an_error_on_one_rank_stops_the_others_and_is_named(model_folder, tmp_path):
    """A rank that fails mid-scan (out of memory here) says so; rank 0 names it, nothing is written."""
    out = tmp_path / "out"
    proc = run_torchrun(2, scan_args(model_folder, out), env={"SPECTRUM_FAST_TEST_FAIL_RANK": "1"})
    assert proc.returncode != 0
    errors = our_errors(proc)
    assert len(errors) == 2, proc.stderr
    assert any(e.startswith("spectrum-fast: error: [rank 1] out of GPU memory") for e in errors), errors
    assert any(e.startswith("spectrum-fast: error: rank 1 of 2") and "out of memory" in e for e in errors), errors
    assert not out.exists() or list(out.iterdir()) == []
    assert "Traceback" not in "\n".join(line for line in proc.stderr.splitlines() if "spectrum" in line)


def test_a_shard_missing_on_one_rank_is_named_by_rank_0(model_folder, tmp_path):
    incomplete = tmp_path / "model_1"
    shutil.copytree(model_folder, incomplete)
    missing = sorted(incomplete.glob("*.safetensors"))[2]
    missing.unlink()
    shutil.copytree(model_folder, tmp_path / "model_0")
    out = tmp_path / "out"
    proc = run_torchrun(2, scan_args(tmp_path / "model_{rank}", out))
    assert proc.returncode != 0
    errors = our_errors(proc)
    assert errors and errors[0].startswith("spectrum-fast: error: rank 1 of 2"), proc.stderr
    assert missing.name in errors[0], errors
    assert not out.exists() or list(out.iterdir()) == []
    assert "Traceback" not in "\n".join(line for line in proc.stderr.splitlines() if "spectrum" in line)


def test_a_copy_with_other_tensors_on_one_rank_is_refused(model_folder, tmp_path):
    shutil.copytree(model_folder, tmp_path / "model_0")
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "model_1")
    proc = run_torchrun(2, scan_args(tmp_path / "model_{rank}", tmp_path / "out"))
    assert proc.returncode != 0
    errors = our_errors(proc)
    assert errors and "rank 1 of 2" in errors[0] and "same checkpoint" in errors[0], proc.stderr


# -- NCCL, on GPUs ----------------------------------------------------------------------------------
def gpu_scan(source, out, ranks: int | None = None, device: str = "cuda") -> subprocess.CompletedProcess:
    """A GPU scan by the CLI: alone on ``device``, or under torchrun with ``ranks`` ranks (each on its own GPU)."""
    args = ["scan", str(source), "--out", str(out), "--no-progress", "--model-name", "model"]
    proc = run_cli(args + ["--device", device]) if ranks is None else run_torchrun(ranks, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_one_rank_on_nccl_writes_the_files_of_a_plain_scan(model_folder, tmp_path):
    gpu_scan(model_folder, tmp_path / "plain")
    one = gpu_scan(model_folder, tmp_path / "one", ranks=1)
    assert "on 1 rank" in one.stdout and "cuda:0" in one.stdout, one.stdout
    assert_same_files(tmp_path / "one", tmp_path / "plain")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_give_the_rows_of_one(model_folder, tmp_path):
    gpu_scan(model_folder, tmp_path / "plain", device="cuda:0")
    two = gpu_scan(model_folder, tmp_path / "two", ranks=2)
    assert "cuda:0" in two.stdout and "cuda:1" in two.stdout, two.stdout
    # Whole batches per rank: each matrix ran in the batch it runs in alone, so the bits agree.
    assert_same_files(tmp_path / "two", tmp_path / "plain")
