"""The one training step each contender runs, built on identical shapes, data and initial weights.

Used by bench_train_step.py and by report.py (which prints the ratios). Shapes:
B batch, D=3072 inputs, C=10 classes.
"""
from __future__ import annotations

import numpy as np

from fastmlp import MLP, optim
from fastmlp.reference import ReferenceMLP

# (name, hidden widths, batch size): the benchmark points.
CONFIGS = [
    ("3072-100-10 b1", [100], 1),
    ("3072-100-10 b32", [100], 32),
    ("3072-100-10 b200", [100], 200),
    ("3072-1024-512-256-128-10 b600", [1024, 512, 256, 128], 600),
]
N_INPUTS, N_CLASSES = 3072, 10
LR = 1e-4  # small: thousands of timed steps must not diverge


def step_flops(hidden, batch, n_inputs=N_INPUTS, n_classes=N_CLASSES):
    """FLOPs of one SGD step: 2*B*I*O per GEMM; forward, dW, and dX for every layer but the first."""
    sizes = [n_inputs, *hidden, n_classes]
    pairs = list(zip(sizes[:-1], sizes[1:]))
    return sum(2 * batch * i * o * (3 if l > 0 else 2) for l, (i, o) in enumerate(pairs))


def make_batch(batch, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, N_INPUTS)).astype(dtype)
    y = rng.integers(0, N_CLASSES, batch).astype(np.int64)
    return x, y


def fastmlp_step(hidden, batch):
    model = MLP(N_INPUTS, hidden, N_CLASSES, dtype=np.float32, seed=0, init="kaiming")
    opt = optim.SGD(model, LR)
    x, y = make_batch(batch)
    return lambda: model.train_step(x, y, opt)


def numpy_step(hidden, batch):
    ref = ReferenceMLP(N_INPUTS, hidden, N_CLASSES, dtype=np.float32)
    twin = MLP(N_INPUTS, hidden, N_CLASSES, dtype=np.float32, seed=0, init="kaiming")
    ref.weights = [lin.params["weight"].copy() for lin in twin.linears]
    ref.biases = [lin.params["bias"].copy() for lin in twin.linears]
    x, y = make_batch(batch)
    return lambda: ref.train_step(x, y, LR)


def torch_step(hidden, batch):
    import torch

    twin = MLP(N_INPUTS, hidden, N_CLASSES, dtype=np.float32, seed=0, init="kaiming")
    layers = []
    for lin in twin.linears:
        layer = torch.nn.Linear(lin.in_features, lin.out_features)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(lin.params["weight"]))
            layer.bias.zero_()
        layers += [layer, torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    x, y = make_batch(batch)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def sgemm_call(n=2048):
    """C = A B for n x n float32 matrices through the OpenBLAS fastmlp's kernels call, on its own threads.

    Returns (call, flops). The roofline of a step is its GEMM FLOPs over this rate.
    The call goes straight to ``scipy_cblas_sgemm`` (ctypes), so OpenBLAS splits it
    over its own pool as it would for any caller.
    """
    import ctypes

    import fastmlp  # noqa: F401  (loads the library)
    import scipy_openblas32

    lib = ctypes.CDLL(f"{scipy_openblas32.get_lib_dir()}/{scipy_openblas32.get_library(fullname=True)}")
    gemm = lib.scipy_cblas_sgemm
    ptr, i32, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    gemm.argtypes = [i32, i32, i32, i32, i32, i32, f32, ptr, i32, ptr, i32, f32, ptr, i32]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.zeros((n, n), dtype=np.float32)
    row_major, no_trans = 101, 111

    def call():
        gemm(row_major, no_trans, no_trans, n, n, n, 1.0, a.ctypes.data, n, b.ctypes.data, n, 0.0, c.ctypes.data, n)
        return c

    return call, 2 * n**3
