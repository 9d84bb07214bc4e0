"""Central finite differences shared by the gradient-check tests (float64)."""
from __future__ import annotations

import numpy as np


def numerical_gradient(f, x, h=1e-6):
    """Central differences of the scalar f() with respect to every entry of ``x`` (perturbed in place)."""
    grad = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        old = x[idx]
        x[idx] = old + h
        f_plus = f()
        x[idx] = old - h
        f_minus = f()
        x[idx] = old
        grad[idx] = (f_plus - f_minus) / (2 * h)
    return grad


def assert_gradient_close(analytic, numeric, name=""):
    """Relative error (norm of the difference over the sum of norms) below 1e-6, and entrywise agreement."""
    analytic, numeric = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    assert analytic.shape == numeric.shape
    denom = max(np.linalg.norm(analytic) + np.linalg.norm(numeric), 1e-12)
    rel = np.linalg.norm(analytic - numeric) / denom
    assert rel < 1e-6, f"{name}: relative error {rel:.2e}"
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8, err_msg=name)
