"""Builds the optional extension spectrum_fast._C from csrc/ when it can.

The package imports and works without it. The extension needs torch at build time, so build with
``pip install --no-build-isolation -e .`` after torch is installed (the README's commands do).
SPECTRUM_FAST_NO_EXT=1 skips it.
"""

import os
import sys

from setuptools import setup


def extensions():
    if os.environ.get("SPECTRUM_FAST_NO_EXT") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("spectrum_fast: torch not importable at build time: skipping the _C extension", file=sys.stderr)
        return [], {}
    ext = CppExtension(
        name="spectrum_fast._C",
        sources=["csrc/snr_statistics.cpp"],
        extra_compile_args=["-O3"],
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
