"""The CUDA part of the extension compiles (CI has nvcc but no GPU, and its CPU torch builds only
the C++ part): each CUDA source of setup.py through nvcc -c, and each C++ source with the CUDA
entry points declared, syntax only. Nothing built here runs; the GPU tests run the kernels on the
device."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")
# cuSOLVER's header next to nvcc: csrc/small_eigh_jacobi.cu's solver is compiled only with it.
CUSOLVER_HEADER = Path(NVCC).resolve().parents[1] / "include" / "cusolverDn.h" if NVCC else None


def torch_includes(tmp_path: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths

    flags = [f"-I{p}" for p in include_paths()]
    # A CPU build of torch ships c10's CUDA headers without the one its CMake generates; it only
    # says whether c10_cuda is a shared library, which a compile-only check does not care about.
    if not any((Path(p) / "c10/cuda/impl/cuda_cmake_macros.h").exists() for p in include_paths()):
        stub = tmp_path / "c10/cuda/impl/cuda_cmake_macros.h"
        stub.parent.mkdir(parents=True)
        stub.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        flags.append(f"-I{tmp_path}")
    return flags + [f"-I{ROOT / 'csrc'}", f"-I{sysconfig.get_paths()['include']}", "-DSPECTRUM_FAST_WITH_CUDA"]


def setup_sources(name: str) -> list[str]:
    """setup.py's CPP_SOURCES or CUDA_SOURCES list, read without running setup.py."""
    import ast

    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py has no {name} list")


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("source", setup_sources("CUDA_SOURCES"))
def test_cuda_source_compiles(source, tmp_path):
    cmd = [NVCC, "-std=c++20", "-O3", "-c", str(ROOT / source), "-o", str(tmp_path / "out.o"),
           "-gencode=arch=compute_90,code=sm_90", *torch_includes(tmp_path / "inc")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.skipif(CUSOLVER_HEADER is None or not CUSOLVER_HEADER.exists(), reason="nvcc or cusolverDn.h not found")
def test_small_eigh_jacobi_compiles_with_cusolver(tmp_path):
    """The solver's cuSOLVER calls (setup.py defines SPECTRUM_FAST_WITH_CUSOLVER where it finds
    cuSOLVER; without it the file compiles to stubs, which the test above covers)."""
    cmd = [NVCC, "-std=c++20", "-O3", "-c", str(ROOT / "csrc/small_eigh_jacobi.cu"), "-o", str(tmp_path / "out.o"),
           "-gencode=arch=compute_90,code=sm_90", "-DSPECTRUM_FAST_WITH_CUSOLVER", *torch_includes(tmp_path / "inc")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not on PATH")
@pytest.mark.parametrize("source", setup_sources("CPP_SOURCES"))
def test_cpp_source_compiles_with_the_cuda_entry_points(source, tmp_path):
    """The C++ sources as a CUDA build compiles them (module.cpp then binds the CUDA entry points,
    band_reduction.cpp calls the panel kernel), syntax only."""
    cmd = ["g++", "-std=c++20", "-fsyntax-only", str(ROOT / source), "-DTORCH_EXTENSION_NAME=_C",
           *torch_includes(tmp_path / "inc")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.parametrize("source", [s for s in setup_sources("CUDA_SOURCES") if s.endswith(".cu")])
def test_cuda_sources_leave_argument_checks_to_the_entry_points(source):
    """The .cu files hold kernels and launchers; csrc/cuda_entry_points.cpp checks the arguments
    (with csrc/messages.h's number formatting, which the device needs) before any launch."""
    text = (ROOT / source).read_text()
    assert "TORCH_CHECK" not in text and "c10::str" not in text, f"{source}: move the check to csrc/cuda_entry_points.cpp"
