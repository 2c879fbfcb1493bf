"""What a benchmark result needs to be read later: date, machine, torch, commit and command."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch


def git_commit() -> str:
    """SPECTRUM_FAST_COMMIT when set (the device tool's checkout has no .git), else git's short HEAD."""
    if os.environ.get("SPECTRUM_FAST_COMMIT"):
        return os.environ["SPECTRUM_FAST_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {os.cpu_count()} cores"


def run_info(device: torch.device) -> dict:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": device_name(device),
        "host_cpu": f"{cpu_name()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": git_commit(),
        "command": shlex.join(["python3", *sys.argv]),
    }


def cuda_kernels_or_exit(script: str):
    """spectrum_fast._C with its CUDA kernels, or exit with the one line that says how to build it
    (for the probes that time the compiled kernels on the device)."""
    from spectrum_fast import _extension

    ext = _extension.cuda_ops()
    if ext is None:
        sys.exit(f"{script}: spectrum_fast._C has no CUDA kernels: pip install --no-build-isolation -e . on the GPU machine")
    return ext
