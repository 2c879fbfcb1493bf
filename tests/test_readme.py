"""The README's commands: the test command is the one CI runs, and the Quickstart is two commands."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```[\w-]*\n(.*?)^```", re.M | re.S)


PERF_CHECK = "python3 bench/check_regression.py --baseline bench/baselines/cpu.json"


def ci_commands() -> list[str]:
    """.ci/run's lines that are not blank or a comment."""
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def ci_command() -> str:
    """The command .ci/run runs the tests with: its one line that calls pytest."""
    tests = [ln for ln in ci_commands() if "pytest" in ln]
    assert len(tests) == 1, f".ci/run should call pytest on exactly one line, not {tests}"
    return tests[0]


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def quickstart_commands() -> list[list[str]]:
    """The non-blank lines of each code block in the Quickstart section."""
    match = re.search(r"^## Quickstart\n(.*?)(?=^## )", readme(), re.M | re.S)
    assert match, "README has no '## Quickstart' section followed by another '## ' section"
    return [[ln for ln in block.splitlines() if ln.strip()] for block in FENCE.findall(match.group(1))]


def test_ci_runs_pytest_after_installing():
    cmd = ci_command()
    assert cmd.endswith("python3 -m pytest -q tests"), cmd
    assert re.search(r"pip install .*torch==[\d.]+", cmd), cmd


def test_ci_runs_the_perf_check_after_the_tests():
    """The perf check is the only command after the test command (set -e: failing tests stop CI first)."""
    cmds = ci_commands()
    assert cmds[-2:] == [ci_command(), PERF_CHECK], cmds
    assert "set -euo pipefail" in cmds


def test_readme_has_the_ci_test_command_verbatim():
    cmd = ci_command()
    lines = [ln for block in FENCE.findall(readme()) for ln in block.splitlines()]
    assert cmd in lines, f"README has no code line equal to .ci/run's command:\n{cmd}"


def test_quickstart_is_two_commands():
    blocks = quickstart_commands()
    assert [len(b) for b in blocks] == [1, 1], f"expected two code blocks of one command each, got {blocks}"
    demo, tests = blocks[0][0], blocks[1][0]
    assert tests == ci_command()
    # The demo command: the same torch pin as CI, the package with its demo extra, then the demo scan.
    pin = re.search(r"torch==[\d.]+", ci_command()).group(0)
    assert demo.startswith(f"python3 -m pip install {pin} && "), demo
    assert 'pip install --no-build-isolation -e ".[demo]"' in demo, demo
    assert demo.endswith("&& spectrum-fast scan --demo --out spectrum_demo"), demo


def test_demo_output_folder_is_ignored_by_git():
    """Running the Quickstart in a clone must not leave untracked files behind."""
    folder = re.search(r"--out (\S+)$", quickstart_commands()[0][0]).group(1)
    ignored = [ln.strip() for ln in (ROOT / ".gitignore").read_text().splitlines()]
    assert f"/{folder}/" in ignored or f"{folder}/" in ignored, f"{folder}/ is not in .gitignore"
