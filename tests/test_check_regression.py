"""bench/check_regression.py's comparison, on synthetic results (no timing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import check_regression as cr  # noqa: E402

BASE = {"512x512": 2.0, "1024x256": 1.5}


def results(ms: dict[str, tuple[float, float]]) -> dict:
    """bench/shapes.py's layout from {shape: (spectrum_fast ms, Spectrum ms)}."""
    return {"meta": {}, "shapes": {s: {"methods": {"spectrum_fast": {"ms_per_matrix": ours},
                                                    "svdvals_fp32": {"ms_per_matrix": ref}}}
                                   for s, (ours, ref) in ms.items()}}


def by_shape(findings):
    return {f.shape: f.status for f in findings}


def test_a_30_percent_loss_fails():
    assert by_shape(cr.compare(BASE, {"512x512": 1.4, "1024x256": 1.5})) == {"512x512": "regressed", "1024x256": "ok"}


def test_a_10_percent_loss_passes():
    assert cr.failed(cr.compare(BASE, {"512x512": 1.8, "1024x256": 1.35})) == []


def test_a_missing_shape_is_reported():
    findings = cr.compare(BASE, {"512x512": 2.0})
    assert by_shape(findings) == {"512x512": "ok", "1024x256": "missing"}
    assert cr.failed(findings)[0].line(0.25).startswith("MISSING 1024x256")


def test_a_gain_passes_and_new_shapes_are_ignored():
    assert by_shape(cr.compare(BASE, {"512x512": 5.0, "1024x256": 1.5, "64x64": 0.1})) == {"512x512": "ok", "1024x256": "ok"}


def test_speedup_is_spectrum_time_over_ours_and_needs_both():
    res = results({"512x512": (10.0, 25.0)})
    res["shapes"]["64x64"] = {"methods": {"spectrum_fast": {"ms_per_matrix": 1.0}, "svdvals_fp32": {"error": "x"}}}
    assert cr.speedups(res) == {"512x512": 2.5}


def test_a_regression_must_repeat_on_remeasure():
    base = {"tolerance": 0.25, "speedup": BASE}
    asked = []

    def remeasure(shapes):
        asked.append(shapes)
        return {"512x512": 1.9}

    findings = cr.check(base, {"512x512": 1.0, "1024x256": 1.5}, remeasure, attempts=2)
    assert asked == [["512x512"]] and cr.failed(findings) == []
    findings = cr.check(base, {"512x512": 1.0, "1024x256": 1.5}, lambda s: {"512x512": 1.2}, attempts=2)
    assert by_shape(cr.failed(findings)) == {"512x512": "regressed"}


def test_cli_exit_status_and_one_line_per_regression(tmp_path, capsys):
    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps({"tolerance": 0.25, "run": {}, "speedup": BASE}))
    fresh = tmp_path / "fresh.json"
    fresh.write_text(json.dumps(results({"512x512": (10.0, 13.0)})))  # 1.3x against 2.0x; 1024x256 absent
    assert cr.main(["--baseline", str(baseline), "--results", str(fresh)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[:2]] == ["REGRESSED", "MISSING"]
    assert "512x512" in lines[0] and "1.30x" in lines[0] and "2.00x" in lines[0]
    fresh.write_text(json.dumps(results({"512x512": (10.0, 19.0), "1024x256": (10.0, 16.0)})))
    assert cr.main(["--baseline", str(baseline), "--results", str(fresh)]) == 0


def test_update_keeps_the_run_and_records_median_and_spread(tmp_path):
    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps({"tolerance": 0.25, "run": {"device": "cpu"}, "speedup": {}}))
    files = []
    for i, ref in enumerate((20.0, 30.0, 25.0)):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps(results({"512x512": (10.0, ref)})))
        files.append(str(p))
    assert cr.main(["--baseline", str(baseline), "--update", "--results", *files]) == 0
    new = json.loads(baseline.read_text())
    assert new["run"] == {"device": "cpu"} and new["speedup"] == {"512x512": 2.5}
    assert new["spread"] == {"512x512": [2.0, 3.0]} and len(new["runs"]) == 3


def test_an_empty_baseline_is_refused(tmp_path):
    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps({"run": {}, "speedup": {}, "command": "fill me"}))
    assert cr.main(["--baseline", str(baseline), "--results", str(baseline)]) == 2


@pytest.mark.parametrize("name", ["cpu.json", "h100.json"])
def test_committed_baselines_say_how_to_measure(name):
    base = json.loads((Path(cr.BENCH) / "baselines" / name).read_text())
    assert {"device", "shapes", "count", "repeats"} <= set(base["run"])
    assert base["tolerance"] == 0.25 and base["command"].startswith("python3 bench/check_regression.py")
