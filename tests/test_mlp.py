"""fastmlp.MLP: the course path's gradients, the fused ``train_step`` against the course path and
against ``fastmlp.reference``, evaluation, (de)serialisation, buffers, dtypes and input checking."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from _gradcheck import assert_gradient_close, numerical_gradient

from fastmlp import MLP, CrossEntropyModule
from fastmlp.mlp import StepResult
from fastmlp import optim
from fastmlp import reference as R
from fastmlp.images import ImageBatch

DTYPES = (np.float32, np.float64)
# Several steps through a whole network: looser than a single kernel call.
STEP_TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-9, atol=1e-12)}

# name -> (optimizer factory, reference kind and hyperparameters)
OPTIMIZERS = {
    "sgd": (lambda m, wd: optim.SGD(m, 0.1, weight_decay=wd), ("sgd", dict(lr=0.1, momentum=0.0, nesterov=False))),
    "momentum": (lambda m, wd: optim.SGD(m, 0.05, momentum=0.9, weight_decay=wd),
                 ("sgd", dict(lr=0.05, momentum=0.9, nesterov=False))),
    "nesterov": (lambda m, wd: optim.SGD(m, 0.05, momentum=0.8, nesterov=True, weight_decay=wd),
                 ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True))),
    "adam": (lambda m, wd: optim.Adam(m, 1e-2, betas=(0.8, 0.99), eps=1e-7, weight_decay=wd),
             ("adam", dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-7))),
}


def make_data(rng, n, d, c, dtype=np.float64):
    return rng.standard_normal((n, d)).astype(dtype), rng.integers(0, c, size=n)


def reference_from(model):
    """A ReferenceMLP holding float64 copies of ``model``'s parameters."""
    ref = R.ReferenceMLP(model.n_inputs, model.n_hidden, model.n_classes)
    ref.weights = [lin.params["weight"].astype(np.float64) for lin in model.linears]
    ref.biases = [lin.params["bias"].astype(np.float64) for lin in model.linears]
    return ref


class ReferenceTrainer:
    """ReferenceMLP gradients + reference.sgd_update/adam_update (weight decay on weights only)."""

    def __init__(self, ref, kind, hyper, weight_decay):
        self.ref, self.kind, self.hyper, self.wd = ref, kind, hyper, weight_decay
        params = [p for pair in zip(ref.weights, ref.biases) for p in pair]
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, x, labels):
        loss, dz = R.softmax_cross_entropy(self.ref.logits(x), labels)
        grads = [g for pair in self.ref.gradients(dz) for g in pair]
        params = [p for pair in zip(self.ref.weights, self.ref.biases) for p in pair]
        self.t += 1
        for k, (p, g) in enumerate(zip(params, grads)):
            wd = self.wd if k % 2 == 0 else 0.0
            if self.kind == "sgd":
                v = self.v[k] if self.hyper["momentum"] else None
                R.sgd_update(p, g, v, weight_decay=wd, **self.hyper)
            else:
                R.adam_update(p, g, self.m[k], self.v[k], weight_decay=wd, step=self.t, **self.hyper)
        return loss


def course_step(model, optimizer, x, y):
    """The course loop: forward -> CrossEntropyModule -> backward -> optimizer.step(). Returns the loss."""
    ce = CrossEntropyModule()
    probs = model.forward(x)
    loss = ce.forward(probs, y)
    model.backward(ce.backward(probs, y))
    optimizer.step()
    return loss


def assert_params_close(model, ref_weights, ref_biases, tol):
    for lin, w, b in zip(model.linears, ref_weights, ref_biases):
        np.testing.assert_allclose(lin.params["weight"], w, **tol)
        np.testing.assert_allclose(lin.params["bias"], b, **tol)


# ----------------------------------------------------------------------------- gradients of the course path


def test_course_path_gradients_finite_difference():
    rng = np.random.default_rng(0)
    model = MLP(7, [5, 4], 3, seed=0, init="kaiming")
    for lin in model.linears:  # non-zero biases so their gradients are exercised away from 0
        lin.params["bias"][...] = 0.1 * rng.standard_normal(lin.out_features)
    x = rng.standard_normal((4, 7))
    y = np.eye(3)[rng.integers(0, 3, size=4)]
    ce = CrossEntropyModule()

    def loss():
        return ce.forward(model.forward(x), y)

    probs = model.forward(x)
    model.backward(ce.backward(probs, y))
    for name, module, key in model.named_parameters():
        analytic = module.grads[key].copy()
        # perturbed in place: forward must read the parameter live
        assert_gradient_close(analytic, numerical_gradient(loss, module.params[key]), name)
        assert np.any(analytic != 0), name  # kaiming init: the ReLUs pass gradient


