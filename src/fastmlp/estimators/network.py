"""The estimators' network: a :class:`fastmlp.MLP` and a :mod:`fastmlp.optim` optimizer doing scikit-learn's sums.

scikit-learn's ``BaseMultilayerPerceptron`` fixes the numbers the estimators must
reproduce; this module makes fastmlp's parts compute them:

- the initialisation (``_init_coef``): every weight *and* bias uniform in
  ``+-sqrt(factor / (fan_in + fan_out))``, factor 2 for the logistic activation
  and 6 otherwise, drawn from the estimator's ``RandomState`` in scikit-learn's
  order (layer by layer, the ``(fan_in, fan_out)`` coefficients then the biases),
  so that one ``random_state`` starts both libraries from the same weights;
- the gradient (``_backprop``): ``(X^T delta + alpha W) / s`` for the weights and
  ``sum(delta) / s`` for the biases, ``s`` the batch's number of samples or its
  sum of sample weights, which is the core's L2 weight decay with
  ``weight_decay = alpha / s`` (biases are not decayed in either library);
- the reported loss: the batch's mean loss plus ``alpha / (2 s) * sum ||W||^2``,
  taken before the update;
- the optimizers' conventions: scikit-learn's momentum buffer holds
  ``-learning_rate * v`` for fastmlp's ``v``, so a change of learning rate
  rescales fastmlp's buffer; scikit-learn's Adam adds ``epsilon`` to
  ``sqrt(v)`` before the bias correction, which is fastmlp's Adam with
  ``eps = epsilon / sqrt(1 - beta_2^t)``.

Where the core has the output head (:data:`CORE_OUTPUTS`: every network but the
Poisson regressor's) and the sample weights are not negative, a batch is one
:meth:`fastmlp.MLP.train_step`; otherwise the forward and backward passes are
NumPy here (the same formulas) and the optimizer makes the update from the
``grads`` this module fills.

Shapes: B batch, D inputs, K outputs; ``units`` = [D, hidden..., K].
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["CORE_OUTPUTS", "Network"]

#: Output activations that are ``MLP``'s fused output heads (each with its loss); any hidden activation fuses.
CORE_OUTPUTS = ("softmax", "logistic", "identity")


def _relu(z):
    np.maximum(z, 0, out=z)


def _tanh(z):
    np.tanh(z, out=z)


def _logistic(z):
    from scipy.special import expit  # no overflow warning for very negative z

    expit(z, out=z)


def _softmax(z):
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)


def _identity(z):
    pass


def _exp(z):
    np.exp(z, out=z)


#: In-place activation of a pre-activation array, by scikit-learn's name.
ACTIVATIONS = {"relu": _relu, "tanh": _tanh, "logistic": _logistic, "identity": _identity,
               "softmax": _softmax, "exp": _exp}


def _backprop_activation(name: str, a: np.ndarray, delta: np.ndarray) -> None:
    """delta *= f'(z), written with the activation's output ``a`` = f(z)."""
    if name == "relu":
        delta[a == 0] = 0
    elif name == "tanh":
        delta *= 1 - a * a
    elif name == "logistic":
        delta *= a * (1 - a)


def _clipped(p: np.ndarray) -> np.ndarray:
    eps = np.finfo(p.dtype).eps
    return np.clip(p, eps, 1 - eps)


def batch_loss(out_activation: str, loss: str, y: np.ndarray, out: np.ndarray, sample_weight) -> float:
    """scikit-learn's loss of outputs ``out`` (B, K) against targets ``y`` (B, K), weighted mean over the batch."""
    from scipy.special import xlogy

    if out_activation == "softmax":
        per_output = -np.average(xlogy(y, _clipped(out)), weights=sample_weight, axis=0)
        return float(per_output.sum())
    if out_activation == "logistic":
        p = _clipped(out)
        return float(-np.average(xlogy(y, p) + xlogy(1 - y, 1 - p), weights=sample_weight, axis=0).sum())
    if loss == "poisson":
        return float(np.average(xlogy(y, y / out) - y + out, weights=sample_weight, axis=0).sum())
    return float(0.5 * np.average((y - out) ** 2, weights=sample_weight, axis=0).mean())


