"""Declares fastmlp's Cython extension; all metadata lives in pyproject.toml.

The kernels call OpenBLAS from the ``scipy-openblas32`` package (headers and
library; the same package at run time). The extension is linked against it by
name without an rpath: at build time the package sits in pip's temporary build
environment, so an rpath would dangle. At run time ``import fastmlp`` first
loads the installed package's library with RTLD_GLOBAL (``fastmlp._openblas``),
and the loader then resolves the extension's dependency to that loaded copy (NumPy's and
SciPy's wheels load their OpenBLAS the same way).
"""
import os

import numpy as np
import scipy_openblas32
from Cython.Build import cythonize
from setuptools import Extension, setup

# -O3 lets gcc vectorise the elementwise loops; -march is left at the default so
# the build runs on any x86-64 (OpenBLAS does its own CPU dispatch). No kernel reads
# errno, and without it a square root is one instruction that vectorises (Adam's update).
extra_compile_args = ["-O3", "-fno-math-errno"] if os.name != "nt" else ["/O2"]

extensions = [
    Extension(
        "fastmlp._kernels",
        ["src/fastmlp/_kernels.pyx"],
        include_dirs=[np.get_include(), scipy_openblas32.get_include_dir(), "src/fastmlp"],
        library_dirs=[scipy_openblas32.get_lib_dir()],
        libraries=[scipy_openblas32.get_library()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        extra_compile_args=extra_compile_args,
        depends=["src/fastmlp/_pool.h", "src/fastmlp/_loops.h", "src/fastmlp/_exp.h", "src/fastmlp/_images_gemm.h",
                 "src/fastmlp/_small_gemm.h", "src/fastmlp/_small_gemm_impl.h"],
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
