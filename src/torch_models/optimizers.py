"""The torch optimizers both trainers build, and the schedule of their hyper-parameters.

Why a module of its own: the MLP and the ConvNet trainers take the same optimisation flags
with fastmlp's meaning (``--optimizer/--momentum/--nesterov/--weight_decay``, weight decay
on weights only; ``--lr_schedule/--warmup_steps`` from :mod:`fastmlp.schedules`), so they
share one builder and one scheduler.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from fastmlp.optim import OPTIMIZERS, check_optimizer
from fastmlp.schedules import LearningRateSchedule

__all__ = ["OPTIMIZERS", "ScheduledHyperParameters", "make_optimizer", "parameter_groups"]


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
        For an unknown ``name``, or ``nesterov`` without ``"momentum"`` and ``momentum > 0``
        (:func:`fastmlp.optim.check_optimizer`), or a fastmlp optimizer with no torch counterpart here.
    """
    check_optimizer(name, momentum, nesterov)
    if name == "adam":
        return torch.optim.Adam(groups, lr=learning_rate)
    if name == "momentum":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, nesterov=nesterov)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate)
    raise ValueError(f"optimizer: the torch trainers have no counterpart of fastmlp's {name!r} "
                     "(they train with 'sgd', 'momentum' or 'adam')")


class ScheduledHyperParameters:
    """Sets an optimizer's learning rate (and, for one-cycle, its momentum) before every update.

    Each parameter group's rate is ``schedule(n)`` for update ``n``
    (:class:`fastmlp.schedules.LearningRateSchedule`, steps counted from 1), a pure function
    of the step: the state is the number of updates made and the horizon, so ``--resume``
    is exact. With ``cycle_momentum`` and a ``"onecycle"`` schedule the momentum of SGD
    with momentum, or Adam's beta1, follows ``schedule.momentum(n)`` as under PyTorch's
    ``OneCycleLR`` (plain SGD keeps no momentum).

    :meth:`load_state_dict` (called right after the optimizer's) also puts back the group
    settings the optimizer was built with (weight decay, momentum, Nesterov), which
    ``Optimizer.load_state_dict`` had replaced with the checkpoint's: this run's flags win.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Its ``param_groups`` are modified in place now and at every :meth:`step`.
    schedule : fastmlp.schedules.LearningRateSchedule
        ``total_steps`` is the horizon; a resumed run keeps the checkpoint's.
    cycle_momentum : bool
        Cycle the momentum under a one-cycle schedule.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LearningRateSchedule, *,
                 cycle_momentum: bool = False):
        self.optimizer = optimizer
        self.schedule = schedule
        self.updates_done = 0
        self.cycle_momentum = cycle_momentum and schedule.kind == "onecycle"
        self._group_settings = [{k: v for k, v in group.items() if k != "params"}
                                for group in optimizer.param_groups]
        self._apply()

    def _apply(self) -> None:
        step = self.updates_done + 1  # the next update's settings
        lr = self.schedule(step)
        momentum = self.schedule.momentum(step) if self.cycle_momentum else None
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if momentum is not None and "betas" in group:
                group["betas"] = (momentum, *group["betas"][1:])
            elif momentum is not None and group.get("momentum", 0) > 0:
                group["momentum"] = momentum

    def step(self) -> None:
        """Count the update just made; set the rate (and momentum) of the next one."""
        self.updates_done += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """``updates_done``, the schedule's ``kind``/``base_lr``/``warmup_steps``/``total_steps``/``min_lr``."""
        return {"updates_done": self.updates_done, **dataclasses.asdict(self.schedule)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (the update count and the horizon), with this run's group settings.

        Raises
        ------
        ValueError
            When ``state`` lacks a non-negative ``updates_done`` or a positive ``total_steps``.
        """
        try:
            updates_done, total_steps = int(state["updates_done"]), int(state["total_steps"])
            self.schedule = dataclasses.replace(self.schedule, total_steps=total_steps)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"--resume: the checkpoint's scheduler state {state!r} is not one this version "
                             f"reads ({type(exc).__name__}: {exc})") from None
        if updates_done < 0:
            raise ValueError(f"--resume: the checkpoint's scheduler has made {updates_done} updates")
        self.updates_done = updates_done
        for group, settings in zip(self.optimizer.param_groups, self._group_settings):
            group.update(settings)
        self._apply()
