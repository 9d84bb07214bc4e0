"""fastmlp: manual-backprop MLPs whose hot kernels are Cython calling BLAS.

The layer API keeps the names and contracts of the classic course skeleton
(``LinearModule``, ``ReLUModule``, ``SoftMaxModule``, ``CrossEntropyModule``,
``MLP`` with ``params``/``grads`` dicts); ``fastmlp.reference`` holds a plain
NumPy version of every kernel for tests and as the benchmark baseline.

Names below are imported on first use, so ``import fastmlp.reference`` (or a
command's ``--help``) does not pay for the layers it does not touch.
"""
import importlib

from fastmlp import _openblas

# The OpenBLAS that fastmlp._kernels is linked against must be in the process before
# _kernels is, whichever submodule imports it first (see setup.py).
_openblas.load()

__all__ = [
    "MLP",
    "MLPClassifier",
    "Predictor",
    "MLPRegressor",
    "CrossEntropyModule",
    "IdentityModule",
    "ImageBatch",
    "LinearModule",
    "ReLUModule",
    "SigmoidModule",
    "SoftMaxModule",
    "SoftmaxCrossEntropyModule",
    "TanhModule",
    "blas_info",
    "export_onnx",
    "get_num_threads",
    "load",
    "optim",
    "reference",
    "save",
    "set_num_threads",
    "threads",
    "__version__",
]

_HOMES = {
    "MLP": "fastmlp.mlp",
    "MLPClassifier": "fastmlp.estimators",
    "Predictor": "fastmlp.modelfile",
    "load": "fastmlp.modelfile",
    "save": "fastmlp.modelfile",
    "export_onnx": "fastmlp.onnx_export",
    "MLPRegressor": "fastmlp.estimators",
    "CrossEntropyModule": "fastmlp.modules",
    "IdentityModule": "fastmlp.modules",
    "ImageBatch": "fastmlp.images",
    "LinearModule": "fastmlp.modules",
    "ReLUModule": "fastmlp.modules",
    "SigmoidModule": "fastmlp.modules",
    "SoftMaxModule": "fastmlp.modules",
    "SoftmaxCrossEntropyModule": "fastmlp.modules",
    "TanhModule": "fastmlp.modules",
    "blas_info": "fastmlp._blas",
    "get_num_threads": "fastmlp._blas",
    "set_num_threads": "fastmlp._blas",
    "threads": "fastmlp._blas",
}


def __getattr__(name):
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    elif name in ("optim", "reference"):
        value = importlib.import_module(f"fastmlp.{name}")
    elif name == "__version__":
        from fastmlp.version import __version__ as value
    else:
        raise AttributeError(f"module 'fastmlp' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
