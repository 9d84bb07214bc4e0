"""fastmlp's own AVX-512 GEMM for a first layer fed uint8 images (``src/fastmlp/_images_gemm.h``).

It sums in another order than OpenBLAS, so its results are checked against float64
NumPy within float32 rounding (relative to the sum of the terms' magnitudes), its
converted batch bit for bit against ``convert_images``, and its cuts (rows, inner
halves, columns) for bit-identical results whatever the thread count. The shapes
cross every edge of its blocking: rows around the 12-row tile, inner sizes around
the 256-value block and the 16-lane vector, outputs around the 16-wide panel, the
4-wide xmm tail and the 128-feature block.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest

import fastmlp
from fastmlp import _kernels as K
from fastmlp import optim
from fastmlp import reference as R
from fastmlp.images import ImageBatch
from fastmlp.mlp import MLP

pytestmark = pytest.mark.skipif(not K.images_gemm(), reason="this CPU does not run AVX-512: OpenBLAS does the work")

# float32 rounding of a sum, relative to the sum of its terms' magnitudes (OpenBLAS reaches ~3e-7 here).
REL = 2e-6


@pytest.fixture
def threads():
    before = fastmlp.get_num_threads()
    yield fastmlp.set_num_threads
    fastmlp.set_num_threads(before)


def _images(rng, B, D, variant):
    """(src, index, offset, scale) for B rows of D pixels; variant picks rows/index, scale, src layout."""
    wide = rng.integers(0, 256, (2 * B + 3, D + 5), dtype=np.uint8)
    src = wide[:, :D] if "strided" in variant else np.ascontiguousarray(wide[:, :D])
    index = None if "rows" in variant else rng.integers(0, len(src), B).astype(np.int64)
    offset = (rng.random(D) * 255).astype(np.float32)
    scale = (rng.random(D) + 0.5).astype(np.float32) if "scale" in variant else None
    return src, index, offset, scale


def _converted(src, index, offset, scale, B):
    return R.convert_images(src if index is not None else src[:B], index, offset, scale)


def _assert_close(got, exact, magnitude):
    err = np.abs(got.astype(np.float64) - exact) / np.maximum(magnitude, 1e-30)
    assert err.max() < REL, f"largest relative error {err.max():.3g}"


# (B, D, O): the course's step and evaluation chunk, then the blocking's edges.
FORWARD_SHAPES = [(200, 3072, 100), (2500, 3072, 100), (33, 1, 1), (35, 15, 3), (37, 16, 4), (45, 17, 5),
                  (47, 255, 16), (64, 256, 17), (71, 257, 20), (100, 600, 129), (40, 513, 300)]


@pytest.mark.parametrize("variant", ["index", "rows+scale", "strided+index+scale"])
@pytest.mark.parametrize("shape", FORWARD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_against_float64(shape, variant, threads):
    B, D, O = shape
    rng = np.random.default_rng(B + 7 * D + O)
    src, index, offset, scale = _images(rng, B, D, variant)
    w = (rng.standard_normal((O, D)) / 16).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    x_exact = _converted(src, index, offset, scale, B)
    exact = x_exact.astype(np.float64) @ w.T.astype(np.float64) + b
    magnitude = np.abs(x_exact.astype(np.float64)) @ np.abs(w.T.astype(np.float64)) + np.abs(b)
    scratch = np.full((1, max(1, K.forward_scratch_size(B, D, O))), np.nan, np.float32)
    first = None
    for n in (1, 2, 3):
        threads(n)
        x, y = np.full((B, D), np.nan, np.float32), np.full((B, O), np.nan, np.float32)
        K.linear_forward_images(y, x, src, index, offset, scale, w, b, False, scratch)
        np.testing.assert_array_equal(x, x_exact)  # the panels' conversion, kept for the backward pass
        _assert_close(y, exact, magnitude)
        y_only = np.full((B, O), np.nan, np.float32)
        K.linear_forward_images(y_only, None, src, index, offset, scale, w, b, False, scratch)
        np.testing.assert_array_equal(y_only, y)  # not keeping X changes nothing
        if first is None:
            first = y
        np.testing.assert_array_equal(y, first)  # the cuts do not move the sums


def test_forward_relu_and_no_scratch_match_the_openblas_path():
    rng = np.random.default_rng(3)
    src, index, offset, scale = _images(rng, 200, 3072, "index")
    w = (rng.standard_normal((100, 3072)) / 255).astype(np.float32)
    b = rng.standard_normal(100).astype(np.float32)
    y = np.empty((200, 100), np.float32)
    K.linear_forward_images(y, None, src, index, offset, scale, w, b, True)  # K-split: allocates its partial sums
    previous = K.images_gemm(False)
    try:
        y_blas = np.empty_like(y)
        K.linear_forward_images(y_blas, None, src, index, offset, scale, w, b, True)
    finally:
        K.images_gemm(previous)
    assert (y >= 0).all() and ((y == 0) == (y_blas == 0)).mean() > 0.99
    np.testing.assert_allclose(y, y_blas, rtol=1e-4, atol=1e-4)


def test_w_given_column_major_takes_openblas_and_x_none_still_works():
    rng = np.random.default_rng(4)
    src, index, offset, scale = _images(rng, 64, 300, "index")
    w = np.asfortranarray((rng.standard_normal((40, 300)) / 16).astype(np.float32))
    assert K.forward_images_needs_x(64, np.float32) is False  # would run the hand GEMM for a C-ordered W
    y, y_kept, x = np.empty((64, 40), np.float32), np.empty((64, 40), np.float32), np.empty((64, 300), np.float32)
    K.linear_forward_images(y, None, src, index, offset, scale, w)  # converts into a temporary array
    K.linear_forward_images(y_kept, x, src, index, offset, scale, w)
    np.testing.assert_array_equal(y, y_kept)


@pytest.mark.parametrize("hand", [True, False])
def test_without_x_the_rows_are_named_after_y(hand):
    src, w = np.zeros((40, 8), np.uint8), np.zeros((3, 8), np.float32)
    previous = K.images_gemm(hand)
    try:
        with pytest.raises(ValueError, match=r"^Y: expected at most 40 rows \(src has that many\), got 50"):
            K.linear_forward_images(np.empty((50, 3), np.float32), None, src, None, np.zeros(8, np.float32), None, w)
    finally:
        K.images_gemm(previous)


def test_small_batches_and_float64_keep_the_openblas_path():
    assert K.forward_images_needs_x(K.SMALL_BATCH, np.float32)
    assert K.forward_images_needs_x(K.SMALL_BATCH + 1, np.float64)
    assert not K.forward_images_needs_x(K.SMALL_BATCH + 1, np.float32)
    previous = K.images_gemm(False)
    try:
        assert K.forward_images_needs_x(K.SMALL_BATCH + 1, np.float32)
    finally:
        K.images_gemm(previous)


def test_images_gemm_switch_returns_the_previous_setting():
    assert K.images_gemm() is True
    assert K.images_gemm(False) is True
    assert K.images_gemm() is False
    assert K.images_gemm(True) is False
    assert K.images_gemm() is True


# (B, D, O) for the weight update: the course's step, then the tile and block edges.
UPDATE_SHAPES = [(200, 3072, 100), (33, 70, 5), (300, 257, 17), (40, 33, 129), (600, 100, 12), (45, 16, 10),
                 (35, 1, 3), (257, 160, 21)]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("variant", ["index", "rows+scale", "strided+index+scale"])
@pytest.mark.parametrize("shape", UPDATE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sgd_update_against_float64(shape, variant, weight_decay, threads):
    B, D, O = shape
    rng = np.random.default_rng(B + 11 * D + O)
    src, index, offset, scale = _images(rng, B, D, variant)
    w0 = rng.standard_normal((O, D)).astype(np.float32)
    b0 = rng.standard_normal(O).astype(np.float32)
    dy = rng.standard_normal((B, O)).astype(np.float32)
    lr = 0.01
    rows = src if index is not None else src[:B]
    x = _converted(src, index, offset, scale, B).astype(np.float64)
    exact, _ = R.linear_backward_sgd_images(w0.astype(np.float64), b0, dy.astype(np.float64), rows, index,
                                            offset.astype(np.float64), scale if scale is None else scale.astype(np.float64),
                                            lr, weight_decay)
    magnitude = np.abs(w0) + lr * np.abs(dy.astype(np.float64)).T @ np.abs(x)
    b_expected = b0.copy()
    K.linear_backward_sgd(np.zeros((O, 1), np.float32), b_expected, None, dy, np.zeros((B, 1), np.float32), lr)
    first = None
    for n in (1, 2, 3):
        threads(n)
        w, b = w0.copy(), b0.copy()
        K.linear_backward_sgd_images(w, b, dy, src, index, offset, scale, lr, weight_decay)
        _assert_close(w, exact, magnitude)
        np.testing.assert_array_equal(b, b_expected)  # the bias update is linear_backward_sgd's own
        if first is None:
            first = w
        np.testing.assert_array_equal(w, first)


def test_sgd_update_with_zero_beta_ignores_old_weights():
    # lr * weight_decay == 1 makes beta 0: NaN in the old weights must not leak into the new ones.
    rng = np.random.default_rng(5)
    src, index, offset, scale = _images(rng, 64, 96, "index")
    w, b = np.full((10, 96), np.nan, np.float32), np.zeros(10, np.float32)
    dy = rng.standard_normal((64, 10)).astype(np.float32)
    K.linear_backward_sgd_images(w, b, dy, src, index, offset, scale, 0.5, 2.0)
    x = _converted(src, index, offset, scale, 64).astype(np.float64)
    np.testing.assert_allclose(w, -0.5 * dy.astype(np.float64).T @ x, rtol=1e-5, atol=1e-3)


def test_sgd_update_off_the_hand_path_equals_converting_first(openblas_images):
    rng = np.random.default_rng(6)
    src, index, offset, scale = _images(rng, 200, 300, "index+scale")
    w0, b0 = rng.standard_normal((20, 300)).astype(np.float32), rng.standard_normal(20).astype(np.float32)
    dy = rng.standard_normal((200, 20)).astype(np.float32)
    w1, b1, w2, b2 = w0.copy(), b0.copy(), w0.copy(), b0.copy()
    K.linear_backward_sgd_images(w1, b1, dy, src, index, offset, scale, 0.1, 0.01)
    K.linear_backward_sgd(w2, b2, None, dy, _converted(src, index, offset, scale, 200), 0.1, 0.01)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(b1, b2)


def _u8():
    return np.zeros((5, 3), np.uint8)


@pytest.mark.parametrize("name,call", [
    ("W", lambda: K.linear_backward_sgd_images(np.zeros((2, 4), np.float32), np.zeros(2, np.float32),
                                               np.zeros((3, 2), np.float32), _u8(), None,
                                               np.zeros(3, np.float32), None, 0.1)),
    ("b", lambda: K.linear_backward_sgd_images(np.zeros((2, 3), np.float32), np.zeros(3, np.float32),
                                               np.zeros((3, 2), np.float32), _u8(), None,
                                               np.zeros(3, np.float32), None, 0.1)),
    ("offset", lambda: K.linear_backward_sgd_images(np.zeros((2, 3), np.float32), np.zeros(2, np.float32),
                                                    np.zeros((3, 2), np.float32), _u8(), None,
                                                    np.zeros(4, np.float32), None, 0.1)),
    ("index", lambda: K.linear_backward_sgd_images(np.zeros((2, 3), np.float32), np.zeros(2, np.float32),
                                                   np.zeros((3, 2), np.float32), _u8(), np.zeros(2, np.int64),
                                                   np.zeros(3, np.float32), None, 0.1)),
    ("dY", lambda: K.linear_backward_sgd_images(np.zeros((2, 3), np.float32), np.zeros(2, np.float32),
                                               np.zeros((9, 2), np.float32), _u8(), None,
                                               np.zeros(3, np.float32), None, 0.1)),
], ids=["W", "b", "offset", "index", "rows"])
def test_sgd_update_names_the_misshapen_argument(name, call):
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        call()


def test_sgd_update_refuses_rows_outside_the_source_before_writing():
    w = np.full((2, 3), 7.0, np.float32)
    with pytest.raises(ValueError, match=r"index: expected row numbers in \[0, 5\), got 9 at position 1"):
        K.linear_backward_sgd_images(w, np.zeros(2, np.float32), np.zeros((2, 2), np.float32), _u8(),
                                     np.array([0, 9]), np.zeros(3, np.float32), None, 0.1)
    assert (w == 7).all()


# ----------------------------------------------------------------------------- through the MLP


def test_train_step_on_images_stays_within_rounding_of_the_float_path():
    # Fused SGD on an ImageBatch: forward and update from the pixels, no converted batch kept.
    rng = np.random.default_rng(8)
    pixels = rng.integers(0, 256, (500, 300), dtype=np.uint8)
    offset = (rng.random(300) * 255).astype(np.float32)
    runs = []
    for as_images in (True, False):
        model = MLP(300, [40], 10, dtype=np.float32, seed=1)
        opt = optim.SGD(model, 1e-3)
        data_rng = np.random.default_rng(9)
        losses = []
        for _ in range(5):
            images = ImageBatch(pixels, data_rng.integers(0, 500, 64), offset)
            losses.append(model.train_step(images if as_images else images.to_array(), data_rng.integers(0, 10, 64),
                                           opt).loss)
        runs.append((losses, model.state_dict()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for name, value in runs[1][1].items():
        np.testing.assert_allclose(runs[0][1][name], value, rtol=1e-4, atol=1e-6)
    assert model._step_buffers.sets  # train_step's own buffer sets
    assert not any(b.images is not None for b in model._step_buffers.sets.values())  # no converted batch was ever made


def test_evaluating_image_batches_matches_the_converted_batches(synthetic_cifar_dir):
    from fastmlp.data import get_cifar10

    test = get_cifar10(synthetic_cifar_dir, one_hot=False, flatten=True, seed=0)["test"]
    model = MLP(3072, [50], 10, dtype=np.float32, seed=2)
    loss_images, acc_images = model.evaluate_batches(test.image_batches(40))
    loss_floats, acc_floats = model.evaluate_batches(test.batches(40))
    assert loss_images == pytest.approx(loss_floats, rel=1e-5) and abs(acc_images - acc_floats) <= 1 / len(test.labels)
    assert not any(b.images is not None for sets in model._buffers.idle.values() for b in sets)  # evaluation chunks above SMALL_BATCH rows keep no converted rows
    previous = K.images_gemm(False)
    try:
        assert model.evaluate_batches(test.image_batches(40)) == (loss_floats, acc_floats)  # OpenBLAS: same numbers
    finally:
        K.images_gemm(previous)


def test_trainer_evaluates_uint8_rows(synthetic_cifar_dir, tmp_path, monkeypatch):
    from fastmlp import train as fm_train
    from fastmlp.data import DataSet, get_cifar10

    data = get_cifar10(synthetic_cifar_dir, one_hot=False, flatten=True, seed=0)
    asked = []
    image_batches = DataSet.image_batches
    monkeypatch.setattr(DataSet, "image_batches", lambda self, *a, **k: asked.append(a) or image_batches(self, *a, **k))
    args = argparse.Namespace(max_steps=4, eval_freq=2, batch_size=64, dnn_hidden_units=[20], quiet=True,
                              out_dir=str(tmp_path))
    metrics = fm_train.train(args, data={"train": data["train"], "test": data["test"]})
    assert asked and all(a == (2500,) for a in asked)  # every evaluation took uint8 chunks
    assert 0 <= metrics["test_accuracy"] <= 1