# ----------------------------------------------------------------------------- train_step against the course path and the reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("n_hidden", [[7, 5], []], ids=["7-5", "logistic"])
def test_train_step_matches_course_path_and_reference(dtype, opt_name, weight_decay, n_hidden):
    rng = np.random.default_rng(1)
    make_opt, (kind, hyper) = OPTIMIZERS[opt_name]
    fast = MLP(9, n_hidden, 3, dtype=dtype, seed=3, init="kaiming")
    course = MLP(9, n_hidden, 3, dtype=dtype, seed=3, init="kaiming")
    trainer = ReferenceTrainer(reference_from(fast), kind, hyper, weight_decay)
    fast_opt, course_opt = make_opt(fast, weight_decay), make_opt(course, weight_decay)
    assert fast_opt.keeps_inputs() == (opt_name != "sgd")  # plain SGD updates inside the backward GEMMs
    for _ in range(5):
        x, y = make_data(rng, 6, 9, 3, dtype)
        ref_loss = trainer.step(x.astype(np.float64), y)
        fast_loss, _ = fast.train_step(x, y, fast_opt)
        course_loss = course_step(course, course_opt, x, y)
        assert isinstance(fast_loss, float)
        np.testing.assert_allclose(fast_loss, ref_loss, **STEP_TOL[dtype])
        np.testing.assert_allclose(course_loss, ref_loss, **STEP_TOL[dtype])
    for model in (fast, course):
        assert all(lin.params["weight"].dtype == dtype for lin in model.linears)
        assert_params_close(model, trainer.ref.weights, trainer.ref.biases, STEP_TOL[dtype])
    # The run moved the parameters (the comparison above is not between untouched copies).
    start = MLP(9, n_hidden, 3, seed=3, init="kaiming").linears[0].params["weight"]
    assert not np.allclose(fast.linears[0].params["weight"], start)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("n_hidden", [[], [6], [8, 5, 4]])
def test_train_step_matches_reference_mlp(dtype, weight_decay, n_hidden):
    rng = np.random.default_rng(2)
    model = MLP(10, n_hidden, 4, dtype=dtype, seed=5, init="kaiming")
    ref = reference_from(model)
    opt = optim.SGD(model, 0.2, weight_decay=weight_decay)
    for _ in range(4):
        x, y = make_data(rng, 8, 10, 4, dtype)
        ref_loss = ref.train_step(x.astype(np.float64), y, 0.2, weight_decay)
        np.testing.assert_allclose(model.train_step(x, y, opt).loss, ref_loss, **STEP_TOL[dtype])
    assert_params_close(model, ref.weights, ref.biases, STEP_TOL[dtype])
    assert len(model.layers) == 2 * len(n_hidden) + 2


def test_train_step_realistic_size_against_reference():
    # The CIFAR-10 shape of the course: 3072-100-10, float32, a batch of 200.
    rng = np.random.default_rng(3)
    model = MLP(3072, [100], 10, dtype=np.float32, seed=0, init="kaiming")
    ref = reference_from(model)
    opt = optim.SGD(model, 0.01, weight_decay=1e-3)
    for _ in range(3):
        x, y = make_data(rng, 200, 3072, 10, np.float32)
        ref_loss = ref.train_step(x.astype(np.float64), y, 0.01, 1e-3)
        np.testing.assert_allclose(model.train_step(x, y, opt).loss, ref_loss, rtol=1e-4)
    assert_params_close(model, ref.weights, ref.biases, dict(rtol=1e-3, atol=1e-5))


def test_train_step_one_hot_and_int_labels_agree():
    rng = np.random.default_rng(4)
    x, y = make_data(rng, 5, 6, 3)
    a, b = MLP(6, [4], 3, seed=1, init="kaiming"), MLP(6, [4], 3, seed=1, init="kaiming")
    loss_a = a.train_step(x, y, optim.SGD(a, 0.1))
    loss_b = b.train_step(x, np.eye(3)[y], optim.SGD(b, 0.1))
    assert loss_a == loss_b
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[key])


