"""fastmlp: manual-backprop MLPs whose hot kernels are Cython calling BLAS.

The layer API keeps the names and contracts of the classic course skeleton
(``LinearModule``, ``ReLUModule``, ``SoftMaxModule``, ``CrossEntropyModule``,
``MLP`` with ``params``/``grads`` dicts); ``fastmlp.reference`` holds a plain
NumPy version of every kernel for tests and as the benchmark baseline.
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("fastmlp")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

from fastmlp._blas import blas_info, get_num_threads, set_num_threads, threads  # noqa: E402
from fastmlp.modules import (  # noqa: E402
    CrossEntropyModule,
    LinearModule,
    ReLUModule,
    SoftmaxCrossEntropyModule,
    SoftMaxModule,
)
from fastmlp.mlp import MLP  # noqa: E402
from fastmlp import optim, reference  # noqa: E402

__all__ = [
    "MLP",
    "MLPClassifier",
    "CrossEntropyModule",
    "LinearModule",
    "ReLUModule",
    "SoftMaxModule",
    "SoftmaxCrossEntropyModule",
    "blas_info",
    "get_num_threads",
    "optim",
    "reference",
    "set_num_threads",
    "threads",
    "__version__",
]


def __getattr__(name):
    # The estimator pulls in the data/CLI layers; load it only when asked for.
    if name == "MLPClassifier":
        from fastmlp.estimator import MLPClassifier

        return MLPClassifier
    raise AttributeError(f"module 'fastmlp' has no attribute {name!r}")
