"""Build the optional native kernels; everything else is in pyproject.toml.

The extensions are optional: without a C compiler the install still succeeds and the local
backend uses its PyTorch / FAISS paths, which compute the same results. On x86-64 the same
source is built twice, for any x86-64 CPU and for AVX2; ``backends/local/_kernel.py`` loads the
AVX2 build only on a CPU that has it.
"""

import platform

from setuptools import Extension, setup

SOURCE = ["backends/local/_fmkernel.c"]
# no FMA contraction and no fast-math, so the kernels round as the PyTorch step does
FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-Wno-psabi"]

extensions = [
    Extension("backends.local._fmkernel", SOURCE, extra_compile_args=FLAGS, optional=True)
]
if platform.machine().lower() in ("x86_64", "amd64"):
    extensions.append(
        Extension(
            "backends.local._fmkernel_avx2",
            SOURCE,
            extra_compile_args=[*FLAGS, "-mavx2"],
            define_macros=[("FMKERNEL_AVX2", "1")],
            optional=True,
        )
    )

setup(ext_modules=extensions)
