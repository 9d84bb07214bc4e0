"""fastmlp.interop: the same network in fastmlp and in torch_models, equal outputs both ways."""
from __future__ import annotations

import numpy as np
import pytest

import fastmlp

torch = pytest.importorskip("torch")

from fastmlp.interop import from_torch, to_torch  # noqa: E402
from torch_models.mlp import MLP as TorchMLP  # noqa: E402


def _x(n=9, d=20, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _torch_proba(module, x):
    with torch.no_grad():
        return torch.softmax(module(torch.from_numpy(x)), dim=1).numpy()


@pytest.mark.parametrize("hidden", [[], [16], [16, 8]])
def test_to_torch_gives_the_same_probabilities(hidden):
    model = fastmlp.MLP(20, hidden, 4, dtype=np.float32, seed=1, init="kaiming")
    module = to_torch(model)
    assert isinstance(module, TorchMLP) and not module.training
    np.testing.assert_allclose(_torch_proba(module, _x()), model.predict_proba(_x()), rtol=0, atol=1e-6)


def test_from_torch_gives_the_same_probabilities(torch_single_thread):
    torch.manual_seed(0)
    module = TorchMLP(20, [16, 8], 4).eval()
    model = from_torch(module)
    assert model.dtype == np.float32 and model.n_hidden == [16, 8]
    np.testing.assert_allclose(model.predict_proba(_x()), _torch_proba(module, _x()), rtol=0, atol=1e-6)


def test_a_float64_network_stays_float64_both_ways():
    model = fastmlp.MLP(20, [6], 3, dtype=np.float64, seed=2, init="kaiming")
    back = from_torch(to_torch(model))
    assert back.dtype == np.float64
    x = _x().astype(np.float64)
    np.testing.assert_allclose(back.predict_proba(x), model.predict_proba(x), rtol=0, atol=1e-12)


def test_a_plain_sequential_converts():
    torch.manual_seed(1)
    seq = torch.nn.Sequential(torch.nn.Linear(20, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    np.testing.assert_allclose(from_torch(seq).predict_proba(_x()), _torch_proba(seq, _x()), rtol=0, atol=1e-6)


@pytest.mark.parametrize("options,named", [({"batchnorm": "torch"}, "BatchNorm1d"),
                                           ({"batchnorm": "custom"}, "CustomBatchNorm"),
                                           ({"dropout": 0.3}, "Dropout")])
def test_batchnorm_and_dropout_are_refused_by_name(options, named):
    module = TorchMLP(20, [8], 3, **options)
    with pytest.raises(ValueError, match=f"module: layer \\d+ \\({named}.*no batch normalisation or dropout"):
        from_torch(module)


@pytest.mark.parametrize("batchnorm", ["torch", "custom"])
def test_for_inference_folds_batchnorm_and_drops_dropout(batchnorm):
    torch.manual_seed(3)
    module = TorchMLP(20, [12, 6], 3, batchnorm=batchnorm, dropout=0.2)
    module.train()
    with torch.no_grad():  # a few training batches give the running statistics values of their own
        for _ in range(3):
            module(torch.randn(32, 20) * 3 + 1)
    module.eval()
    model = from_torch(module, for_inference=True)
    np.testing.assert_allclose(model.predict_proba(_x()), _torch_proba(module, _x()), rtol=0, atol=1e-6)


def test_layers_that_do_not_map_are_refused():
    seq = torch.nn.Sequential(torch.nn.Linear(20, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"layer 1 \(Tanh\).*Linear and ReLU"):
        from_torch(seq)
    with pytest.raises(ValueError, match="last layer to be a Linear"):
        from_torch(torch.nn.Sequential(torch.nn.Linear(20, 5), torch.nn.ReLU()))
    with pytest.raises(TypeError, match="module: expected a torch_models.MLP"):
        from_torch(torch.nn.Linear(3, 2))
    with pytest.raises(TypeError, match="model: expected a fastmlp MLP"):
        to_torch(seq)


def test_a_loaded_model_converts_its_network(tmp_path):
    model = fastmlp.MLP(20, [6], 3, dtype=np.float32, seed=4, init="kaiming")
    loaded = fastmlp.load(fastmlp.save(model, tmp_path / "m.safetensors"))
    np.testing.assert_allclose(_torch_proba(to_torch(loaded), _x()), model.predict_proba(_x()), rtol=0, atol=1e-6)
