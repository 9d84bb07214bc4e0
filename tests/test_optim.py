"""fastmlp.optim: SGD (momentum, Nesterov) and Adam steps against fastmlp.reference, state round trips,
the rate passed in, the registry of names, and hyperparameter checking."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from fastmlp import MLP, CrossEntropyModule
from fastmlp import optim
from fastmlp import reference as R

DTYPES = (np.float32, np.float64)
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def fill_random_grads(model, rng):
    for lin in model.linears:
        for key in ("weight", "bias"):
            lin.grads[key][...] = rng.standard_normal(lin.grads[key].shape)


def snapshot(model):
    """float64 copies of (params, grads) per named parameter."""
    return {name: (module.params[key].astype(np.float64), module.grads[key].astype(np.float64))
            for name, module, key in model.named_parameters()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.5, True)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_sgd_step_matches_reference(dtype, momentum, nesterov, weight_decay):
    rng = np.random.default_rng(0)
    model = MLP(5, [4], 3, dtype=dtype, seed=0, init="kaiming")
    opt = optim.SGD(model, 0.05, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    ref = {name: p for name, (p, _) in snapshot(model).items()}
    velocity = {name: np.zeros_like(p) for name, p in ref.items()}
    for _ in range(4):
        fill_random_grads(model, rng)
        grads = {name: g for name, (_, g) in snapshot(model).items()}
        opt.step()
        for name in ref:
            R.sgd_update(ref[name], grads[name], velocity[name] if momentum else None, lr=0.05,
                         momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay if name.endswith("weight") else 0.0)
    for name, (param, _) in snapshot(model).items():
        np.testing.assert_allclose(param, ref[name], **TOL[dtype], err_msg=name)
    if momentum:
        for name in ref:
            np.testing.assert_allclose(opt.state[f"momentum.{name}"], velocity[name].ravel(), **TOL[dtype])
    else:
        assert opt.state == {}  # plain SGD keeps no buffers


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_step_matches_reference(dtype, weight_decay):
    rng = np.random.default_rng(1)
    model = MLP(5, [4], 3, dtype=dtype, seed=0, init="kaiming")
    opt = optim.Adam(model, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay)
    ref = {name: p for name, (p, _) in snapshot(model).items()}
    m = {name: np.zeros_like(p) for name, p in ref.items()}
    v = {name: np.zeros_like(p) for name, p in ref.items()}
    for step in range(1, 6):
        fill_random_grads(model, rng)
        grads = {name: g for name, (_, g) in snapshot(model).items()}
        opt.step()
        assert opt.t == step
        for name in ref:
            R.adam_update(ref[name], grads[name], m[name], v[name], lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6,
                          weight_decay=weight_decay if name.endswith("weight") else 0.0, step=step)
    for name, (param, _) in snapshot(model).items():
        np.testing.assert_allclose(param, ref[name], **TOL[dtype], err_msg=name)
        np.testing.assert_allclose(opt.state[f"exp_avg.{name}"], m[name].ravel(), **TOL[dtype])
        np.testing.assert_allclose(opt.state[f"exp_avg_sq.{name}"], v[name].ravel(), **TOL[dtype])


@pytest.mark.parametrize("make", [lambda m: optim.SGD(m, 0.1, weight_decay=0.5),
                                  lambda m: optim.SGD(m, 0.1, momentum=0.9, weight_decay=0.5),
                                  lambda m: optim.Adam(m, 0.1, weight_decay=0.5)])
def test_weight_decay_spares_biases(make):
    # Zero gradients: only the decay moves anything, and only the weights.
    model = MLP(4, [3], 2, seed=0, init="kaiming")
    for lin in model.linears:  # |w| = 1 > lr: even Adam's sign-like first step shrinks every weight
        weight = lin.params["weight"]
        weight[...] = np.where(np.indices(weight.shape).sum(axis=0) % 2, 1.0, -1.0)
        lin.params["bias"][...] = 1.0
    before = model.state_dict()
    opt = make(model)
    opt.zero_grad()
    opt.step()
    after = model.state_dict()
    for name in before:
        if name.endswith("bias"):
            np.testing.assert_array_equal(after[name], before[name])
        else:
            assert np.all(np.abs(after[name]) < np.abs(before[name]))


def test_zero_grad():
    model = MLP(4, [3], 2, seed=0)
    fill_random_grads(model, np.random.default_rng(2))
    grad_arrays = [lin.grads["weight"] for lin in model.linears]
    optim.SGD(model, 0.1).zero_grad()
    for lin, arr in zip(model.linears, grad_arrays):
        assert lin.grads["weight"] is arr  # in place
        assert not np.any(lin.grads["weight"]) and not np.any(lin.grads["bias"])


def test_step_uses_the_rate_passed_in():
    model = MLP(4, [3], 2, seed=0, init="kaiming")
    opt = optim.SGD(model, 0.1, momentum=0.5)
    fill_random_grads(model, np.random.default_rng(3))
    before = model.state_dict()
    opt.step(lr=0.0)  # the velocity moves, the parameters do not
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    opt.step(lr=0.2)
    w = model.linears[0]
    np.testing.assert_allclose(w.params["weight"],
                               before["layers.0.weight"] - 0.2 * (0.5 * w.grads["weight"] + w.grads["weight"]),
                               rtol=1e-12)
    opt.step()  # without a rate: the one it was built with
    assert opt.lr == 0.1


@pytest.mark.parametrize("lr", [-0.1, float("nan"), "fast"])
def test_step_refuses_a_bad_rate(lr):
    model = MLP(4, [3], 2, seed=0)
    with pytest.raises((ValueError, TypeError), match="lr: expected"):
        optim.Adam(model).step(lr=lr)


def test_course_loop_forward_backward_step():
    # The course's loop still trains: forward, the loss module, backward, step().
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((30, 4)), rng.integers(0, 2, 30)
    x[y == 1] += 2.0
    for name in optim.OPTIMIZERS:
        model = MLP(4, [6], 2, seed=0, init="kaiming")
        opt = optim.make_optimizer(name, model, 0.1)
        ce = CrossEntropyModule()
        first = None
        for _ in range(40):
            probs = model.forward(x)
            loss = ce.forward(probs, y)
            first = loss if first is None else first
            model.backward(ce.backward(probs, y))
            opt.step()
        assert loss < 0.5 * first, name


def test_step_follows_replaced_params():
    # Parameters and gradients are read live: a same-shape replacement is what gets updated.
    model = MLP(4, [3], 2, seed=0, init="kaiming")
    new_weight = np.ones((3, 4))
    model.linears[0].params["weight"] = new_weight
    model.linears[0].grads["weight"][...] = 1.0
    optim.SGD(model, 0.25).step()
    np.testing.assert_array_equal(new_weight, 0.75)


# ----------------------------------------------------------------------------- state round trip (--resume)


@pytest.mark.parametrize("name, kwargs", [("momentum", dict(nesterov=True)), ("momentum", {}), ("adam", {}),
                                          ("sgd", {})])
@pytest.mark.parametrize("dtype", DTYPES)
def test_resume_from_savez_continues_identically(tmp_path, name, kwargs, dtype):
    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((6, 5)), rng.integers(0, 3, size=6)) for _ in range(6)]

    def build():
        model = MLP(5, [4], 3, dtype=dtype, seed=0, init="kaiming")
        opt = optim.make_optimizer(name, model, 0.05, weight_decay=0.01)
        if kwargs:
            opt = optim.SGD(model, 0.05, momentum=0.9, weight_decay=0.01, **kwargs)
        return model, opt

    model, opt = build()
    for x, y in batches[:3]:
        model.train_step(x, y, opt)
    np.savez(tmp_path / "model.npz", **model.state_dict())
    np.savez(tmp_path / "opt.npz", **opt.state_dict())
    uninterrupted = [model.train_step(x, y, opt) for x, y in batches[3:]]

    resumed_model, resumed_opt = build()
    resumed_model.load_state_dict(dict(np.load(tmp_path / "model.npz")))
    resumed_opt.load_state_dict(dict(np.load(tmp_path / "opt.npz")))
    assert type(resumed_opt.lr) is float
    resumed = [resumed_model.train_step(x, y, resumed_opt) for x, y in batches[3:]]
    assert resumed == uninterrupted
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(resumed_model.state_dict()[key], value)


@pytest.mark.parametrize("make", [lambda m: optim.Adam(m, 0.01), lambda m: optim.SGD(m, 0.1, momentum=0.9)])
def test_pickled_optimizer_continues_and_keeps_its_state(make):
    # The model and its optimizer pickled together mid-run go on as the originals, state_dict included.
    rng = np.random.default_rng(8)
    batches = [(rng.standard_normal((6, 5)), rng.integers(0, 3, size=6)) for _ in range(4)]
    model = MLP(5, [4], 3, seed=0, init="kaiming")
    opt = make(model)
    for x, y in batches[:2]:
        model.train_step(x, y, opt)
    clone, clone_opt = pickle.loads(pickle.dumps((model, opt)))
    for x, y in batches[2:]:
        assert clone.train_step(x, y, clone_opt) == model.train_step(x, y, opt)
    for key, value in opt.state_dict().items():
        np.testing.assert_array_equal(clone_opt.state_dict()[key], value, err_msg=key)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(clone.state_dict()[key], value, err_msg=key)


def test_state_dict_contents():
    model = MLP(4, [3], 2, seed=0)
    sgd = optim.SGD(model, 0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    fill_random_grads(model, np.random.default_rng(5))
    sgd.step()
    state = sgd.state_dict()
    assert float(state["lr"]) == 0.1 and float(state["momentum"]) == 0.9 and bool(state["nesterov"])
    assert float(state["weight_decay"]) == 1e-3
    assert set(k for k in state if k.startswith("state.")) == {
        f"state.momentum.{n}" for n in ("layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias")}
    state["state.momentum.layers.0.bias"][...] = 99  # a copy
    assert not np.any(sgd.state["momentum.layers.0.bias"] == 99)

    adam = optim.Adam(model, 1e-3)
    adam.step()
    adam.step()
    state = adam.state_dict()
    assert int(state["t"]) == 2 and float(state["beta1"]) == 0.9 and float(state["beta2"]) == 0.999
    assert "state.exp_avg.layers.2.weight" in state and "state.exp_avg_sq.layers.2.weight" in state


def test_load_state_dict_errors():
    model = MLP(4, [3], 2, seed=0)
    opt = optim.SGD(model, 0.1, momentum=0.9)
    opt.step()
    good = opt.state_dict()
    with pytest.raises(KeyError, match="state: missing 'momentum'"):
        opt.load_state_dict({k: v for k, v in good.items() if k != "momentum"})
    with pytest.raises(KeyError, match="'state.momentum.layers.9.weight' names no parameter"):
        opt.load_state_dict({**good, "state.momentum.layers.9.weight": np.zeros(12)})
    with pytest.raises(ValueError, match=r"state\['state.momentum.layers.0.weight'\]: expected shape \(12,\), got \(5,\)"):
        opt.load_state_dict({**good, "state.momentum.layers.0.weight": np.zeros(5)})


# ----------------------------------------------------------------------------- construction


def test_make_optimizer():
    model = MLP(4, [3], 2)
    sgd = optim.make_optimizer("sgd", model, 0.1, weight_decay=0.01)
    assert isinstance(sgd, optim.SGD) and sgd.momentum == 0 and not sgd.keeps_inputs() and sgd.weight_decay == 0.01
    mom = optim.make_optimizer("momentum", model, 0.1, momentum=0.8)
    assert isinstance(mom, optim.SGD) and mom.momentum == 0.8 and mom.keeps_inputs()
    adam = optim.make_optimizer("adam", model, 1e-3)
    assert isinstance(adam, optim.Adam) and adam.keeps_inputs() and adam.lr == 1e-3
    with pytest.raises(ValueError, match=r"optimizer: expected one of \('sgd', 'momentum', 'adam'\), got 'rmsprop'"):
        optim.make_optimizer("rmsprop", model, 0.1)


@pytest.mark.parametrize("name, momentum", [("sgd", 0.9), ("adam", 0.9), ("momentum", 0.0)])
def test_nesterov_needs_sgd_with_momentum(name, momentum):
    with pytest.raises(ValueError, match=rf"nesterov: needs optimizer 'momentum' and momentum > 0, got optimizer "
                                         rf"'{name}', momentum {momentum}"):
        optim.make_optimizer(name, MLP(4, [3], 2), 0.1, momentum=momentum, nesterov=True)
    assert optim.make_optimizer("momentum", MLP(4, [3], 2), 0.1, momentum=0.5, nesterov=True).nesterov


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda m: optim.SGD(m, -0.1), ValueError, r"lr: expected a finite value in \(0.0, inf\), got -0.1"),
        (lambda m: optim.SGD(m, 0.0), ValueError, r"lr: expected a finite value in \(0.0"),
        (lambda m: optim.SGD(m, float("nan")), ValueError, "lr: expected a finite value"),
        (lambda m: optim.SGD(m, "fast"), TypeError, "lr: expected a number, got 'fast'"),
        (lambda m: optim.SGD(m, 0.1, momentum=1.0), ValueError, r"momentum: expected a finite value in \[0.0, 1.0\)"),
        (lambda m: optim.SGD(m, 0.1, momentum=-0.5), ValueError, "momentum: expected a finite value"),
        (lambda m: optim.SGD(m, 0.1, nesterov=True), ValueError, "nesterov: needs optimizer 'momentum' and momentum > 0"),
        (lambda m: optim.SGD(m, 0.1, weight_decay=-1e-4), ValueError, "weight_decay: expected a finite value"),
        (lambda m: optim.Adam(m, -1e-3), ValueError, "lr: expected a finite value"),
        (lambda m: optim.Adam(m, betas=(1.0, 0.999)), ValueError, r"betas\[0\]: expected a finite value"),
        (lambda m: optim.Adam(m, betas=(0.9, 1.5)), ValueError, r"betas\[1\]: expected a finite value"),
        (lambda m: optim.Adam(m, betas=(0.9,)), ValueError, "betas: expected two numbers"),
        (lambda m: optim.Adam(m, eps=0.0), ValueError, "eps: expected a finite value"),
        (lambda m: optim.SGD(object(), 0.1), TypeError, "model: expected a model with named_parameters"),
    ],
)
def test_bad_hyperparameters(make, exc, match):
    with pytest.raises(exc, match=match):
        make(MLP(4, [3], 2))


# ----------------------------------------------------------------------------- the registry of names

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize("name", ["nesterov", "adam"])
def test_state_written_by_fastmlp_95b1b62_resumes(name):
    """Model and optimizer states saved by the version before the optimizer owned its update
    (``tests/fixtures/optim_state_95b1b62.npz``: three steps, saved, then three more) load and
    continue as that version continued them."""
    saved = dict(np.load(FIXTURES / "optim_state_95b1b62.npz"))
    model = MLP(5, [4], 3, seed=1, init="kaiming")  # other weights: the loaded state must replace them
    opt = (optim.SGD(model, 0.5, momentum=0.5, nesterov=True, weight_decay=0.0) if name == "nesterov"
           else optim.Adam(model, 0.5, betas=(0.5, 0.5), eps=1e-3))
    part = lambda prefix: {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
    model.load_state_dict(part(f"{name}/model/"))
    opt.load_state_dict(part(f"{name}/optim/"))
    losses = [model.train_step(x, y, opt).loss for x, y in zip(saved["x"][3:], saved["y"][3:])]
    np.testing.assert_allclose(losses, saved[f"{name}/losses"], rtol=1e-12)
    for key, value in part(f"{name}/after/").items():
        np.testing.assert_allclose(model.state_dict()[key], value, rtol=1e-10, atol=1e-14)
    # and saved again, the state has the same keys and shapes as the old one
    old = part(f"{name}/optim/")
    assert {k: np.shape(v) for k, v in opt.state_dict().items()} == {k: np.shape(v) for k, v in old.items()}


def test_every_trainer_reads_the_registry():
    from fastmlp import hyperparams
    from fastmlp.search import space

    assert optim.OPTIMIZERS == tuple(optim.REGISTRY) == ("sgd", "momentum", "adam")
    assert hyperparams.CONSTRAINTS["optimizer"].choices == optim.OPTIMIZERS
    assert space.EVOLUTION_SPACE["optimizer"] == optim.OPTIMIZERS
    for name in optim.OPTIMIZERS:
        assert isinstance(optim.make_optimizer(name, MLP(3, [2], 2), 0.1), optim.Optimizer)


def test_an_unknown_optimizer_name_is_an_error_everywhere():
    pytest.importorskip("torch")
    from fastmlp import hyperparams
    from torch_models.optimizers import make_optimizer as torch_make_optimizer

    message = r"optimizer: expected one of \('sgd', 'momentum', 'adam'\), got 'rmsprop'"
    for call in (lambda: optim.make_optimizer("rmsprop", MLP(3, [2], 2), 0.1),
                 lambda: optim.check_optimizer("rmsprop", 0.9, False),
                 lambda: hyperparams.check("optimizer", "rmsprop"),
                 lambda: torch_make_optimizer("rmsprop", [], 0.1)):
        with pytest.raises(ValueError, match=message):
            call()


def test_torch_refuses_a_fastmlp_optimizer_it_has_no_counterpart_of(monkeypatch):
    # A name added to the registry must not quietly train as plain SGD under torch.
    torch = pytest.importorskip("torch")
    from torch_models.optimizers import make_optimizer as torch_make_optimizer

    monkeypatch.setitem(optim.REGISTRY, "rmsprop", optim.REGISTRY["adam"])
    groups = [{"params": [torch.zeros(2, requires_grad=True)], "weight_decay": 0.0}]
    with pytest.raises(ValueError, match=r"optimizer: expected one of \('sgd', 'momentum', 'adam'\) \(the torch "
                                         r"trainers' optimizers\), got 'rmsprop'"):
        torch_make_optimizer("rmsprop", groups, 0.1)