def test_train_step_uses_the_rate_passed_in():
    # lr=0 leaves every parameter as it was; without lr the optimizer's own rate applies.
    rng = np.random.default_rng(5)
    x, y = make_data(rng, 4, 5, 3)
    for make in (lambda m: optim.SGD(m, 0.1), lambda m: optim.Adam(m, 0.1)):
        model = MLP(5, [4], 3, seed=0, init="kaiming")
        before = model.state_dict()
        opt = make(model)
        model.train_step(x, y, opt, lr=0.0)
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(value, before[key])
        model.train_step(x, y, opt)
        assert not np.array_equal(model.linears[0].params["weight"], before["layers.0.weight"])
        assert opt.lr == 0.1  # nothing was assigned to it


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("lr", [0.3, 1e-3])
def test_train_step_rate_matches_numpy_twin(opt_name, lr):
    # float64: the rate passed in is the one the update used, as reference.py's twins compute it.
    rng = np.random.default_rng(16)
    model = MLP(6, [5], 3, seed=2, init="kaiming")
    opt = optim.SGD(model, 0.05) if opt_name == "sgd" else optim.Adam(model, 0.05, betas=(0.8, 0.9), eps=1e-7)
    ref = reference_from(model)
    hyper = dict(lr=lr, momentum=0.0, nesterov=False) if opt_name == "sgd" else dict(lr=lr, beta1=0.8, beta2=0.9,
                                                                                      eps=1e-7)
    trainer = ReferenceTrainer(ref, opt_name, hyper, 0.0)
    for _ in range(3):
        x, y = make_data(rng, 7, 6, 3)
        ref_loss = trainer.step(x, y)
        np.testing.assert_allclose(model.train_step(x, y, opt, lr=lr).loss, ref_loss, rtol=1e-12)
    assert_params_close(model, ref.weights, ref.biases, dict(rtol=1e-10, atol=1e-13))


@pytest.mark.parametrize("output, n_outputs", [("softmax", 3), ("logistic", 3), ("identity", 2)])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_train_step_returns_loss_and_correct_of_the_batch_before_the_update(output, n_outputs, opt_name):
    rng = np.random.default_rng(6)
    model = MLP(5, [4], n_outputs, seed=0, init="kaiming", output=output)
    opt = optim.make_optimizer(opt_name, model, 0.5)
    for _ in range(3):
        x = rng.standard_normal((9, 5))
        y = rng.integers(0, 3, 9) if output == "softmax" else (rng.random((9, n_outputs)) > 0.5).astype(float)
        expected_loss, accuracy = model.evaluate(x, y)  # a separate evaluation, before the update
        result = model.train_step(x, y, opt)
        assert isinstance(result, StepResult) and isinstance(result.correct, int)
        np.testing.assert_allclose(result.loss, expected_loss, rtol=1e-12)
        assert result.correct == (0 if output == "identity" else round(accuracy * 9))
    assert not hasattr(model, "last_batch_correct")


class OnlyTheProtocol:
    """An optimizer with nothing but the documented update methods: reading any other attribute fails."""

    def __init__(self, model):
        object.__setattr__(self, "_inner", optim.SGD(model, 0.1, momentum=0.5))
        object.__setattr__(self, "_calls", [])

    def __getattribute__(self, name):
        if name not in ("begin_step", "keeps_inputs", "update_layer", "_inner", "_calls", "__class__"):
            raise AssertionError(f"the model read optimizer.{name}")
        return object.__getattribute__(self, name)

    def begin_step(self, model, lr=None):
        self._calls.append("begin_step")
        return self._inner.begin_step(model, lr)

    def keeps_inputs(self):
        return self._inner.keeps_inputs()

    def update_layer(self, *args):
        self._calls.append("update_layer")
        self._inner.update_layer(*args)


def test_mlp_reads_no_optimizer_attribute():
    rng = np.random.default_rng(17)
    model, twin = MLP(5, [4, 3], 3, seed=0, init="kaiming"), MLP(5, [4, 3], 3, seed=0, init="kaiming")
    opt, twin_opt = OnlyTheProtocol(model), optim.SGD(twin, 0.1, momentum=0.5)
    for _ in range(2):
        x, y = make_data(rng, 6, 5, 3)
        assert model.train_step(x, y, opt, lr=0.2) == twin.train_step(x, y, twin_opt, lr=0.2)
    assert object.__getattribute__(opt, "_calls") == ["begin_step"] + ["update_layer"] * 3 + ["begin_step"] + [
        "update_layer"] * 3
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, twin.state_dict()[key])


