"""Declares fastmlp's Cython extension; all metadata lives in pyproject.toml."""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

# -O3 lets gcc vectorise the elementwise loops; -march is left at the default so
# the wheel runs on any x86-64 (BLAS does its own CPU dispatch).
extra_compile_args = ["-O3"] if os.name != "nt" else ["/O2"]

extensions = [
    Extension(
        "fastmlp._kernels",
        ["src/fastmlp/_kernels.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        extra_compile_args=extra_compile_args,
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "nonecheck": False,
        },
    ),
)
