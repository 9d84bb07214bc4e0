"""Optimizers that update a model's ``params`` in place with Cython kernels.

An optimizer is built on a model (anything with ``named_parameters()``, e.g.
``fastmlp.MLP``) and reads each module's ``params``/``grads`` live at every
``step()``, so the course's loop works unchanged::

    loss = ce.forward(model.forward(x), t)
    model.backward(ce.backward(probs, t))
    optimizer.step()

Weight decay (L2, added to the gradient as in ``torch.optim``) applies to
weights only, not to biases.
"""
from __future__ import annotations

import numpy as np

from fastmlp import _kernels as K

__all__ = ["Adam", "Optimizer", "SGD", "check_optimizer", "make_optimizer", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "momentum", "adam")


def check_optimizer(name, momentum, nesterov, *, label=str) -> None:
    """Refuse an unknown optimizer ``name``, and Nesterov momentum where there is no momentum.

    The one place of both rules, which every trainer (fastmlp's and torch's) applies:
    Nesterov needs ``name == "momentum"`` and ``momentum > 0``.

    Parameters
    ----------
    name : str
        One of :data:`OPTIMIZERS`.
    momentum : float
        The momentum that ``"momentum"`` would use.
    nesterov : bool
        Nesterov momentum wanted.
    label : callable
        What a message calls a setting (``lambda name: f"--{name}"`` on a command line).

    Raises
    ------
    ValueError
        ``"optimizer: expected one of ('sgd', 'momentum', 'adam'), got 'rmsprop'"`` or
        ``"nesterov: needs optimizer 'momentum' and momentum > 0, got optimizer 'sgd', momentum 0.9"``.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"{label('optimizer')}: expected one of {OPTIMIZERS}, got {name!r}")
    if nesterov and (name != "momentum" or momentum == 0):
        raise ValueError(f"{label('nesterov')}: needs {label('optimizer')} 'momentum' and {label('momentum')} > 0, "
                         f"got {label('optimizer')} {name!r}, {label('momentum')} {momentum!r}")


def _check_hyper(name, value, *, low=0.0, high=None, low_open=False):
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a number, got {value!r}") from exc
    if not np.isfinite(value) or value < low or (low_open and value == low) or (high is not None and value >= high):
        bound = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name}: expected a finite value in {bound}, got {value!r}")
    return value


class Optimizer:
    """Base class: holds the model, the learning rate (a plain mutable attribute) and per-parameter state."""

    def __init__(self, model, lr, weight_decay):
        if not hasattr(model, "named_parameters"):
            raise TypeError(f"model: expected a model with named_parameters() (e.g. fastmlp.MLP), got {type(model).__name__}")
        self.model = model
        self.lr = _check_hyper("lr", lr, low_open=True)
        self.weight_decay = _check_hyper("weight_decay", weight_decay)
        self.state: dict[str, np.ndarray] = {}

    def _slots(self):
        """(name, flat param, flat grad, decay) for every parameter, read live from the modules."""
        for name, module, key in self.model.named_parameters():
            index = 0 if key == "weight" else 1  # the order of weight_and_bias() / grad_buffers()
            w = module.weight_and_bias()[index]
            g = module.grad_buffers()[index]
            yield name, w.reshape(-1), g.reshape(-1), (self.weight_decay if key == "weight" else 0.0)

    def _buffer(self, kind, name, like):
        key = f"{kind}.{name}"
        buf = self.state.get(key)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = self.state[key] = np.zeros_like(like)
        return buf

    def zero_grad(self):
        """Set every gradient buffer to zero (in place)."""
        for _, module, key in self.model.named_parameters():
            module.grads[key][...] = 0

    def step(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat dict of arrays (savez-able): hyperparameters, step count and state buffers (copies)."""
        out = {k: np.asarray(v) for k, v in self._hyper().items()}
        out.update({f"state.{k}": v.copy() for k, v in self.state.items()})
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (buffers must match the model's parameters)."""
        hyper = self._hyper()
        for key in hyper:
            if key not in state:
                raise KeyError(f"state: missing {key!r} (expected keys {sorted(hyper)} and state.*)")
            setattr(self, key, type(hyper[key])(np.asarray(state[key]).item()))
        params = {name: module.params[key] for name, module, key in self.model.named_parameters()}
        new_state = {}
        for key, value in state.items():
            if not key.startswith("state."):
                continue
            _, name = key[len("state."):].split(".", 1)
            if name not in params:
                raise KeyError(f"state: {key!r} names no parameter of the model (have {sorted(params)})")
            value = np.asarray(value)
            expected = params[name].reshape(-1)
            if value.shape != expected.shape:
                raise ValueError(f"state[{key!r}]: expected shape {expected.shape}, got {value.shape}")
            new_state[key[len("state."):]] = np.array(value, dtype=expected.dtype, order="C")
        self.state = new_state

    def _hyper(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay}


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, PyTorch's convention.

    v <- momentum v + (g + wd w);  w <- w - lr v  (Nesterov: w <- w - lr (g + wd w + momentum v)).

    With ``momentum=0``, ``MLP.train_step`` folds the update into the backward
    GEMM (W <- (1 - lr wd) W - lr dY^T X) and writes no gradient buffer.
    """

    def __init__(self, model, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(model, lr, weight_decay)
        self.momentum = _check_hyper("momentum", momentum, high=1.0)
        self.nesterov = bool(nesterov)
        check_optimizer("momentum", self.momentum, self.nesterov)

    @property
    def fused(self) -> bool:
        """True when the update can be folded into the backward pass (plain SGD)."""
        return self.momentum == 0.0

    def step(self):
        """Update every parameter in place from its ``grads``."""
        for name, w, g, wd in self._slots():
            v = self._buffer("momentum", name, w) if self.momentum else None
            K.sgd_update(w, g, v, self.lr, self.momentum, self.nesterov, wd)

    def _hyper(self):
        return {**super()._hyper(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight decay is L2 added to the gradient (as torch.optim.Adam)."""

    fused = False

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(model, lr, weight_decay)
        if len(betas) != 2:
            raise ValueError(f"betas: expected two numbers, got {betas!r}")
        self.beta1 = _check_hyper("betas[0]", betas[0], high=1.0)
        self.beta2 = _check_hyper("betas[1]", betas[1], high=1.0)
        self.eps = _check_hyper("eps", eps, low_open=True)
        self.t = 0

    def step(self):
        """Update every parameter in place from its ``grads``."""
        self.t += 1
        for name, w, g, wd in self._slots():
            m = self._buffer("exp_avg", name, w)
            v = self._buffer("exp_avg_sq", name, w)
            K.adam_update(w, g, m, v, self.lr, self.beta1, self.beta2, self.eps, wd, self.t)

    def _hyper(self):
        return {**super()._hyper(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "t": self.t}


def make_optimizer(name, model, lr, *, weight_decay=0.0, momentum=0.9, nesterov=False):
    """``"sgd"`` (plain), ``"momentum"`` (SGD with ``momentum``, optionally Nesterov) or ``"adam"``.

    Raises
    ------
    ValueError
        As :func:`check_optimizer` says.
    """
    check_optimizer(name, momentum, nesterov)
    if name == "sgd":
        return SGD(model, lr, weight_decay=weight_decay)
    if name == "momentum":
        return SGD(model, lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    return Adam(model, lr, weight_decay=weight_decay)