class Network:
    """The parameters (in a :class:`fastmlp.MLP`), the optimizer and scikit-learn's training sums.

    Parameters
    ----------
    model : fastmlp.MLP
        Holds the parameters: layer ``l``'s weight (out, in) is the transpose
        of scikit-learn's ``coefs_[l]`` (in, out).
    activation, out_activation : str
        scikit-learn's names (``"relu"``, ``"tanh"``, ``"logistic"``,
        ``"identity"``; ``"softmax"``, ``"logistic"``, ``"identity"``, ``"exp"``).
    loss : str
        ``"log_loss"``, ``"squared_error"`` or ``"poisson"``.
    """

    def __init__(self, model, activation: str, out_activation: str, loss: str):
        self.model = model
        self.activation = activation
        self.out_activation = out_activation
        self.loss = loss
        self.optimizer = None
        self.epsilon = 0.0

    @classmethod
    def create(cls, units: list[int], activation: str, out_activation: str, loss: str, dtype,
               random_state: np.random.RandomState) -> "Network":
        """A network of layer widths ``units`` initialised as scikit-learn's ``_init_coef`` would."""
        from fastmlp.mlp import MLP

        # the exponential output (Poisson loss) has no head in the core: NumPy computes it after the identity
        output = out_activation if out_activation in CORE_OUTPUTS else "identity"
        model = MLP(units[0], units[1:-1], units[-1], dtype=dtype, seed=0, init="xavier", activation=activation,
                    output=output)
        factor = 2.0 if activation == "logistic" else 6.0
        for lin, fan_in, fan_out in zip(model.linears, units[:-1], units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            weight, bias = lin.weight_and_bias()
            weight[...] = random_state.uniform(-bound, bound, (fan_in, fan_out)).T
            bias[...] = random_state.uniform(-bound, bound, fan_out)
        return cls(model, activation, out_activation, loss)

    def __setstate__(self, state: dict) -> None:
        # A pickle loaded from a read-only memory map (joblib does that) gives read-only
        # arrays; the kernels update parameters, gradients and optimizer state in place.
        self.__dict__.update(state)
        stores = [store for lin in self.model.linears for store in (lin.params, lin.grads)]
        if self.optimizer is not None:
            stores.append(self.optimizer.state)
        for store in stores:
            for key, value in store.items():
                if isinstance(value, np.ndarray) and not value.flags.writeable:
                    store[key] = value.copy()

    # ---------------------------------------------------------------- parameters
    @property
    def coefs(self) -> list[np.ndarray]:
        """Views (in, out) of every layer's weight (writable: they are the live parameters)."""
        return [weight.T for weight in self._weights()]

    def _weights(self):
        return [lin.params["weight"] for lin in self.model.linears]

    @property
    def intercepts(self) -> list[np.ndarray]:
        """The live bias vectors (out,)."""
        return [lin.params["bias"] for lin in self.model.linears]

    @property
    def dtype(self) -> np.dtype:
        return self.model.dtype

    def state(self) -> dict[str, np.ndarray]:
        """Copies of the parameters (for early stopping's best weights)."""
        return self.model.state_dict()

    def load(self, state: dict[str, np.ndarray]) -> None:
        """Put back parameters from :meth:`state`."""
        self.model.load_state_dict(state)

    # ---------------------------------------------------------------- optimizer
    def new_optimizer(self, solver: str, learning_rate_init: float, *, momentum: float, nesterov: bool,
                      beta_1: float, beta_2: float, epsilon: float) -> None:
        """A fresh optimizer (state zeroed), as scikit-learn makes one at every ``fit``."""
        from fastmlp import optim

        self.epsilon, self.rate = 0.0, float(learning_rate_init)
        if solver == "adam":
            self.optimizer = optim.Adam(self.model, learning_rate_init, betas=(beta_1, beta_2), eps=epsilon)
            self.epsilon = epsilon
        elif momentum == 0:
            self.optimizer = optim.SGD(self.model, learning_rate_init)
        else:
            self.optimizer = optim.SGD(self.model, learning_rate_init, momentum=momentum, nesterov=nesterov)

    @property
    def learning_rate(self) -> float:
        """The rate of the next updates (passed to each one; the optimizer keeps ``learning_rate_init``)."""
        return self.rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        # scikit-learn keeps velocities in units of the old rate; fastmlp's buffer is rate-free.
        scale = self.rate / value
        for key, buffer in self.optimizer.state.items():
            if key.startswith("momentum."):
                buffer *= scale
        self.rate = float(value)

    # ---------------------------------------------------------------- training
    def uses_core(self, sample_weight) -> bool:
        """Whether batches of these samples are trained by ``MLP.train_step`` (fused kernels).

        The core's heads take weights >= 0; scikit-learn also accepts negative ones.
        """
        weights_ok = sample_weight is None or bool(np.all(sample_weight >= 0))
        return self.out_activation in CORE_OUTPUTS and weights_ok

    def train_batch(self, x: np.ndarray, targets: np.ndarray, sample_weight, alpha: float, *, fused: bool) -> float:
        """One update on the batch; returns scikit-learn's loss before it (penalty included).

        Parameters
        ----------
        x : ndarray (B, D)
            C-contiguous, of the network's dtype.
        targets : ndarray (B,) of int, or (B, K)
            The target rows (one-hot or indicator rows for classifiers), or
            class indices for a fused softmax head (what its loss kernel reads).
        sample_weight : ndarray (B,) or None
        alpha : float
            scikit-learn's L2 penalty.
        fused : bool
            Train with ``MLP.train_step`` (where :meth:`uses_core`), else NumPy backprop.
        """
        total = x.shape[0] if sample_weight is None else float(sample_weight.sum())
        if total <= 0:  # scikit-learn divides by it too (and fails with ZeroDivisionError)
            raise ValueError(f"sample_weight: a batch of {x.shape[0]} samples has weights summing to {total}; each "
                             "batch needs a positive sum (shuffle=True or a larger batch_size mixes the samples)")
        penalty = 0.0
        if alpha:
            # the core's (out, in) weights are contiguous: vdot reads them without a copy (a plain loop: this
            # runs at every batch, where a generator costs as much as the sums)
            squares = 0.0
            for weight in self._weights():
                squares += np.vdot(weight, weight)
            penalty = 0.5 * alpha * float(squares) / total
        self.optimizer.weight_decay = alpha / total
        if self.epsilon:  # Adam
            self.optimizer.eps = self.epsilon / math.sqrt(1.0 - self.optimizer.beta2 ** (self.optimizer.t + 1))
        if fused:
            result = self.model.train_step(x, targets, self.optimizer, lr=self.rate, sample_weight=sample_weight)
            return result.loss + penalty
        return self._numpy_step(x, targets, sample_weight, total) + penalty

    def _numpy_step(self, x, y, sample_weight, total) -> float:
        activations = self._forward(x, keep=True)
        out = activations[-1]
        loss = batch_loss(self.out_activation, self.loss, y, out, sample_weight)
        delta = out - y  # the canonical link of each output/loss pair
        if sample_weight is not None:
            delta *= sample_weight.reshape(-1, 1).astype(delta.dtype, copy=False)
        for layer in range(len(self.model.linears) - 1, -1, -1):
            lin = self.model.linears[layer]
            dw, db = lin.grad_buffers()
            np.dot(delta.T, activations[layer], out=dw)
            dw /= total
            np.sum(delta, axis=0, out=db)
            db /= total
            if layer:
                delta = delta @ lin.params["weight"]
                _backprop_activation(self.activation, activations[layer], delta)
        self.optimizer.step(lr=self.rate)
        return loss

    def _forward(self, x: np.ndarray, *, keep: bool) -> list[np.ndarray]:
        """[x, a_1, ..., out]: every layer's activation (only x and out without ``keep``)."""
        activations = [x]
        h = x
        last = len(self.model.linears) - 1
        for layer, lin in enumerate(self.model.linears):
            h = h @ lin.params["weight"].T
            h += lin.params["bias"]
            ACTIVATIONS[self.out_activation if layer == last else self.activation](h)
            if keep or layer == last:
                activations.append(h)
        return activations

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The output activations (B, K) for x (B, D)."""
        if self.out_activation in CORE_OUTPUTS:
            return self.model.predict_proba(x)
        return self._forward(x, keep=False)[-1]