# ----------------------------------------------------------------------------- evaluation and prediction


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_evaluate_predict_against_reference(dtype, batch_size):
    rng = np.random.default_rng(7)
    model = MLP(6, [5], 4, dtype=dtype, seed=2, init="kaiming")
    x, y = make_data(rng, 10, 6, 4, dtype)
    ref = reference_from(model)
    logits = ref.logits(x.astype(np.float64))
    ref_loss, _ = R.softmax_cross_entropy(logits, y)
    ref_acc = np.mean(logits.argmax(axis=1) == y)
    loss, acc = model.evaluate(x, y, batch_size=batch_size)
    assert isinstance(loss, float) and isinstance(acc, float)
    np.testing.assert_allclose(loss, ref_loss, **STEP_TOL[dtype])
    assert acc == ref_acc
    assert model.evaluate(x, np.eye(4)[y], batch_size=batch_size) == (loss, acc)  # one-hot targets

    probs = model.predict_proba(x, batch_size=batch_size)
    assert probs.shape == (10, 4) and probs.dtype == dtype
    np.testing.assert_allclose(probs, R.softmax_forward(logits), **STEP_TOL[dtype])
    pred = model.predict(x, batch_size=batch_size)
    assert pred.dtype == np.int64 and pred.shape == (10,)
    np.testing.assert_array_equal(pred, logits.argmax(axis=1))
    np.testing.assert_allclose(model.forward(x), probs, **STEP_TOL[dtype])  # the course path agrees


def test_evaluate_does_not_change_the_model():
    rng = np.random.default_rng(8)
    model = MLP(6, [5], 3, seed=0, init="kaiming")
    x, y = make_data(rng, 7, 6, 3)
    before = model.state_dict()
    model.evaluate(x, y, batch_size=2)
    model.predict_proba(x)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


# ----------------------------------------------------------------------------- state and pickling


def test_state_dict_round_trip():
    rng = np.random.default_rng(9)
    model = MLP(6, [5, 4], 3, dtype=np.float32, seed=0, init="kaiming")
    model.train_step(*make_data(rng, 4, 6, 3), optim.SGD(model, 0.1))
    state = model.state_dict()
    assert list(state) == ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias",
                           "layers.4.weight", "layers.4.bias"]
    assert state["layers.2.weight"].shape == (4, 5) and state["layers.0.weight"].dtype == np.float32
    state["layers.0.bias"][...] = 123  # a copy: the model is not touched
    assert not np.any(model.linears[0].params["bias"] == 123)

    other = MLP(6, [5, 4], 3, dtype=np.float32, seed=99)
    x = rng.standard_normal((5, 6))
    assert not np.array_equal(other.predict_proba(x), model.predict_proba(x))
    other.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(other.predict_proba(x), model.predict_proba(x))


def test_load_state_dict_checks_keys_and_shapes():
    model = MLP(6, [5], 3)
    state = model.state_dict()
    with pytest.raises(KeyError, match=r"missing keys \['layers.2.bias'\]"):
        model.load_state_dict({k: v for k, v in state.items() if k != "layers.2.bias"})
    with pytest.raises(KeyError, match=r"unexpected keys \['extra'\]"):
        model.load_state_dict({**state, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"state\['layers.0.weight'\]: expected shape \(5, 6\), got \(6, 5\)"):
        model.load_state_dict({**state, "layers.0.weight": np.zeros((6, 5))})


def test_pickle_round_trip_after_training():
    rng = np.random.default_rng(10)
    model = MLP(6, [5], 3, seed=0, init="kaiming")
    opt = optim.SGD(model, 0.1, momentum=0.9)
    model.train_step(*make_data(rng, 4, 6, 3), opt)
    clone = pickle.loads(pickle.dumps(model))
    x = rng.standard_normal((7, 6))
    np.testing.assert_array_equal(clone.predict_proba(x), model.predict_proba(x))
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))
    assert clone.dtype == model.dtype and clone.n_hidden == model.n_hidden
    # The clone trains on its own parameters, with the same result.
    batch = make_data(rng, 4, 6, 3)
    clone_opt = optim.SGD(clone, 0.1)
    model_opt = optim.SGD(model, 0.1)
    assert clone.train_step(*batch, clone_opt) == model.train_step(*batch, model_opt)
    for key, value in clone.state_dict().items():
        np.testing.assert_array_equal(value, model.state_dict()[key])
    assert clone.linears[0].params["weight"] is not model.linears[0].params["weight"]


# ----------------------------------------------------------------------------- dtypes, buffers, live parameters


