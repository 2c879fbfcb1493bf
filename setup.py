"""Builds the optional extension spectrum_fast._C from csrc/ when it can.

The package imports and works without it. The extension needs torch at build time, so build with
``pip install --no-build-isolation -e .`` after torch is installed (the README's commands do).

- torch with CUDA and nvcc found (torch's CUDA_HOME): the C++ and the CUDA sources, for the
  architectures in SPECTRUM_FAST_CUDA_ARCH (default "90": the H100/H200; e.g. "80;90"), linked
  with cuSOLVER where CUDA_HOME has it (the batched small eigen solver; without it that op says so).
- otherwise: the C++ sources alone (the CPU entry points).
SPECTRUM_FAST_NO_EXT=1 skips the extension; SPECTRUM_FAST_NO_CUDA=1 builds the C++ part only.
"""

import os
import sys
from pathlib import Path

from setuptools import setup

CPP_SOURCES = ["csrc/module.cpp", "csrc/snr_statistics.cpp", "csrc/band_reduction.cpp"]
CUDA_SOURCES = ["csrc/cuda_entry_points.cpp", "csrc/householder_panels.cu", "csrc/householder_panels_cluster.cu",
                "csrc/compact_wy.cu", "csrc/bulge_chase.cu", "csrc/ldlt_unpivoted.cu", "csrc/small_eigh_jacobi.cu"]


def cuda_arch_flags() -> list[str]:
    archs = [a.strip() for a in os.environ.get("SPECTRUM_FAST_CUDA_ARCH", "90").replace(",", ";").split(";") if a.strip()]
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def cusolver_library_dir(cuda_home: str) -> str | None:
    """The folder of cuSOLVER's library where the CUDA toolkit has it and its dense header
    (csrc/small_eigh_jacobi.cu), else None."""
    root = Path(cuda_home)
    if not (root / "include" / "cusolverDn.h").exists():
        return None
    found = [root / lib for lib in ("lib64", "lib", "targets/x86_64-linux/lib") if (root / lib / "libcusolver.so").exists()]
    return str(found[0]) if found else None


def extensions():
    if os.environ.get("SPECTRUM_FAST_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("spectrum_fast: torch not importable at build time: skipping the _C extension", file=sys.stderr)
        return [], {}
    include = [str(Path(__file__).resolve().parent / "csrc")]
    with_cuda = (torch.version.cuda is not None and CUDA_HOME is not None
                 and os.environ.get("SPECTRUM_FAST_NO_CUDA") != "1")
    if with_cuda:
        cusolver = cusolver_library_dir(CUDA_HOME)
        if cusolver is None:
            print(f"spectrum_fast: no cuSOLVER under {CUDA_HOME}: building without the batched small eigen solver",
                  file=sys.stderr)
        ext = CUDAExtension(
            name="spectrum_fast._C",
            sources=CPP_SOURCES + CUDA_SOURCES,
            include_dirs=include,
            define_macros=[("SPECTRUM_FAST_WITH_CUDA", None)] + ([("SPECTRUM_FAST_WITH_CUSOLVER", None)] if cusolver else []),
            libraries=["cusolver"] if cusolver else [],
            library_dirs=[cusolver] if cusolver else [],
            # Found there too where torch has not loaded its own copy (same soname) first.
            extra_link_args=[f"-Wl,-rpath,{cusolver}"] if cusolver else [],
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo", *cuda_arch_flags()]},
        )
    else:
        if torch.version.cuda is not None:
            print("spectrum_fast: nvcc not found (CUDA_HOME) or SPECTRUM_FAST_NO_CUDA=1: building the C++ part only",
                  file=sys.stderr)
        ext = CppExtension(name="spectrum_fast._C", sources=CPP_SOURCES, include_dirs=include, extra_compile_args=["-O3"])
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
