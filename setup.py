"""Build the optional fused FM training kernel; everything else is in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and the local
backend trains with its pure-PyTorch step (``backends.local.fm``), which computes the same thing.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "backends.local._fmkernel",
            ["backends/local/_fmkernel.c"],
            # no FMA contraction and no fast-math, so the kernel rounds as the torch step does
            extra_compile_args=["-O3", "-fno-math-errno", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
