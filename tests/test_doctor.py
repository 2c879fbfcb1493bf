"""``spectrum-fast doctor`` says what is built and what each operation will use, from the same
checks the operations make."""

from __future__ import annotations

import torch
from conftest import run_cli

import spectrum_fast
from spectrum_fast import doctor
from spectrum_fast.ops import eigen


def test_doctor_reports_the_build_and_the_routes(tmp_path):
    done = run_cli("doctor", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"torch {torch.__version__}" in out
    built = spectrum_fast.kernels_available()
    if not built["_C"]:
        assert "not built" in out
    elif built["_C.cuda"]:
        assert "built with its CUDA kernels" in out
    else:
        assert "C++ part only" in out
    for n in doctor.SIZES:  # the eigen line names the route a scan would take at each size
        assert f"n={n}: {doctor.ROUTE_WORDS[eigen.choose_route(n, torch.device('cpu'), torch.float64)]}" in out


def test_doctor_follows_the_route_choice(monkeypatch):
    monkeypatch.setattr(eigen, "choose_route", lambda n, device, dtype: "two_stage" if n >= 4096 else "syevd")
    line = next(x for x in doctor.report("cpu") if x.strip().startswith("eigenvalues (float64"))
    assert "n=1024: torch.linalg.eigvalsh" in line and "n=4096: two-stage, bands on the host" in line
    monkeypatch.setattr(eigen, "choose_route", lambda n, device, dtype: "two_stage_gpu" if dtype == torch.float32 else "syevd")
    line = next(x for x in doctor.report("cpu") if x.strip().startswith("eigenvalues (float32"))
    assert "n=4096: two-stage, all on the GPU" in line


def test_doctor_bad_device_is_one_line(tmp_path):
    done = run_cli("doctor", "--device", "tpu9", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "tpu9" in done.stderr
