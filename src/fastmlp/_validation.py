"""Checks done once at the Python boundary, so that kernels can trust their inputs.

Every error names the argument, what was expected and what was received; as in
:mod:`fastmlp.hyperparams`, a value of the wrong type raises ``TypeError`` and a
value out of range ``ValueError``.
"""
from __future__ import annotations

import numbers
import os

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype if it is float32 or float64, else raise TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


def check_positive_int(name: str, value) -> int:
    """``value`` as an int >= 1: TypeError for a non-integer (1.5, True), ValueError for one < 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def as_float_2d(name: str, x, dtype: np.dtype, width: int | None = None) -> np.ndarray:
    """``x`` as a 2-D array of ``dtype`` (converted once if needed), checking its width.

    C-ordered, Fortran-ordered and singly-strided arrays pass through without a
    copy (the BLAS kernels take them as they are); other dtypes are converted.
    Complex, object and string arrays are refused.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        expect = f"(batch, {width})" if width is not None else "(batch, features)"
        raise ValueError(f"{name}: expected a 2-D array of shape {expect}, got shape {arr.shape}")
    if width is not None and arr.shape[1] != width:
        raise ValueError(f"{name}: expected shape (batch, {width}), got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one row, got shape {arr.shape}")
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr


def as_labels(name: str, y, batch: int, n_classes: int) -> np.ndarray:
    """Integer class indices (batch,) as int64, from indices or one-hot rows.

    One-hot targets (batch, n_classes) must hold exactly one 1 per row; soft
    targets are refused here (``CrossEntropyModule`` takes them).
    """
    arr = np.asarray(y)
    if arr.ndim == 2:
        if arr.shape != (batch, n_classes):
            raise ValueError(f"{name}: expected one-hot shape ({batch}, {n_classes}), got {arr.shape}")
        hot = arr == 1
        if not (np.all(hot | (arr == 0)) and np.all(hot.sum(axis=1) == 1)):
            raise ValueError(f"{name}: 2-D targets must be one-hot (one 1 per row, zeros elsewhere)")
        return np.ascontiguousarray(hot.argmax(axis=1), dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected class indices of shape ({batch},) or one-hot ({batch}, {n_classes}), got shape {arr.shape}")
    if arr.shape[0] != batch:
        raise ValueError(f"{name}: expected {batch} labels (one per row of x), got {arr.shape[0]}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    if arr.dtype != np.int64 or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=np.int64)
    # The fused loss kernel re-checks the range while it reads the labels.
    return arr


def check_param(owner: str, key: str, arr, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A parameter or gradient must keep its shape, dtype and C order (it is updated in place)."""
    if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != dtype or not arr.flags.c_contiguous:
        got = (
            f"{type(arr).__name__}"
            if not isinstance(arr, np.ndarray)
            else f"shape {arr.shape}, dtype {arr.dtype}, {'C-contiguous' if arr.flags.c_contiguous else 'not C-contiguous'}"
        )
        raise ValueError(
            f"{owner}[{key!r}]: expected a C-contiguous {dtype} array of shape {shape}, got {got}"
        )
    if not arr.flags.writeable:
        raise ValueError(f"{owner}[{key!r}]: the array is read-only; parameters are updated in place")
    return arr


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Raise ValueError when ``nbytes`` (what ``what`` would allocate) exceed the machine's memory.

    Called before the allocation, so that a size no machine can hold gets a message
    naming it (``what``: ``"n_hidden [1000000000]: weights and gradients"``) instead of
    a MemoryError from deep inside.
    """
    available = physical_memory()
    if available is not None and nbytes > available:
        raise ValueError(f"{what} need {_gib(nbytes)}, more than the {_gib(available)} of memory this machine has")


def check_network_size(n_inputs: int, widths: list[int], n_classes: int, itemsize: int, *, label: str) -> int:
    """The parameter count of ``n_inputs -> widths -> n_classes``, if its weights and gradients fit in memory.

    ``label`` names the widths in the message (``"n_hidden [1000000000]"``).
    """
    sizes = [n_inputs, *widths, n_classes]
    n_params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
    check_fits_in_memory(2 * n_params * itemsize, f"{label}: {n_params:,} parameters, their weights and gradients,")
    return n_params
