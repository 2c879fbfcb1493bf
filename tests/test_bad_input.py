"""Bad input: one clean error line from the CLI (no traceback, no files), clean rows from the library."""

from __future__ import annotations

import json
import math
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_matches_reference, reference_rows, run_cli

import spectrum_fast

PREFIX = "spectrum-fast: error:"


# -- the CLI -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A tiny valid model: model.safetensors (single file), a sharded copy, and pytorch_model.bin."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("good")
    state = {f"model.layers.{i}.mlp.{p}.weight": torch.randn(48, 32) for i in range(2) for p in ("up", "down")}
    state["model.embed_tokens.weight"] = torch.randn(64, 32)
    from safetensors.torch import save_file

    (root / "single").mkdir()
    save_file(state, str(root / "single" / "model.safetensors"))
    (root / "sharded").mkdir()
    weight_map = {}
    for i, key in enumerate(state):
        fname = f"model-{i + 1:05d}-of-{len(state):05d}.safetensors"
        save_file({key: state[key]}, str(root / "sharded" / fname))
        weight_map[key] = fname
    (root / "sharded" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (root / "bin").mkdir()
    torch.save(state, root / "bin" / "pytorch_model.bin")
    return root


def assert_clean_error(proc, names: str, out_dir=None, *, argparse_error: bool = False) -> None:
    err = proc.stderr
    assert proc.returncode != 0, f"exit 0 on bad input; stdout={proc.stdout!r}"
    assert "Traceback" not in err, err
    if argparse_error:
        assert "error:" in err and names in err, err
    else:
        lines = err.splitlines()
        assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
        assert lines[0].startswith(PREFIX), err
        assert names in lines[0], f"the message should name {names!r}: {err}"
    if out_dir is not None and out_dir.exists():
        assert list(out_dir.iterdir()) == [], f"files written despite the error: {list(out_dir.iterdir())}"


# Each case: setup(case_dir, good) -> argv; the name its error line must contain. The subprocesses
# (each spends ~1.5 s importing torch) run concurrently in one module fixture; each case is checked
# by its own test below. "OUT" in argv is replaced by case_dir / "out", which must stay empty.
def _broken_index(d, good):
    shutil.copytree(good / "sharded", d / "m")
    (d / "m" / "model.safetensors.index.json").write_text("{not json")
    return d / "m"


def _write(fname, data):
    def setup(d, good):
        (d / "m").mkdir()
        (d / "m" / fname).write_bytes(data(good) if callable(data) else data)
        return d / "m"
    return setup


def _scan_args(src_setup, *extra):
    def setup(d, good):
        src = src_setup(d, good)
        return ["scan", src, "--device", "cpu", "--out", "OUT", "--no-progress", *extra]
    return setup


def _damage_shard(index, cut):
    def setup(d, good):
        shutil.copytree(good / "sharded", d / "m")
        shard = sorted((d / "m").glob("model-*.safetensors"))[index]
        if cut:
            shard.write_bytes(shard.read_bytes()[:-cut])
        else:
            shard.unlink()
        return d / "m"
    return setup


def _half(good_file):
    return lambda good: (lambda b: b[: len(b) // 2])((good / good_file).read_bytes())


def _empty_folder(d, good):
    (d / "empty_model").mkdir()
    (d / "empty_model" / "config.json").write_text("{}")
    return d / "empty_model"


def _not_a_state_dict(d, good):
    torch.save([torch.zeros(3, 3)], d / "weights.bin")
    return d / "weights.bin"


def _out_is_a_file(d, good):
    (d / "taken").write_text("not a folder")
    return ["scan", good / "single", "--device", "cpu", "--no-progress", "--out", d / "taken"]


def _yaml_json(text):
    def setup(d, good):
        (d / "snr_results_x.json").write_text(text)
        return ["yaml", d / "snr_results_x.json", "--top-percent", "50"]
    return setup


def _yaml_bad_percent(d, good):
    src = d / "snr_results_x.json"
    src.write_text(json.dumps({f"model.layers.{i}.mlp.up_proj": {"snr": 0.5 + i, "type": "mlp.up_proj"}
                               for i in range(4)}))
    return ["yaml", src, "--top-percent", "50", "0", "--out", "OUT"]


def _out_below_a_file(d, good):
    (d / "taken").write_text("not a folder")
    return ["scan", good / "single", "--device", "cpu", "--no-progress", "--out", d / "taken" / "sub"]


def _fixed(*argv):
    return lambda d, good: [good / a[5:] if isinstance(a, str) and a.startswith("GOOD/") else a for a in argv]


SAFETENSORS_GARBAGE = {
    "zeros": b"\x00" * 4096,
    "text": b"this is not a model\n" * 50,
    "bad-header-json": b"\x10" + b"\x00" * 7 + b"{not json}",
    "huge-header": b"\xff" * 8 + b"{}",
}
BIN_GARBAGE = {
    "text": b"this is not a checkpoint\n" * 40,
    "legacy-pickle": b"\x80\x02}q\x00(X\x01\x00\x00\x00a" + b"\xab" * 64,
    "zip-magic": b"PK\x03\x04" + b"\x00" * 200,
}

CASES = {
    "missing-path": (_scan_args(lambda d, g: d / "no_such_model"), "no_such_model"),
    "folder-without-weights": (_scan_args(_empty_folder), "empty_model"),
    "types-folder-without-weights": (lambda d, g: ["types", _empty_folder(d, g)], "empty_model"),
    "truncated-safetensors-half": (_scan_args(_write("model.safetensors", _half("single/model.safetensors"))),
                                   "model.safetensors"),
    "truncated-safetensors-tail": (_scan_args(_write("model.safetensors",
                                                     lambda g: (g / "single/model.safetensors").read_bytes()[:-7])),
                                   "model.safetensors"),
    "types-truncated-safetensors": (lambda d, g: ["types", _write("model.safetensors",
                                                                  _half("single/model.safetensors"))(d, g)],
                                    "model.safetensors"),
    "truncated-shard": (_scan_args(_damage_shard(2, 100)), "model-00003-of-00005.safetensors"),
    **{f"corrupt-safetensors-{k}": (_scan_args(_write("model.safetensors", v)), "model.safetensors")
       for k, v in SAFETENSORS_GARBAGE.items()},
    "random-bytes-safetensors": (_scan_args(_write("model.safetensors", lambda g: os.urandom(3000))),
                                 "model.safetensors"),
    "index-names-missing-shard": (_scan_args(_damage_shard(1, 0)), "model-00002-of-00005.safetensors"),
    "broken-index": (_scan_args(_broken_index), "model.safetensors.index.json"),
    **{f"top-percent-{v}": (_scan_args(lambda d, g: g / "single", "--top-percent", "50", v), "top percent")
       for v in ("0", "-5", "101", "nan")},
    "yaml-top-percent-0": (_yaml_bad_percent, "top percent"),
    **{f"types-match-nothing-{t}": (_scan_args(lambda d, g: g / "single", "--types", t), "available types include")
       for t in ("nonexistent_type", "proj", "self_attn.q_proj")},
    "types-bad-regex": (_scan_args(lambda d, g: g / "single", "--types", "mlp.(up"), "mlp.(up"),
    **{f"corrupt-bin-{k}": (_scan_args(_write("pytorch_model.bin", v)), "pytorch_model.bin")
       for k, v in BIN_GARBAGE.items()},
    "random-bytes-bin": (_scan_args(_write("pytorch_model.bin", lambda g: os.urandom(3000))), "pytorch_model.bin"),
    "truncated-bin": (_scan_args(_write("pytorch_model.bin", _half("bin/pytorch_model.bin"))), "pytorch_model.bin"),
    "bin-not-a-state-dict": (_scan_args(_not_a_state_dict), "weights.bin"),
    "device-banana": (_fixed("scan", "GOOD/single", "--device", "banana", "--out", "OUT"), "banana"),
    "out-is-a-file": (_out_is_a_file, "taken"),
    "out-below-a-file": (_out_below_a_file, "taken/sub"),
    "yaml-wrong-layout": (_yaml_json('{"a": 1}'), "snr_results_x.json"),
    "yaml-not-json": (_yaml_json("{broken"), "snr_results_x.json"),
    "yaml-missing-file": (lambda d, g: ["yaml", d / "missing.json", "--top-percent", "50"], "missing.json"),
    "no-source": (_fixed("scan", "--device", "cpu", "--out", "OUT"), "SOURCE"),
}
if not torch.cuda.is_available():
    CASES["device-cuda-without-gpu"] = (_fixed("scan", "GOOD/single", "--device", "cuda", "--out", "OUT"), "cuda")
ARGPARSE_CASES = {
    "top-percent-abc": (_scan_args(lambda d, g: g / "single", "--top-percent", "abc"), "abc"),
    "yaml-top-percent-abc": (lambda d, g: ["yaml", d / "x.json", "--top-percent", "abc"], "abc"),
}


@pytest.fixture(scope="module")
def cli_runs(good, tmp_path_factory):
    """{case: (CompletedProcess, case dir)}: every bad-input command, run concurrently."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = {}
    for case, (setup, _) in {**CASES, **ARGPARSE_CASES}.items():
        d = tmp_path_factory.mktemp(case)
        jobs[case] = ([d / "out" if a == "OUT" else a for a in setup(d, good)], d)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {c: (pool.submit(run_cli, *argv, cwd=d), d) for c, (argv, d) in jobs.items()}
        return {c: (f.result(), d) for c, (f, d) in futures.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_bad_input(cli_runs, case):
    proc, d = cli_runs[case]
    assert_clean_error(proc, CASES[case][1], d / "out")
    leftovers = [p for p in d.rglob("*") if p.name.startswith("snr_results_") and p.name != "snr_results_x.json"
                 or p.suffix in (".tmp", ".yaml")]
    assert not leftovers, f"files written despite the error: {leftovers}"
    if case.startswith("top-percent-") and case != "top-percent-nan":
        assert case.removeprefix("top-percent-") in proc.stderr
    if case.startswith("out-"):
        assert (d / "taken").read_text() == "not a folder"


@pytest.mark.parametrize("case", sorted(ARGPARSE_CASES))
def test_cli_argparse_error(cli_runs, case):
    proc, d = cli_runs[case]
    assert_clean_error(proc, ARGPARSE_CASES[case][1], d / "out", argparse_error=True)


# -- the library: bad tensors ---------------------------------------------------------------------------
def _lib_scan(state, device="cpu", **kw):
    return spectrum_fast.scan(state, device=device, progress=False, **kw)


ON_GPU = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                         reason="needs a CUDA GPU")])


@pytest.mark.parametrize("device", ["cpu", ON_GPU])
def test_nonfinite_and_zero_rows(seed, device):
    state = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(40, 24) for i in range(6)}
    state["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    state["model.layers.2.mlp.up_proj.weight"][0, 0] = float("inf")
    state["model.layers.3.mlp.up_proj.weight"][7, 1] = -float("inf")
    state["model.layers.4.mlp.up_proj.weight"].zero_()
    state["model.layers.0.mlp.down_proj.weight"] = torch.randn(24, 40)
    state["model.layers.1.mlp.down_proj.weight"] = torch.full((24, 40), float("nan"))
    state["model.layers.2.mlp.down_proj.weight"] = torch.randn(24, 40, dtype=torch.float64)
    kept = {name: w.clone() for name, w in state.items()}
    result = _lib_scan(state, device)
    for name, w in state.items():  # the caller's tensors are never written, NaNs and infs included
        torch.testing.assert_close(w, kept[name], rtol=0, atol=0, equal_nan=True, msg=name)
    rows = {r.name: r for r in result.rows}
    assert len(rows) == 9
    bad = {"model.layers.1.mlp.up_proj", "model.layers.2.mlp.up_proj", "model.layers.3.mlp.up_proj",
           "model.layers.1.mlp.down_proj"}
    for name in bad:
        assert rows[name].status == "nonfinite", f"{name}: {rows[name]}"
        assert math.isnan(rows[name].snr)
    zero = rows["model.layers.4.mlp.up_proj"]
    assert zero.status == "zero" and zero.n_signal == 0 and not math.isnan(zero.snr)
    good_names = ["model.layers.0.mlp.up_proj", "model.layers.5.mlp.up_proj", "model.layers.0.mlp.down_proj",
                  "model.layers.2.mlp.down_proj"]
    ref = reference_rows({f"{n}.weight": state[f"{n}.weight"] for n in good_names})

    # The well-formed rows must be exactly right, despite their neighbours in the batch.
    assert_matches_reference(SimpleNamespace(rows=[rows[n] for n in good_names]), ref, seed, "finite rows")
    # Non-finite rows are never selected, not even at 100%; the zero matrix is an ordinary 0.
    for p in (10, 50, 75, 100):
        assert not bad & set(result.select(p)), f"non-finite row selected at {p}%"
    assert set(result.select(100)) == set(rows) - bad
    # And they sort last in the sorted JSON, and the JSON can be read back.
    srt = json.loads(result.sorted_json())
    assert list(srt["mlp.up_proj"])[-3:] and all(math.isnan(v) for v in list(srt["mlp.up_proj"].values())[-3:])
    assert "5 matrices not ok" in result.summary()


def test_nonfinite_in_a_file_via_cli(tmp_path):
    from safetensors.torch import save_file

    state = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(40, 24) for i in range(4)}
    state["model.layers.2.mlp.up_proj.weight"][1, 1] = float("nan")
    (tmp_path / "m").mkdir()
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    proc = run_cli("scan", tmp_path / "m", "--device", "cpu", "--no-progress", "--out", tmp_path / "o",
                   "--top-percent", "100", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "model.layers.2.mlp.up_proj (nonfinite)" in proc.stdout
    yaml_text = (tmp_path / "o" / "snr_results_m_unfrozenparameters_100percent.yaml").read_text()
    assert "model.layers.2.mlp.up_proj" not in yaml_text and "model.layers.3.mlp.up_proj" in yaml_text


def test_integer_and_bool_tensors_are_skipped(seed):
    state = {
        "model.layers.0.mlp.up_proj.weight": torch.randn(16, 8),
        "model.layers.1.mlp.up_proj.weight": torch.randint(0, 5, (16, 8)),  # int64 in a block: would be a target
        "model.layers.0.attn.mask": torch.ones(8, 8, dtype=torch.bool),
        "model.position_ids": torch.arange(8),
        "model.layers.0.mlp.up_proj.bias": torch.randn(16),
        "model.norm.weight": torch.ones(8),
    }
    for types in ("auto", "all"):
        result = _lib_scan(state, types=types)
        skipped = dict(result.skipped)
        assert "int64" in skipped.get("model.layers.1.mlp.up_proj.weight", ""), result.skipped
        assert "model.layers.0.attn.mask" in skipped and "bool" in skipped["model.layers.0.attn.mask"]
        names = {r.name for r in result.rows}
        assert "model.layers.0.mlp.up_proj" in names
        assert not names & {"model.layers.1.mlp.up_proj", "model.layers.0.attn.mask", "model.position_ids"}
        assert all(not n.endswith("bias") for n in names)
    all_result = _lib_scan(state, types="all")
    assert "model.position_ids" in dict(all_result.skipped)
    assert {r.name for r in all_result.rows} == {"model.layers.0.mlp.up_proj", "model.norm"}
    assert_matches_reference(all_result, reference_rows(state, types="all"), seed, "int/bool skipped")


def test_only_integer_tensors_is_an_error():
    with pytest.raises(spectrum_fast.SpectrumFastError):
        _lib_scan({"model.layers.0.mlp.up_proj.weight": torch.randint(0, 5, (16, 8))})


def test_dict_with_non_tensor_is_an_error():
    with pytest.raises(spectrum_fast.SourceError, match="model.layers.0.w"):
        _lib_scan({"model.layers.0.w": [[1.0, 2.0]]})