def test_float32_model_keeps_float32():
    rng = np.random.default_rng(11)
    model = MLP(6, [5], 3, dtype=np.float32, seed=0, init="kaiming")
    x, y = make_data(rng, 4, 6, 3, np.float64)
    for opt in (optim.SGD(model, 0.1), optim.SGD(model, 0.1, momentum=0.9), optim.Adam(model)):
        model.train_step(x, y, opt)
    assert model.forward(x).dtype == np.float32
    assert model.predict_proba(x).dtype == np.float32
    for lin in model.linears:
        assert lin.params["weight"].dtype == np.float32 and lin.params["bias"].dtype == np.float32
        assert lin.grads["weight"].dtype == np.float32


def test_integer_input_works():
    model = MLP(4, [3], 2, seed=0, init="kaiming")
    x = np.arange(12).reshape(3, 4)
    y = np.array([0, 1, 1], dtype=np.int32)
    np.testing.assert_allclose(model.predict_proba(x), model.predict_proba(x.astype(np.float64)))
    assert np.isfinite(model.train_step(x, y, optim.SGD(model, 0.01)).loss)
    assert np.isfinite(model.evaluate(x, y)[0])


@pytest.mark.parametrize("order", ["F", "strided"])
def test_non_contiguous_input_matches_contiguous(order):
    rng = np.random.default_rng(12)
    x, y = make_data(rng, 5, 6, 3)
    x_odd = np.asfortranarray(x) if order == "F" else np.repeat(x, 2, axis=1)[:, ::2]
    assert np.array_equal(x_odd, x)
    a, b = MLP(6, [4], 3, seed=0, init="kaiming"), MLP(6, [4], 3, seed=0, init="kaiming")
    np.testing.assert_allclose(a.train_step(x_odd, y, optim.SGD(a, 0.1)), b.train_step(x, y, optim.SGD(b, 0.1)),
                               rtol=1e-12)  # (loss, correct)
    for key, value in a.state_dict().items():
        np.testing.assert_allclose(value, b.state_dict()[key], rtol=1e-12, atol=1e-15)


def buffer_arrays(bufs):
    """Every ndarray in a buffer set (nested lists/tuples of arrays, None for unused slots)."""
    if isinstance(bufs, np.ndarray):
        return [bufs]
    if bufs is None:
        return []
    if not isinstance(bufs, (list, tuple)):  # the model's set of buffers for one batch size
        bufs = [bufs.acts, bufs.grads, bufs.scratch, bufs.images]
    return [a for item in bufs for a in buffer_arrays(item)]


def test_train_step_reuses_its_buffers():
    rng = np.random.default_rng(13)
    model = MLP(6, [5, 4], 3, seed=0, init="kaiming")
    for opt in (optim.SGD(model, 0.1), optim.Adam(model)):
        model.train_step(*make_data(rng, 8, 6, 3), opt)
        bufs = model._step_buffers.sets[8]
        arrays = buffer_arrays(bufs)
        assert len(arrays) >= 2 * len(model.linears) - 1  # an activation per layer, a gradient per hidden one
        grad_arrays = [lin.grads[k] for lin in model.linears for k in ("weight", "bias")]
        param_arrays = [lin.params[k] for lin in model.linears for k in ("weight", "bias")]
        for _ in range(3):
            model.train_step(*make_data(rng, 8, 6, 3), opt)
        assert model._step_buffers.sets == {8: bufs}
        assert all(new is old for new, old in zip(buffer_arrays(bufs), arrays, strict=True))
        # Parameters and gradients are updated in place, never rebound.
        assert all(a is lin.grads[k] for a, (lin, k) in
                   zip(grad_arrays, [(lin, k) for lin in model.linears for k in ("weight", "bias")]))
        assert all(a is lin.params[k] for a, (lin, k) in
                   zip(param_arrays, [(lin, k) for lin in model.linears for k in ("weight", "bias")]))
    assert list(model._step_buffers.sets) == [8]
    assert not model._buffers.idle  # the pool is for the predictions and evaluations


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("n_hidden", [[], [16, 8]])
@pytest.mark.parametrize("batch", [1, 37])
def test_train_step_on_an_image_batch_equals_converting_first(dtype, opt_name, n_hidden, batch, openblas_images):
    # The first layer converts uint8 rows itself: the same loss, counts and parameters, bit for bit.
    rng = np.random.default_rng(batch + len(n_hidden))
    pixels = rng.integers(0, 256, (60, 50), dtype=np.uint8)
    offset, scale = (rng.random(50) * 255).astype(dtype), (rng.random(50) * 60 + 1).astype(dtype)
    runs = []
    for as_images in (True, False):
        model = MLP(50, n_hidden, 4, dtype=dtype, seed=1, init="kaiming")
        opt = optim.SGD(model, 0.05) if opt_name == "sgd" else optim.Adam(model, 1e-2)
        data_rng = np.random.default_rng(7)
        out = []
        for _ in range(3):
            images = ImageBatch(pixels, data_rng.integers(0, 60, batch), offset, scale)
            x = images if as_images else images.to_array()
            out.append(model.train_step(x, data_rng.integers(0, 4, batch), opt))
        runs.append((out, model.state_dict()))
    (out_images, state_images), (out_arrays, state_arrays) = runs
    assert out_images == out_arrays
    for name in state_arrays:
        np.testing.assert_array_equal(state_images[name], state_arrays[name])


