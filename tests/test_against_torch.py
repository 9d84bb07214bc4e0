"""fastmlp's gradients and training steps against torch autograd and torch.optim (skipped without torch)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from fastmlp import (  # noqa: E402
    MLP,
    CrossEntropyModule,
    LinearModule,
    ReLUModule,
    SoftmaxCrossEntropyModule,
    SoftMaxModule,
)
from fastmlp import optim  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DTYPES = (np.float32, np.float64)
TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}




def leaf(a):
    return torch.tensor(np.asarray(a), requires_grad=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_relu_gradients_vs_autograd(dtype):
    rng = np.random.default_rng(0)
    lin, relu = LinearModule(7, 5, dtype=dtype, seed=0, init="kaiming"), ReLUModule()
    lin.params["bias"][...] = rng.standard_normal(5)
    x = rng.standard_normal((4, 7)).astype(dtype)
    r = rng.standard_normal((4, 5)).astype(dtype)

    out = relu.forward(lin.forward(x))
    dx = lin.backward(relu.backward(r))

    tx, tw, tb = leaf(x), leaf(lin.params["weight"]), leaf(lin.params["bias"])
    t_out = F.relu(F.linear(tx, tw, tb))
    t_out.backward(torch.tensor(r))
    np.testing.assert_allclose(out, t_out.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(dx, tx.grad.numpy(), **TOL[dtype])
    np.testing.assert_allclose(lin.grads["weight"], tw.grad.numpy(), **TOL[dtype])
    np.testing.assert_allclose(lin.grads["bias"], tb.grad.numpy(), **TOL[dtype])
    assert np.any(out == 0) and np.any(out > 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_cross_entropy_gradients_vs_autograd(dtype):
    rng = np.random.default_rng(1)
    z = (3 * rng.standard_normal((6, 4))).astype(dtype)
    labels = rng.integers(0, 4, size=6)
    one_hot = np.eye(4, dtype=dtype)[labels]
    sm, ce = SoftMaxModule(), CrossEntropyModule()
    probs = sm.forward(z)
    loss = ce.forward(probs, one_hot)
    dz = sm.backward(ce.backward(probs, one_hot))

    tz = leaf(z)
    t_probs = F.softmax(tz, dim=1)
    t_probs.retain_grad()
    t_loss = -(torch.tensor(one_hot) * torch.log(t_probs)).sum() / 6
    t_loss.backward()
    np.testing.assert_allclose(probs, t_probs.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(loss, t_loss.item(), **TOL[dtype])
    np.testing.assert_allclose(ce.backward(probs, one_hot), t_probs.grad.numpy(), **TOL[dtype])
    np.testing.assert_allclose(dz, tz.grad.numpy(), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_fused_softmax_cross_entropy_vs_torch(dtype, scale):
    rng = np.random.default_rng(2)
    z = (scale * rng.standard_normal((5, 3))).astype(dtype)
    labels = rng.integers(0, 3, size=5)
    sce = SoftmaxCrossEntropyModule()
    loss = sce.forward(z, labels)
    tz = leaf(z)
    t_loss = F.cross_entropy(tz, torch.tensor(labels))
    t_loss.backward()
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, t_loss.item(), rtol=1e-5 if dtype == np.float32 else 1e-10)
    np.testing.assert_allclose(sce.backward(), tz.grad.numpy(), **TOL[dtype])


def torch_twin(model):
    """nn.Sequential with ``model``'s layer sizes and a copy of its parameters."""
    layers = []
    for i, lin in enumerate(model.linears):
        layer = torch.nn.Linear(lin.in_features, lin.out_features, dtype=TORCH_DTYPE[model.dtype.type])
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(lin.params["weight"]))
            layer.bias.copy_(torch.from_numpy(lin.params["bias"]))
        layers.append(layer)
        if i < len(model.linears) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def torch_optimizer(net, name, weight_decay):
    # fastmlp decays weights only: biases go to a group without weight decay.
    weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in net.named_parameters() if n.endswith("bias")]
    groups = [dict(params=weights, weight_decay=weight_decay), dict(params=biases, weight_decay=0.0)]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=0.1)
    if name == "momentum":
        return torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    if name == "nesterov":
        return torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True)
    return torch.optim.Adam(groups, lr=0.01, betas=(0.9, 0.99), eps=1e-8)


def our_optimizer(model, name, weight_decay):
    if name == "sgd":
        return optim.SGD(model, 0.1, weight_decay=weight_decay)
    if name == "momentum":
        return optim.SGD(model, 0.05, momentum=0.9, weight_decay=weight_decay)
    if name == "nesterov":
        return optim.SGD(model, 0.05, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    return optim.Adam(model, 0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_train_steps_vs_torch_optim(dtype, name, weight_decay):
    rng = np.random.default_rng(3)
    model = MLP(10, [8, 6], 4, dtype=dtype, seed=0, init="kaiming")
    net = torch_twin(model)
    opt, t_opt = our_optimizer(model, name, weight_decay), torch_optimizer(net, name, weight_decay)
    for _ in range(5):
        x = rng.standard_normal((7, 10)).astype(dtype)
        y = rng.integers(0, 4, size=7)
        loss = model.train_step(x, y, opt).loss
        t_opt.zero_grad()
        t_loss = F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        t_loss.backward()
        t_opt.step()
        np.testing.assert_allclose(loss, t_loss.item(), **TOL[dtype])
    t_params = dict(net.named_parameters())
    # Sequential names: 0, 2, 4 are the Linear layers, as in fastmlp's "layers.<i>" keys.
    for key, value in model.state_dict().items():
        _, idx, kind = key.split(".")
        np.testing.assert_allclose(value, t_params[f"{idx}.{kind}"].detach().numpy(), **TOL[dtype], err_msg=key)
    start = MLP(10, [8, 6], 4, dtype=dtype, seed=0, init="kaiming").state_dict()
    assert not np.allclose(model.state_dict()["layers.0.weight"], start["layers.0.weight"])
