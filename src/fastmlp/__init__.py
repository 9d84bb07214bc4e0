"""fastmlp: manual-backprop MLPs whose hot kernels are Cython calling BLAS.

The layer API keeps the names and contracts of the classic course skeleton
(``LinearModule``, ``ReLUModule``, ``SoftMaxModule``, ``CrossEntropyModule``,
``MLP`` with ``params``/``grads`` dicts); ``fastmlp.reference`` holds a plain
NumPy version of every kernel for tests and as the benchmark baseline.
"""
from fastmlp.version import __version__

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
    "optim",
    "reference",
    "__version__",
]


def __getattr__(name):
    # The estimator pulls in the data and training layers; load it only when asked for.
    if name == "MLPClassifier":
        from fastmlp.estimator import MLPClassifier

        return MLPClassifier
    raise AttributeError(f"module 'fastmlp' has no attribute {name!r}")
