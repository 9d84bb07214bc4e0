"""The torch optimizers both trainers build from ``--optimizer/--momentum/--nesterov/--weight_decay``.

Why a module of its own: the MLP and the ConvNet trainers take the same optimisation flags
with fastmlp's meaning (weight decay on weights only), so they share one builder.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastmlp.optim import OPTIMIZERS

__all__ = ["OPTIMIZERS", "make_optimizer", "parameter_groups"]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer parameter groups: the weights (with ``weight_decay``), the rest (none).

    fastmlp decays weights only. Here the weights are the parameters with 2 or more
    dimensions (Linear and convolution kernels); biases and BatchNorm scales/shifts are
    1-D. Both groups always exist (the second one may be empty of decay but never of
    parameters), so a checkpoint's optimizer state fits whatever ``--weight_decay`` a
    resumed run uses.
    """
    decayed = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decayed, "weight_decay": float(weight_decay)},
            {"params": others, "weight_decay": 0.0}]


def make_optimizer(name: str, groups: list[dict[str, Any]], learning_rate: float, *, momentum: float = 0.9,
                   nesterov: bool = False) -> torch.optim.Optimizer:
    """The torch counterpart of ``fastmlp.optim.make_optimizer`` over parameter groups.

    ``"sgd"``: plain ``torch.optim.SGD``; ``"momentum"``: SGD with ``momentum`` (Nesterov
    with ``nesterov``); ``"adam"``: ``torch.optim.Adam``. Weight decay comes from the groups
    (see :func:`parameter_groups`); it is L2 added to the gradient, as in fastmlp.optim.

    Raises
    ------
    ValueError
        For an unknown ``name``, or ``nesterov`` without ``"momentum"`` and ``momentum > 0``.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if nesterov and (name != "momentum" or momentum == 0):
        raise ValueError(f"--nesterov needs --optimizer momentum and --momentum > 0, got --optimizer {name} "
                         f"--momentum {momentum}")
    if name == "adam":
        return torch.optim.Adam(groups, lr=learning_rate)
    if name == "momentum":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, nesterov=nesterov)
    return torch.optim.SGD(groups, lr=learning_rate)
