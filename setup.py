"""Build the optional native training kernels (the FM's SGD / ranking steps, the Bayesian FM's
Gibbs updates); everything else is in pyproject.toml.

The extension (one library from both C files) is optional: without a C compiler the install still
succeeds and the local backend uses its PyTorch paths, which compute the same results. It is
loaded with ctypes and uses no CPython API, so it is built against the stable ABI (one ``abi3``
build per platform, not one per Python version). On x86-64 with gcc or clang it holds a baseline
and an AVX2 copy of its hot loops and picks one at run time (``backends/local/_fmkernel.c``).
"""

import sys

from setuptools import Extension, setup

# no FMA contraction and no fast-math, so the kernels round as the PyTorch steps do and the
# baseline and AVX2 copies agree bit for bit (-fno-trapping-math only lets branches vectorise)
WINDOWS = sys.platform == "win32"
FLAGS = [] if WINDOWS else ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-Wno-psabi"]

setup(
    ext_modules=[
        Extension(
            "backends.local._fmkernel",
            # the SGD / ranking steps; the Gibbs sampler's updates
            ["backends/local/_fmkernel.c", "backends/local/_mcmc.c"],
            depends=["backends/local/_native.h"],
            extra_compile_args=FLAGS,
            libraries=[] if WINDOWS else ["m"],
            py_limited_api=True,
            optional=True,
        )
    ],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
