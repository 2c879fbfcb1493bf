"""bench/scale_out.py's table (--compare) from run records, on the CPU: the median round's time,
the rounds' range, the speedup against one rank, and the files checked byte for byte."""

import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _record(out: Path, ranks: int, by_round: list[float], files: dict[str, bytes]) -> None:
    median = sorted(by_round)[(len(by_round) - 1) // 2]
    per_rank = [dict(matrices=7 * (r + 1), busy_seconds=median - 0.01, read_seconds=0.4, compute_seconds=median - 0.02,
                     read_wait_seconds=0.2, peak_gpu_bytes=1888 << 20) for r in range(ranks)]
    record = {"workload": "llama3-8b", "ranks": ranks, "matrices": 224, "scan_seconds": median,
              "scan_seconds_by_round": by_round, "per_rank": per_rank}
    (out / f"llama3-8b-{ranks}ranks.json").write_text(json.dumps(record))
    folder = out / f"llama3-8b-{ranks}ranks"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _table(out: Path) -> list[str]:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scale_out.py"), "--compare", str(out)],
                          capture_output=True, text=True, check=True)
    return [line for line in proc.stdout.splitlines() if line.startswith("| llama3-8b |")]


def test_compare_reports_the_median_round_and_the_files(tmp_path, seed):
    rng = random.Random(seed)
    one = [round(rng.uniform(3.8, 4.4), 2) for _ in range(5)]
    two = [round(rng.uniform(2.1, 2.5), 2) for _ in range(5)]
    yaml = f"unfrozen_parameters:\n- ^model.layers.{rng.randrange(32)}.mlp.up_proj.weight$\n".encode()
    snr = rng.uniform(0.5, 5.0)
    report = json.dumps({"model.layers.0.mlp.up_proj": {"snr": snr, "type": "mlp.up_proj"}}).encode()
    files = {"snr.yaml": yaml, "llama_snr.json": report}
    _record(tmp_path, 1, one, files)
    _record(tmp_path, 2, two, files)
    first, second = _table(tmp_path)
    m1, m2 = sorted(one)[2], sorted(two)[2]
    assert f"| 1 | 224 | {m1:.2f} (median of 5: {min(one):.2f}-{max(one):.2f}) | 1.00x |" in first
    assert f"| 2 | 224 | {m2:.2f} (median of 5: {min(two):.2f}-{max(two):.2f}) | {m1 / m2:.2f}x |" in second
    assert second.endswith("| yes |")

    different = tmp_path / "other"
    different.mkdir()
    _record(different, 1, one[:1], files)
    other = json.dumps({"model.layers.0.mlp.up_proj": {"snr": snr * (1 + 1e-6), "type": "mlp.up_proj"}}).encode()
    _record(different, 2, two[:1], {"snr.yaml": yaml + b"- ^lm_head.weight$\n", "llama_snr.json": other})
    first, second = _table(different)
    assert f"| {one[0]:.2f} | 1.00x |" in first and "median" not in first  # one round: its time alone
    assert second.endswith("| no: max rel. SNR difference 1.0e-06; YAML DIFFERENT |")