def test_image_batch_keeps_its_row_numbers_as_int64():
    batch = ImageBatch(np.zeros((4, 5), np.uint8), [3, 0], np.zeros(5, np.float32))
    assert batch.index.dtype == np.int64 and batch.index.tolist() == [3, 0] and batch.shape == (2, 5)
    np.testing.assert_array_equal(batch.to_array(), np.zeros((2, 5), np.float32))


def test_plain_sgd_updates_the_first_layer_from_the_pixels_when_no_converted_batch_is_kept(monkeypatch):
    # Where the first layer's GEMM converts into its own panels only (fastmlp's AVX-512 GEMM), the converted
    # batch is not kept and plain SGD gets the ImageBatch itself; forced here on any CPU, it must reach the
    # pixels kernel and give what the converted array gives.
    from fastmlp import _kernels as K

    monkeypatch.setattr(K, "forward_images_needs_x", lambda batch, dtype: False)
    pixel_updates = []
    kernel = K.linear_backward_sgd_images
    monkeypatch.setattr(K, "linear_backward_sgd_images", lambda *args: (pixel_updates.append(1), kernel(*args)))
    rng = np.random.default_rng(18)
    pixels = rng.integers(0, 256, (60, 50), dtype=np.uint8)
    offset, scale = (rng.random(50) * 255).astype(np.float32), (rng.random(50) * 60 + 1).astype(np.float32)
    runs = []
    for as_images in (True, False):
        model = MLP(50, [16], 4, dtype=np.float32, seed=1, init="kaiming")
        opt, data_rng = optim.SGD(model, 0.05, weight_decay=0.01), np.random.default_rng(7)
        batches = [ImageBatch(pixels, data_rng.integers(0, 60, 37), offset, scale) for _ in range(3)]
        out = [model.train_step(b if as_images else b.to_array(), data_rng.integers(0, 4, 37), opt) for b in batches]
        runs.append((out, model.state_dict()))
    assert len(pixel_updates) == 3
    assert runs[0][0] == runs[1][0]
    for name, value in runs[1][1].items():
        np.testing.assert_array_equal(runs[0][1][name], value)


def test_train_step_checks_an_image_batch_against_the_model():
    model = MLP(50, [5], 3, dtype=np.float32, seed=0)
    opt = optim.SGD(model, 0.1)
    pixels, index = np.zeros((4, 50), np.uint8), np.arange(2)
    with pytest.raises(ValueError, match="x: expected images of 50 values each, got 49"):
        model.train_step(ImageBatch(pixels[:, :49], index, np.zeros(49, np.float32)), [0, 1], opt)
    with pytest.raises(ValueError, match="x: expected an ImageBatch converting to float32, got float64"):
        model.train_step(ImageBatch(pixels, index, np.zeros(50)), [0, 1], opt)
    with pytest.raises(ValueError, match=r"index: expected row numbers in \[0, 4\), got 4"):
        model.train_step(ImageBatch(pixels, np.array([0, 4]), np.zeros(50, np.float32)), [0, 1], opt)


