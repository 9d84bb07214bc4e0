"""Optimizers that update a model's ``params`` in place with Cython kernels.

An optimizer is built on a model (anything with ``named_parameters()``, e.g.
``fastmlp.MLP``) and owns how each layer's parameters change. It is driven in
one of two ways:

- the course's loop, which fills every module's ``grads`` and then asks for an
  update (``params``/``grads`` are read live at every ``step()``)::

      loss = ce.forward(model.forward(x), t)
      model.backward(ce.backward(probs, t))
      optimizer.step()

- :meth:`fastmlp.MLP.train_step`, which calls :meth:`Optimizer.begin_step` once
  the batch's loss is known and then :meth:`Optimizer.update_layer` for every
  layer, output first: the optimizer computes that layer's gradients (or, for
  plain SGD, folds the update into the backward GEMM) and updates it. The model
  reads no attribute of the optimizer; these methods are the whole interface.

The learning rate of an update is passed in (``step(lr=...)``,
``train_step(..., lr=...)``, e.g. a schedule's value for that step); without one
the optimizer uses the rate it was built with (``lr``, which checkpoints keep).
Weight decay (L2, added to the gradient as in ``torch.optim``) applies to
weights only, not to biases.

Adding an optimizer: its class here (its ``_update`` of one layer),
its kernel in ``_kernels.pyx``, its NumPy twin in ``reference.py`` and one line
in :data:`REGISTRY`.
"""
from __future__ import annotations

import math

import numpy as np

from fastmlp import _kernels as K
from fastmlp.images import ImageBatch

__all__ = ["Adam", "OPTIMIZERS", "Optimizer", "REGISTRY", "SGD", "check_optimizer", "make_optimizer"]


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
    if name not in REGISTRY:
        raise ValueError(f"{label('optimizer')}: expected one of {OPTIMIZERS}, got {name!r}")
    if nesterov and (name != "momentum" or momentum == 0):
        raise ValueError(f"{label('nesterov')}: needs {label('optimizer')} 'momentum' and {label('momentum')} > 0, "
                         f"got {label('optimizer')} {name!r}, {label('momentum')} {momentum!r}")


def _check_hyper(name, value, *, low=0.0, high=None, low_open=False):
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a number, got {value!r}") from exc
    if not math.isfinite(value) or value < low or (low_open and value == low) or (high is not None and value >= high):
        bound = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name}: expected a finite value in {bound}, got {value!r}")
    return value


def _parameterised_modules(model) -> list[tuple]:
    """(module, weight name, bias name) of every parameterised module of ``model``, input to output."""
    names: dict[int, tuple] = {}
    for name, module, key in model.named_parameters():
        module_id, entry = id(module), names.get(id(module), (module, None, None))
        names[module_id] = (module, name, entry[2]) if key == "weight" else (module, entry[1], name)
    return list(names.values())


