"""Put the ``scipy-openblas32`` library into the process before ``fastmlp._kernels`` loads.

``_kernels`` names ``libscipy_openblas.so`` as a dependency without a path (see
setup.py): the dynamic loader finds it only if the process already holds it.
``import scipy_openblas32`` loads it with RTLD_GLOBAL, but that package's
``__init__`` also imports ``importlib.metadata`` for its version string (a cost
every run would pay). On Linux this module loads the same file the same way from the
installed package's folder without running its ``__init__``; elsewhere (other
library names, Windows' DLL folders), or if the folder is not as expected, it
imports the package.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

__all__ = ["load"]

_library: ctypes.CDLL | None = None


def load() -> None:
    """Load the library once, with RTLD_GLOBAL.

    Raises
    ------
    ImportError
        Naming the package, when ``scipy-openblas32`` is not installed.
    """
    global _library
    if _library is not None or "scipy_openblas32" in sys.modules:
        return
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None:
        raise ImportError("fastmlp's kernels call the OpenBLAS of the scipy-openblas32 package, which is not "
                          "installed: pip install scipy-openblas32")
    library = _linux_library(spec)
    if library is None:
        import scipy_openblas32  # noqa: F401  (the package finds and loads its library itself)
        return
    _library = ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)


def _linux_library(spec) -> str | None:
    """Path of the one ``libscipy_openblas*.so`` in the package's ``lib`` folder; None off Linux or if not so."""
    folders = list(spec.submodule_search_locations or [])
    if not sys.platform.startswith("linux") or not folders:
        return None
    lib_dir = os.path.join(folders[0], "lib")
    if not os.path.isdir(lib_dir):
        return None
    names = [name for name in os.listdir(lib_dir) if name.startswith("libscipy_openblas") and name.endswith(".so")]
    return os.path.join(lib_dir, names[0]) if len(names) == 1 else None