@pytest.mark.parametrize("field,value,match", [
    ("pixels", np.zeros((4, 5), np.float32), "pixels: expected a 2-D uint8 array"),
    ("pixels", np.zeros(5, np.uint8), "pixels: expected a 2-D uint8 array"),
    ("index", np.zeros(2, np.float64), "index: expected a non-empty 1-D array of integer row numbers"),
    ("index", np.zeros(0, np.int64), "index: expected a non-empty 1-D array of integer row numbers"),
    ("index", np.zeros((2, 1), np.int64), "index: expected a non-empty 1-D array"),
    ("offset", np.zeros(4, np.float32), r"offset: expected a float32 or float64 array of shape \(5,\)"),
    ("offset", np.zeros(5, np.int64), "offset: expected a float32 or float64"),
    ("scale", np.ones(5, np.float64), "scale: expected None or a float32 array of shape"),
])
def test_image_batch_names_the_bad_field(field, value, match):
    fields = dict(pixels=np.zeros((4, 5), np.uint8), index=np.zeros(2, np.int64), offset=np.zeros(5, np.float32))
    fields[field] = value
    with pytest.raises(TypeError, match=match):
        ImageBatch(**fields)


def test_in_place_param_edits_are_seen():
    rng = np.random.default_rng(14)
    model = MLP(6, [5], 3, seed=0, init="kaiming")
    x = rng.standard_normal((4, 6))
    model.predict_proba(x)  # buffers exist: edits must still be seen
    last = model.linears[-1]
    last.params["weight"][...] = 0
    last.params["bias"][...] = [0.0, 1.0, 2.0]
    expected = np.tile(R.softmax_forward(np.array([[0.0, 1.0, 2.0]])), (4, 1))
    np.testing.assert_allclose(model.predict_proba(x), expected, rtol=1e-12)
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-12)
    loss, _ = model.evaluate(x, np.full(4, 2))
    np.testing.assert_allclose(loss, -np.log(expected[0, 2]), rtol=1e-12)


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def model():
    return MLP(6, [5], 3, seed=0, init="kaiming")


@pytest.mark.parametrize(
    "x, exc, match",
    [
        (np.ones(6), ValueError, r"x: expected a 2-D array of shape \(batch, 6\), got shape \(6,\)"),
        (np.ones((2, 6, 1)), ValueError, r"x: expected a 2-D array"),
        (np.ones((2, 5)), ValueError, r"x: expected shape \(batch, 6\), got \(2, 5\)"),
        (np.ones((0, 6)), ValueError, r"x: expected at least one row"),
        (np.ones((2, 6), dtype=np.complex64), TypeError, r"x: expected a real numeric array, got dtype complex64"),
        (np.full((2, 6), "a"), TypeError, r"x: expected a real numeric array"),
    ],
)
def test_bad_x_everywhere(model, x, exc, match):
    y = np.zeros(len(x) if np.ndim(x) else 0, dtype=int)
    opt = optim.SGD(model, 0.1)
    for call in (lambda: model.forward(x), lambda: model.train_step(x, y, opt), lambda: model.evaluate(x, y),
                 lambda: model.predict_proba(x), lambda: model.predict(x)):
        with pytest.raises(exc, match=match):
            call()


TWO_ONES = np.eye(3)[[0, 1, 2, 0]]
TWO_ONES[0, 1] = 1  # row 0 claims two classes


@pytest.mark.parametrize(
    "y, exc, match",
    [
        (np.array([0, 1, 3, 0]), ValueError, r"labels: expected class indices in \[0, 3\), got 3 at position 2"),
        (np.array([0, -1, 2, 0]), ValueError, r"labels: expected class indices in \[0, 3\), got -1 at position 1"),
        (np.array([0, 1, 2]), ValueError, r"y: expected 4 labels \(one per row of x\), got 3"),
        (TWO_ONES, ValueError, r"y: 2-D targets must be one-hot"),
        (np.ones((4, 2)), ValueError, r"y: expected one-hot shape \(4, 3\), got \(4, 2\)"),
        (np.array([0.5, 1, 2, 0]), TypeError, r"y: expected integer class indices"),
        (np.array(["a", "b", "c", "d"]), TypeError, r"y: expected integer class indices"),
    ],
)
def test_bad_labels(model, y, exc, match):
    x = np.ones((4, 6))
    with pytest.raises(exc, match=match):
        model.train_step(x, y, optim.SGD(model, 0.1))
    with pytest.raises(exc, match=match):
        model.evaluate(x, y)


def test_bad_labels_leave_the_model_unchanged(model):
    before = model.state_dict()
    with pytest.raises(ValueError):
        model.train_step(np.ones((4, 6)), np.array([0, 1, 2, 7]), optim.SGD(model, 0.1))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_backward_before_forward(model):
    with pytest.raises(RuntimeError, match="backward called before forward"):
        model.backward(np.ones((2, 3)))


