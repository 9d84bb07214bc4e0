"""The kernels' thread control and the BLAS they call (the library itself is loaded by ``import fastmlp``).

``_kernels`` names ``libscipy_openblas.so`` as a dependency without a path (see
setup.py); ``import fastmlp`` has already put that library in the process with
RTLD_GLOBAL (:mod:`fastmlp._openblas`), so the dynamic loader finds it there.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from fastmlp import _kernels  # after fastmlp/__init__.py has loaded the library

__all__ = ["blas_info", "get_num_threads", "set_num_threads", "threads"]


def get_num_threads() -> int:
    """Threads fastmlp's kernels use (OpenBLAS's setting of ``scipy_openblas32``; threadpoolctl sees it)."""
    return _kernels.get_num_threads()


def set_num_threads(n: int) -> None:
    """Make every later kernel call use ``n`` threads (an int >= 1).

    This is the thread count of the ``scipy_openblas32`` OpenBLAS, the library
    the kernels call, so ``threadpoolctl.threadpool_limits(n, user_api="blas")``
    does the same. NumPy's and PyTorch's own thread pools are not affected.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int number of threads, got {n!r}")
    _kernels.set_num_threads(n)


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Within the block, fastmlp's kernels use ``n`` threads (``None``: leave the setting as it is)."""
    if n is None:
        yield
        return
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


def blas_info() -> dict[str, str | int | None]:
    """Which BLAS the kernels really call: ``library`` (file of the ``sgemm`` symbol they resolved),
    ``config`` (OpenBLAS's build string), ``num_threads``."""
    library, config = _kernels.blas_library()
    return {"library": library, "config": config, "num_threads": get_num_threads()}