class Optimizer:
    """Base class: the model, the base learning rate, the weight decay and the per-parameter state.

    ``state`` maps ``"<kind>.<parameter name>"`` (e.g. ``"exp_avg.layers.0.weight"``) to
    a flat buffer of the parameter's size; the buffers of one layer and kind are
    views of one block (the weight's values, then the bias's), which the
    layer's kernel updates in one call.
    """

    _blocks = None  # kind -> one block per layer; made on first use (and after load_state_dict)
    _modules = None  # the model's parameterised modules (see _parameterised_modules); read on first use

    def __init__(self, model, lr, weight_decay):
        if not hasattr(model, "named_parameters"):
            raise TypeError(f"model: expected a model with named_parameters() (e.g. fastmlp.MLP), got {type(model).__name__}")
        self.model = model
        self.lr = _check_hyper("lr", lr, low_open=True)
        self.weight_decay = _check_hyper("weight_decay", weight_decay)
        self.state: dict[str, np.ndarray] = {}

    # -- the update, as MLP.train_step drives it ----------------------------

    def begin_step(self, model, lr=None) -> float:
        """Start one update of ``model``'s parameters; return its learning rate (``lr``, else the base rate).

        Raises
        ------
        ValueError
            If this optimizer was built on another model, or ``lr`` is negative or not finite.
        """
        if model is not self.model:
            raise ValueError("optimizer: it was built for a different model; pass an optimizer built on this MLP")
        return self.lr if lr is None else _check_hyper("lr", lr)

    def keeps_inputs(self) -> bool:
        """Whether :meth:`update_layer` needs the first layer's input as an array (else an ImageBatch may come)."""
        return True

    def update_layer(self, index, linear, dout, x_in, dx, act_input, lr) -> None:
        """Update layer ``index`` (a LinearModule) from the gradient of its output; write its input's gradient.

        Parameters
        ----------
        index : int
            The layer's place among the model's linear layers (0 is the first).
        linear : fastmlp.modules.LinearModule
            Its ``params`` are updated in place (``grads`` are filled where the optimizer uses them).
        dout : array (B, O)
            dL/d(the layer's output).
        x_in : array (B, I), or an ImageBatch for the first layer where :meth:`keeps_inputs` is False
            The layer's input.
        dx : array (B, I) or None
            Overwritten with dL/d(x_in), times the derivative of ``act_input`` read through x_in
            (a code of ``_kernels.ACTIVATIONS``), from the weights before the update; None skips it.
        lr : float
            The rate :meth:`begin_step` returned.
        """
        w, b = linear.weight_and_bias()
        dw, db = linear.grad_buffers()
        K.linear_backward(dw, db, dx, dout, x_in, w, act_input)
        self._update(index, w, b, dw, db, lr)

    def step(self, lr=None) -> None:
        """Update every parameter in place from its ``grads`` (the course's loop), at ``lr`` or the base rate."""
        lr = self.begin_step(self.model, lr)
        for index, (module, _, _) in enumerate(self._layers()):
            w, b = module.weight_and_bias()
            dw, db = module.grad_buffers()
            self._update(index, w, b, dw, db, lr)

    def _update(self, index, w, b, dw, db, lr):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- state --------------------------------------------------------------

    def _layers(self):
        if self._modules is None:
            self._modules = _parameterised_modules(self.model)
        return self._modules

    def _block(self, kind, index) -> np.ndarray:
        """Layer ``index``'s ``kind`` buffer (O*I + O,): ``state``'s weight and bias entries are views of it."""
        blocks = self._blocks if self._blocks is not None else {}
        self._blocks = blocks
        if kind not in blocks:
            blocks[kind] = [self._new_block(kind, *layer) for layer in self._layers()]
        return blocks[kind][index]

    def _new_block(self, kind, module, weight_name, bias_name) -> np.ndarray:
        w, b = module.weight_and_bias()
        block = np.zeros(w.size + b.size, dtype=w.dtype)
        for name, part in ((weight_name, block[: w.size]), (bias_name, block[w.size :])):
            old = self.state.get(f"{kind}.{name}")
            if old is not None and old.shape == part.shape:
                part[...] = old  # restored by load_state_dict
            self.state[f"{kind}.{name}"] = part
        return block

    def __getstate__(self):
        # A pickle would copy the blocks apart from the views that ``state`` holds: they are made again from it.
        return {**self.__dict__, "_blocks": None}

    def zero_grad(self):
        """Set every gradient buffer to zero (in place)."""
        for _, module, key in self.model.named_parameters():
            module.grads[key][...] = 0

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
        self.state, self._blocks = new_state, None  # the blocks are made again from these buffers

    def _hyper(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay}


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, PyTorch's convention.

    v <- momentum v + (g + wd w);  w <- w - lr v  (Nesterov: w <- w - lr (g + wd w + momentum v)).

    With ``momentum=0``, :meth:`update_layer` folds the update into the backward
    GEMM (W <- (1 - lr wd) W - lr dY^T X) and writes no gradient buffer.
    """

    def __init__(self, model, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(model, lr, weight_decay)
        self.momentum = _check_hyper("momentum", momentum, high=1.0)
        self.nesterov = bool(nesterov)
        check_optimizer("momentum", self.momentum, self.nesterov)

    def keeps_inputs(self) -> bool:
        return self.momentum != 0.0

    def update_layer(self, index, linear, dout, x_in, dx, act_input, lr) -> None:
        if self.momentum:
            super().update_layer(index, linear, dout, x_in, dx, act_input, lr)
            return
        w, b = linear.weight_and_bias()
        if isinstance(x_in, ImageBatch):  # the first layer's GEMM converts the pixels itself
            K.linear_backward_sgd_images(w, b, dout, x_in.pixels, x_in.index, x_in.offset, x_in.scale, lr,
                                         self.weight_decay)
        else:
            K.linear_backward_sgd(w, b, dx, dout, x_in, lr, self.weight_decay, act_input)

    def _update(self, index, w, b, dw, db, lr):
        v = self._block("momentum", index) if self.momentum else None
        K.sgd_update_layer(w, b, dw, db, v, lr, self.momentum, self.nesterov, self.weight_decay)

    def _hyper(self):
        return {**super()._hyper(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight decay is L2 added to the gradient (as torch.optim.Adam)."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(model, lr, weight_decay)
        if len(betas) != 2:
            raise ValueError(f"betas: expected two numbers, got {betas!r}")
        self.beta1 = _check_hyper("betas[0]", betas[0], high=1.0)
        self.beta2 = _check_hyper("betas[1]", betas[1], high=1.0)
        self.eps = _check_hyper("eps", eps, low_open=True)
        self.t = 0

    def begin_step(self, model, lr=None) -> float:
        lr = super().begin_step(model, lr)
        self.t += 1  # the bias correction counts this update
        return lr

    def _update(self, index, w, b, dw, db, lr):
        K.adam_update_layer(w, b, dw, db, self._block("exp_avg", index), self._block("exp_avg_sq", index), lr,
                            self.beta1, self.beta2, self.eps, self.weight_decay, self.t)

    def _hyper(self):
        return {**super()._hyper(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "t": self.t}


#: Every optimizer by its name in the run settings: how :func:`make_optimizer` builds it from
#: (model, lr, weight_decay, momentum, nesterov). The trainers' choices and checks read it.
REGISTRY = {
    "sgd": lambda model, lr, wd, momentum, nesterov: SGD(model, lr, weight_decay=wd),
    "momentum": lambda model, lr, wd, momentum, nesterov: SGD(model, lr, momentum, nesterov, weight_decay=wd),
    "adam": lambda model, lr, wd, momentum, nesterov: Adam(model, lr, weight_decay=wd),
}
#: The names of :data:`REGISTRY`, in its order.
OPTIMIZERS = tuple(REGISTRY)


def make_optimizer(name, model, lr, *, weight_decay=0.0, momentum=0.9, nesterov=False):
    """The optimizer :data:`REGISTRY` names ``name`` (``"sgd"``, ``"momentum"`` (SGD with ``momentum``,
    optionally Nesterov) or ``"adam"``) on ``model``, at base rate ``lr``.

    Raises
    ------
    ValueError
        As :func:`check_optimizer` says.
    """
    check_optimizer(name, momentum, nesterov)
    return REGISTRY[name](model, lr, weight_decay, momentum, nesterov)