@pytest.mark.parametrize("value", [np.zeros((6, 5)), np.zeros((5, 6), dtype=np.float32)])
def test_replaced_weight_of_wrong_kind(model, value):
    model.linears[0].params["weight"] = value
    x, y = np.ones((2, 6)), np.array([0, 1])
    for call in (lambda: model.forward(x), lambda: model.train_step(x, y, optim.SGD(model, 0.1)),
                 lambda: model.train_step(x, y, optim.Adam(model)), lambda: model.predict(x)):
        with pytest.raises(ValueError, match=r"params\['weight'\]: expected a C-contiguous float64 array of shape \(5, 6\)"):
            call()


def test_optimizer_built_on_another_model(model):
    other = MLP(6, [5], 3)
    with pytest.raises(ValueError, match="optimizer: it was built for a different model"):
        model.train_step(np.ones((2, 6)), [0, 1], optim.SGD(other, 0.1))


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        ((0, [5], 3), {}, ValueError, "n_inputs: expected a positive integer"),
        ((6, [5, 0], 3), {}, ValueError, r"n_hidden\[1\]: expected a positive integer"),
        ((6, 5, 3), {}, TypeError, "n_hidden: expected a sequence"),
        ((6, [5], 1.5), {}, TypeError, "n_classes: expected a positive integer"),
        ((6, [5], 3), dict(dtype=np.float16), TypeError, "dtype: expected float32 or float64"),
        ((6, [5], 3), dict(init="uniform"), ValueError, "init: expected one of"),
    ],
)
def test_bad_constructor_args(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MLP(*args, **kwargs)


def test_bad_batch_size(model):
    with pytest.raises(ValueError, match="batch_size: expected a positive integer, got 0"):
        model.evaluate(np.ones((2, 6)), [0, 1], batch_size=0)
    with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
        model.predict(np.ones((2, 6)), batch_size=-1)


# ----------------------------------------------------------------------------- extreme values


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", [1e4, -1e4])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_huge_logits_finite(dtype, big, opt_name):
    model = MLP(4, [3], 3, dtype=dtype, seed=0, init="kaiming")
    model.linears[-1].params["bias"][...] = [big, 0.0, -big]
    x, y = np.ones((3, 4), dtype=dtype), np.array([2, 1, 0])
    loss, _ = model.evaluate(x, y)
    assert np.isfinite(loss)
    loss, _ = model.train_step(x, y, OPTIMIZERS[opt_name][0](model, 0.0))
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(v)) for v in model.state_dict().values())
    if opt_name == "adam":
        assert all(np.all(np.isfinite(lin.grads[k])) for lin in model.linears for k in ("weight", "bias"))


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_nan_input_gives_nan_loss_and_keeps_params(opt_name):
    model = MLP(4, [3], 3, seed=0, init="kaiming")
    before = model.state_dict()
    x = np.ones((2, 4))
    x[1, 2] = np.nan
    loss, _ = model.train_step(x, [0, 1], OPTIMIZERS[opt_name][0](model, 0.0))
    assert np.isnan(loss)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    assert np.isnan(model.evaluate(x, [0, 1])[0])
    assert np.all(np.isnan(model.predict_proba(x)[1]))


# ----------------------------------------------------------------------------- learning


def blobs(rng, n_per_class=100, n_features=20, n_classes=3):
    centers = 2.0 * rng.standard_normal((n_classes, n_features))
    x = np.concatenate([c + rng.standard_normal((n_per_class, n_features)) for c in centers])
    y = np.repeat(np.arange(n_classes), n_per_class)
    order = rng.permutation(len(y))
    return x[order], y[order]


@pytest.mark.parametrize("opt_name", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_training_on_blobs_learns(opt_name, dtype):
    rng = np.random.default_rng(15)
    x, y = blobs(rng)
    x_test, y_test = x[240:], y[240:]
    x, y = x[:240], y[:240]
    model = MLP(20, [16], 3, dtype=dtype, seed=0, init="kaiming")
    opt = optim.make_optimizer(opt_name, model, 0.01 if opt_name == "adam" else 0.05)
    initial_loss, initial_acc = model.evaluate(x, y)
    for epoch in range(5):
        for start in range(0, 240, 24):
            model.train_step(x[start:start + 24], y[start:start + 24], opt)
    final_loss, _ = model.evaluate(x, y)
    test_loss, test_acc = model.evaluate(x_test, y_test)
    assert final_loss < 0.5 * initial_loss
    assert test_acc > 0.8  # chance is 1/3
