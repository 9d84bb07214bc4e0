"""fastmlp's own first-layer GEMM on uint8 images against the OpenBLAS path it replaces.

    python benches/images_gemm.py                 # 11 interleaved rounds
    python benches/images_gemm.py --rounds 21

Three operations of the default run, float32, CIFAR-10's width (D = 3072, 100
hidden units), random rows of 50,000 stored images:

- ``forward b200``: a training step's first layer. Hand: ``linear_forward_images``
  with X=None (the converted batch is not kept). OpenBLAS: the same call with the
  hand GEMM off, converting into X inside its chunks (what the backward then read).
- ``update b200``: the first layer's fused SGD update. Hand:
  ``linear_backward_sgd_images`` from the pixels. OpenBLAS: ``linear_backward_sgd``
  on the X converted by the forward (its conversion is counted in the forward).
- ``eval b2500``: one evaluation chunk's first layer, X=None against OpenBLAS
  converting into X.
- ``train_step b200``: the whole ``MLP.train_step`` on an ``ImageBatch`` (3072-100-10).

Each round times every contender on the same batches, alternating, after a settle
pause; the table gives the medians of the per-round times and of the per-round
ratios (OpenBLAS / hand: above 1 means the hand GEMM is faster), and the sgemm
rate of the same round (a 2048^3 GEMM through the same library) for the roofline.
"""
from __future__ import annotations

from _native import machine_line, reexec_native  # noqa: E402  (imports nothing heavy)
from _rounds import rounds_parser, timed  # noqa: E402

if __name__ == "__main__":
    reexec_native()

import statistics
import time

import numpy as np

import fastmlp
from fastmlp import MLP, _kernels as K, optim
from fastmlp.images import ImageBatch

D, O, STORED = 3072, 100, 50_000


def _with_hand(on, fn):
    def run():
        previous = K.images_gemm(on)
        try:
            fn()
        finally:
            K.images_gemm(previous)
    return run


def _cases(rng):
    pixels = rng.integers(0, 256, (STORED, D), dtype=np.uint8)
    offset = (rng.random(D) * 255).astype(np.float32)
    w = (rng.standard_normal((O, D)) / 255).astype(np.float32)
    b = np.zeros(O, np.float32)
    cases = {}
    for name, rows in (("forward b200", 200), ("eval b2500", 2500)):
        index = rng.integers(0, STORED, rows)
        y, x = np.empty((rows, O), np.float32), np.empty((rows, D), np.float32)
        scratch = np.empty((1, max(1, K.forward_scratch_size(rows, D, O))), np.float32)
        cases[name] = (
            _with_hand(True, lambda y=y, i=index, s=scratch: K.linear_forward_images(y, None, pixels, i, offset, None,
                                                                                      w, b, True, s)),
            _with_hand(False, lambda y=y, x=x, i=index, s=scratch: K.linear_forward_images(y, x, pixels, i, offset,
                                                                                            None, w, b, True, s)),
            2 * rows * D * O)
    index = rng.integers(0, STORED, 200)
    x = np.empty((200, D), np.float32)
    K.convert_images(x, pixels, index, offset)
    dy = (rng.standard_normal((200, O)) * 1e-3).astype(np.float32)
    w_hand, w_blas, b_hand, b_blas = w.copy(), w.copy(), b.copy(), b.copy()
    cases["update b200"] = (
        lambda: K.linear_backward_sgd_images(w_hand, b_hand, dy, pixels, index, offset, None, 1e-3),
        lambda: K.linear_backward_sgd(w_blas, b_blas, None, dy, x, 1e-3),
        2 * 200 * D * O)
    models = {on: MLP(D, [O], 10, dtype=np.float32, seed=0) for on in (True, False)}
    opts = {on: optim.SGD(model, 1e-4) for on, model in models.items()}
    labels = rng.integers(0, 10, 200)
    batch = ImageBatch(pixels, index, offset)
    cases["train_step b200"] = (
        _with_hand(True, lambda: models[True].train_step(batch, labels, opts[True])),
        _with_hand(False, lambda: models[False].train_step(batch, labels, opts[False])),
        2 * 2 * 200 * D * O)
    return cases


def _sgemm_rate():
    a = np.ones((2048, 2048), np.float32)
    c = np.empty_like(a)
    K.linear_forward(c, a, a)
    seconds = min(timed(lambda: K.linear_forward(c, a, a), 1) for _ in range(3))
    return 2 * 2048 ** 3 / seconds / 1e9


def main(argv=None):
    parser = rounds_parser(__doc__, rounds=11, settle=0.05)
    parser.add_argument("--calls", type=int, default=40, help="calls per contender per round (eval: a quarter)")
    args = parser.parse_args(argv)
    if not K.images_gemm():
        raise SystemExit("this CPU does not run AVX-512: fastmlp's own images GEMM is off, nothing to compare")
    print(f"machine: {machine_line()}", flush=True)
    cases = _cases(np.random.default_rng(0))
    times = {name: ([], []) for name in cases}
    rates = []
    for _ in range(args.rounds):
        rates.append(_sgemm_rate())
        for name, (hand, blas, _) in cases.items():
            calls = max(1, args.calls // 4) if "eval" in name else args.calls
            for fn, out in ((hand, times[name][0]), (blas, times[name][1])):
                fn()
                time.sleep(args.settle)
                out.append(timed(fn, calls))
    rate = statistics.median(rates)
    print(f"{args.rounds} rounds, {fastmlp.get_num_threads()} threads, sgemm 2048^3 {rate:.0f} GFLOP/s (median)\n")
    print("| operation | hand | OpenBLAS path | OpenBLAS / hand | hand / roofline |")
    print("| --- | --- | --- | --- | --- |")
    for name, (hand, blas) in times.items():
        ratio = statistics.median(b / h for h, b in zip(hand, blas))
        roof = statistics.median(h * r * 1e9 / cases[name][2] for h, r in zip(hand, rates))
        print(f"| {name} | {1e3 * statistics.median(hand):.3f} ms | {1e3 * statistics.median(blas):.3f} ms | "
              f"{ratio:.2f}x | {roof:.2f}x |")


if __name__ == "__main__":
    main()
