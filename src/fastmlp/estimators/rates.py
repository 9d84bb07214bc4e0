"""What the ``sgd`` solver's ``learning_rate`` schedule does at the end of an epoch, as scikit-learn's ``SGDOptimizer``.

- ``'constant'``: nothing;
- ``'invscaling'``: after every epoch the rate is ``learning_rate_init / (t_ + 1) ** power_t``;
- ``'adaptive'``: when ``n_iter_no_change`` epochs have not improved by ``tol``,
  the rate is divided by 5 and training goes on, until the rate is at most 1e-6.

Adam ignores the schedule (every rule stops at once), as scikit-learn's ``AdamOptimizer``.
"""
from __future__ import annotations

__all__ = ["RateSchedule"]

#: scikit-learn's ``adaptive`` schedule stops once the rate is this small.
SMALLEST_ADAPTIVE_RATE = 1e-6


class RateSchedule:
    """The estimator's schedule, changing the rate of a :class:`fastmlp.estimators.network.Network`.

    Parameters
    ----------
    solver : {'adam', 'sgd'}
    learning_rate : {'constant', 'invscaling', 'adaptive'}
    learning_rate_init : float
    power_t : float
    """

    def __init__(self, solver: str, learning_rate: str, learning_rate_init: float, power_t: float):
        self.solver = solver
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t

    def iteration_ends(self, network, t: int) -> None:
        """After an epoch that brought the sample count to ``t`` (``t_``): ``invscaling``'s new rate."""
        if self.solver == "sgd" and self.learning_rate == "invscaling":
            network.learning_rate = float(self.learning_rate_init) / (t + 1) ** self.power_t

    def trigger_stopping(self, network, message: str, verbose: bool) -> bool:
        """No improvement for ``n_iter_no_change`` epochs (``message`` says which): stop, or (adaptive) rate / 5."""
        adaptive = self.solver == "sgd" and self.learning_rate == "adaptive"
        if adaptive and network.learning_rate > SMALLEST_ADAPTIVE_RATE:
            network.learning_rate = network.learning_rate / 5.0
            if verbose:
                print(f"{message} Setting learning rate to {network.learning_rate:f}")
            return False
        if verbose:
            print(f"{message}{' Learning rate too small.' if adaptive else ''} Stopping.")
        return True
