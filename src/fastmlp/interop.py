"""fastmlp <-> PyTorch: the same network as a ``torch_models.MLP`` or as a fastmlp ``MLP``.

Both packages store a linear layer as weight (out, in) and bias (out,), so a
conversion copies arrays: :func:`to_torch` gives a ``torch_models.MLP`` (which returns
logits; its softmax is fastmlp's ``predict_proba``), :func:`from_torch` reads a
``torch_models.MLP`` or an ``nn.Sequential`` of ``Linear``/``ReLU`` layers. What a
fastmlp MLP has no layer for (batch normalisation, dropout) is refused, unless the
network is converted for inference, where dropout is the identity and each batch
normalisation, with its running statistics, folds into the linear layer after it.

torch is imported inside the functions: ``import fastmlp`` does not need it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["from_torch", "to_torch"]


def _fastmlp_network(model):
    """The fastmlp MLP of ``model`` (an MLP, or a loaded Predictor's network)."""
    from fastmlp.mlp import MLP

    network = getattr(model, "model", model)
    if not isinstance(network, MLP):
        raise TypeError(f"model: expected a fastmlp MLP or a loaded model (fastmlp.load), got {type(model).__name__}")
    if getattr(network, "activation", "relu") != "relu":
        raise ValueError(f"model: torch_models.MLP has ReLU hidden layers only, got activation "
                         f"{network.activation!r}")
    return network


def to_torch(model):
    """A ``torch_models.MLP`` with the weights of a fastmlp ``model``, in its dtype.

    Parameters
    ----------
    model : fastmlp.MLP or fastmlp.Predictor
        A Predictor's preprocessing is not part of the torch module (apply
        ``Predictor.transform`` to raw inputs first).

    Returns
    -------
    torch_models.MLP
        In eval mode, returning the last layer's outputs: for a softmax head
        ``torch.softmax(module(x), 1)`` equals ``model.predict_proba(x)`` within rounding
        (``torch.sigmoid`` for a logistic head; the outputs themselves for an identity one).
    """
    import torch

    from torch_models.mlp import MLP as TorchMLP

    network = _fastmlp_network(model)
    dtype = torch.float64 if network.dtype == np.float64 else torch.float32
    module = TorchMLP(network.n_inputs, network.n_hidden, network.n_classes).to(dtype)
    linears = [layer for layer in module.layers if isinstance(layer, torch.nn.Linear)]
    with torch.no_grad():
        for target, source in zip(linears, network.linears):
            target.weight.copy_(torch.from_numpy(source.params["weight"]))
            target.bias.copy_(torch.from_numpy(source.params["bias"]))
    return module.eval()


def _as_numpy(tensor) -> np.ndarray:
    return tensor.detach().to("cpu").double().numpy()


def _fold_batchnorm(norm, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale s, shift t) (in,) of an eval-mode batch normalisation: norm(x) = s * x + t."""
    mean, var = getattr(norm, "running_mean", None), getattr(norm, "running_var", None)
    if mean is None or var is None:
        raise ValueError(f"module: {what} keeps no running statistics, so it has no inference form to fold")
    gamma = getattr(norm, "weight", None) if hasattr(norm, "weight") else getattr(norm, "gamma", None)
    beta = getattr(norm, "bias", None) if hasattr(norm, "bias") else getattr(norm, "beta", None)
    scale = 1.0 / np.sqrt(_as_numpy(var) + float(norm.eps))
    if gamma is not None:
        scale = scale * _as_numpy(gamma)
    shift = -_as_numpy(mean) * scale + (0.0 if beta is None else _as_numpy(beta))
    return scale, shift


def _layers_of(module) -> list:
    from torch import nn

    layers = getattr(module, "layers", module)
    if not isinstance(layers, nn.Sequential):
        raise TypeError(f"module: expected a torch_models.MLP or an nn.Sequential, got {type(module).__name__}")
    return list(layers)


def _linear_layers(module, for_inference: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight (out, in), bias (out,)) float64 of each Linear, batch normalisations folded in.

    Raises
    ------
    ValueError
        Naming the first layer that does not map onto a fastmlp MLP.
    """
    from torch import nn

    linears, pending, expect_linear = [], None, True
    for index, layer in enumerate(_layers_of(module)):
        what = f"layer {index} ({type(layer).__name__})"
        is_norm = "BatchNorm" in type(layer).__name__
        if (is_norm or isinstance(layer, nn.Dropout)) and not for_inference:
            raise ValueError(f"module: {what}: a fastmlp MLP has no batch normalisation or dropout; "
                             "from_torch(module, for_inference=True) folds batch normalisation (running "
                             "statistics) into the next linear layer and drops dropout (the identity at inference)")
        if is_norm and expect_linear and pending is None:
            pending = _fold_batchnorm(layer, what)
        elif isinstance(layer, nn.Linear) and expect_linear:
            weight = _as_numpy(layer.weight)
            bias = _as_numpy(layer.bias) if layer.bias is not None else np.zeros(weight.shape[0])
            if pending is not None:
                scale, shift = pending
                weight, bias = weight * scale[None, :], bias + weight @ shift
            linears.append((weight, bias))
            pending, expect_linear = None, False
        elif isinstance(layer, nn.ReLU) and not expect_linear:
            expect_linear = True
        elif not isinstance(layer, nn.Dropout):
            raise ValueError(f"module: {what}: expected Linear and ReLU layers in turn (a fastmlp MLP), "
                             f"with a Linear last")
    if expect_linear or not linears:
        raise ValueError("module: expected its last layer to be a Linear (the output layer)")
    return linears


def from_torch(module, *, for_inference: bool = False, dtype=None):
    """A fastmlp ``MLP`` with the weights of a torch network of Linear and ReLU layers.

    Parameters
    ----------
    module : torch_models.MLP or torch.nn.Sequential
        ``Linear -> ReLU -> ... -> Linear`` (logits out; the fastmlp MLP adds the softmax).
    for_inference : bool, default False
        Accept ``Dropout`` (skipped) and batch normalisation before a Linear layer (folded
        into it with its running statistics, as eval mode computes it). Without it they
        are refused: the result would not train like the torch module.
    dtype : float32 or float64, optional
        Default: float64 for a float64 module, else float32.

    Returns
    -------
    fastmlp.MLP

    Raises
    ------
    TypeError
        For something other than a torch_models.MLP or an nn.Sequential.
    ValueError
        Naming the first layer a fastmlp MLP cannot hold.
    """
    import torch

    from fastmlp.mlp import MLP

    linears = _linear_layers(module, for_inference)
    if dtype is None:
        first = next(iter(module.parameters()))
        dtype = np.float64 if first.dtype == torch.float64 else np.float32
    sizes = [linears[0][0].shape[1]] + [w.shape[0] for w, _ in linears]
    network = MLP(sizes[0], sizes[1:-1], sizes[-1], dtype=dtype)
    for target, (weight, bias) in zip(network.linears, linears):
        target.params["weight"][...] = weight
        target.params["bias"][...] = bias
    return network
