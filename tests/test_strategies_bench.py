"""bench/strategies.py (the strategy comparison) end to end on a CPU at toy size, and its corpora."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from strategies_corpus import build_corpora, fixed_windows, random_windows, split_code_and_docstrings  # noqa: E402


def test_docstrings_leave_the_code_and_nothing_else():
    source = ('"""Module doc."""\nimport os\n\n\nclass A:\n    """Class doc,\n    two lines."""\n    x = "not a doc"\n\n'
              '    def f(self):\n        """F doc."""\n        return "also not"\n')
    code, docs = split_code_and_docstrings(source)
    assert docs == ["Module doc.", "Class doc,\ntwo lines.", "F doc."]
    assert "doc" not in code.replace("not a doc", "")
    assert 'x = "not a doc"' in code and 'return "also not"' in code and "import os" in code
    compile(code, "<code>", "exec")  # still Python: a docstring-only body would not be, none here


def test_corpora_split_train_and_eval_without_overlap():
    corpora = build_corpora(max_files=60)
    for corpus in (corpora.code, corpora.prose):
        assert corpus.train.dtype == torch.uint8 and corpus.train.numel() > 10 * corpus.eval.numel() > 0
    assert corpora.source["files"] > 0 and corpora.source["python"]
    again = build_corpora(max_files=60)  # the same text on a second build: repeatable
    assert torch.equal(again.prose.eval, corpora.prose.eval) and torch.equal(again.code.train, corpora.code.train)
    windows = fixed_windows(corpora.prose.eval, 5, 16)
    assert windows.shape == (5, 16) and windows.dtype == torch.int64
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(random_windows(corpora.code.train, 4, 16, g1), random_windows(corpora.code.train, 4, 16, g2))
    with pytest.raises(ValueError):
        fixed_windows(corpora.prose.eval[:10], 2, 16)


def test_bench_smoke_on_cpu(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    cmd = [sys.executable, str(ROOT / "bench" / "strategies.py"), "--device", "cpu", "--layers", "4", "--hidden", "32",
           "--intermediate", "64", "--heads", "4", "--kv-heads", "2", "--seq", "32", "--batch", "4",
           "--pretrain-steps", "4", "--finetune-steps", "4", "--lrs", "1e-3,3e-3", "--eval-windows", "4",
           "--calibration-batches", "2", "--quantize", "4", "--max-files", "40", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "strategies.jsonl").read_text().splitlines()]
    assert list(lines[0]) == ["run_info", "config", "corpora"]
    pretrained = lines[1]
    assert pretrained["stage"] == "pretrained" and pretrained["eval_a"] > 0 and pretrained["eval_b"] > 0
    runs = lines[2:]
    from strategies import STRATEGIES

    assert [(r["strategy"], r["lr"]) for r in runs] == [(s, lr) for s in STRATEGIES for lr in (1e-3, 3e-3)]
    by_name = {r["strategy"]: r for r in runs}
    total = pretrained["params"]
    assert by_name["full"]["trainable_params"] == total
    assert by_name["snr25"]["trainable_params"] < by_name["snr50"]["trainable_params"] < total
    for name in ("salf", "impact"):
        for percent in (25, 50):
            r = by_name[f"{name}{percent}"]
            assert 0 < r["trainable_params"] <= by_name[f"snr{percent}"]["trainable_params"]
    assert 0 < by_name["components"]["trainable_params"] < 1000
    assert 0 < by_name["lora"]["trainable_fraction"] < 1
    for r in runs:
        assert r["step_ms_median"] > 0 and r["peak_gpu_bytes"] is None and r["eval_b"] > 0 and r["eval_a"] > 0
        assert len(r["step_times"]) == 4 and r["selection"]["strategy"] in (r["strategy"], r["strategy"].rstrip("0123456789"))
    table = (tmp_path / "strategies.md").read_text()
    for name in STRATEGIES:
        assert f"| {name} |" in table
