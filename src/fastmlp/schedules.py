"""Learning-rate schedules: the learning rate as a pure function of the step.

Because the rate depends on nothing but the step number (no hidden state),
``--resume`` reproduces it exactly: every update's rate is
:meth:`LearningRateSchedule.__call__` of its step (fastmlp's trainer passes it to
``MLP.train_step``, torch's sets it on the parameter groups).

Steps are counted from 1: step ``s`` is the ``s``-th parameter update.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ONECYCLE_MOMENTUM", "SCHEDULES", "LearningRateSchedule"]

#: Names accepted by ``--lr_schedule`` / :class:`LearningRateSchedule`.
SCHEDULES = ("constant", "cosine", "step", "onecycle")

# The "step" schedule multiplies the rate by STEP_DECAY at these fractions of
# the steps after warm-up (the usual 50% / 75% milestones).
STEP_MILESTONES = (0.5, 0.75)
STEP_DECAY = 0.1

# "onecycle": PyTorch's OneCycleLR with its defaults (pct_start 0.3, cosine annealing,
# div_factor 25, final_div_factor 1e4), so a trainer moving from it keeps its rates.
ONECYCLE_RISE = 0.3
ONECYCLE_START_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4
#: OneCycleLR's momentum cycle (its base_momentum, max_momentum): high while the rate is
#: low, low at the peak rate. :meth:`LearningRateSchedule.momentum` gives it.
ONECYCLE_MOMENTUM = (0.85, 0.95)


@dataclass(frozen=True)
class LearningRateSchedule:
    """The learning rate of each update.

    Parameters
    ----------
    base_lr : float
        Peak learning rate (> 0): reached at the end of warm-up, kept by
        ``"constant"``, the start of the decay for ``"cosine"`` and ``"step"``.
    total_steps : int
        Number of updates of the whole run (>= 1); the decay schedules reach
        their end here.
    kind : {"constant", "cosine", "step", "onecycle"}
        ``"constant"``: ``base_lr``. ``"cosine"``: half a cosine from
        ``base_lr`` towards ``min_lr``, reached just after ``total_steps``. ``"step"``: times
        0.1 after 50% and again after 75% of the post-warm-up steps. ``"onecycle"``:
        PyTorch's ``OneCycleLR`` (defaults): half a cosine up from ``base_lr / 25`` to
        ``base_lr`` over the first 30% of the updates (or over ``warmup_steps`` when
        that is > 0), then half a cosine down to ``base_lr / 25 / 1e4`` at the last one.
    warmup_steps : int
        Linear warm-up from ``base_lr / warmup_steps`` to ``base_lr`` over the
        first ``warmup_steps`` updates (0: none). Applies to every ``kind`` but
        ``"onecycle"``, whose rise it sets the length of.
    min_lr : float
        Floor of the cosine schedule.
    """

    base_lr: float
    total_steps: int
    kind: str = "constant"
    warmup_steps: int = 0
    min_lr: float = 0.0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"kind must be one of {SCHEDULES}, got {self.kind!r}")
        if not (math.isfinite(self.base_lr) and self.base_lr > 0):
            raise ValueError(f"base_lr must be a finite number > 0, got {self.base_lr!r}")
        if int(self.total_steps) != self.total_steps or self.total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1, got {self.total_steps!r}")
        if int(self.warmup_steps) != self.warmup_steps or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not (0.0 <= self.min_lr <= self.base_lr):
            raise ValueError(f"min_lr must lie in [0, base_lr={self.base_lr}], got {self.min_lr!r}")

    def __call__(self, step: int) -> float:
        """Learning rate of update number ``step`` (1-based; steps past ``total_steps`` keep the last rate)."""
        if step < 1:
            raise ValueError(f"step must be >= 1 (steps count updates from 1), got {step}")
        if self.kind == "onecycle":
            return self._one_cycle(step)
        if step <= self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        if self.kind == "constant":
            return self.base_lr
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        # progress runs over [0, 1): the first post-warm-up update uses base_lr
        # and the last one a small but non-zero rate (no wasted final step).
        progress = min((step - self.warmup_steps - 1) / decay_steps, 1.0)
        if self.kind == "cosine":
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        # "step": count the milestones already passed.
        passed = sum(progress >= m for m in STEP_MILESTONES)
        return self.base_lr * STEP_DECAY**passed

    def momentum(self, step: int) -> float:
        """OneCycleLR's momentum (or Adam's beta1) for update ``step`` of a ``"onecycle"`` schedule.

        Half a cosine from 0.95 down to 0.85 while the rate rises, then back up to 0.95
        while it falls (:data:`ONECYCLE_MOMENTUM`); a trainer that cycles the momentum, as
        ``torch_models.train_convnet`` does, sets it from here before every update.

        Raises
        ------
        ValueError
            For a schedule of another ``kind`` (only one-cycle moves the momentum).
        """
        if self.kind != "onecycle":
            raise ValueError(f"only a 'onecycle' schedule cycles the momentum, this one is {self.kind!r}")
        rising, progress = self._one_cycle_position(step)
        low, high = ONECYCLE_MOMENTUM
        return _cosine_between(high, low, progress) if rising else _cosine_between(low, high, progress)

    def _one_cycle(self, step: int) -> float:
        """OneCycleLR's rate for update ``step``."""
        rising, progress = self._one_cycle_position(step)
        start = self.base_lr / ONECYCLE_START_DIV
        if rising:
            return _cosine_between(start, self.base_lr, progress)
        return _cosine_between(self.base_lr, start / ONECYCLE_FINAL_DIV, progress)

    def _one_cycle_position(self, step: int) -> tuple[bool, float]:
        """Whether update ``step`` is in the rise, and how far through its half (0..1).

        OneCycleLR's phases, on PyTorch's 0-based step count.
        """
        n = min(step, self.total_steps) - 1
        peak = (self.warmup_steps or ONECYCLE_RISE * self.total_steps) - 1  # index of the update at base_lr
        last = self.total_steps - 1
        if n <= peak and peak > 0:
            return True, n / peak
        if last <= peak:  # one update, which the rise (warmup_steps=1) puts at the peak
            return True, 1.0
        return False, (n - peak) / (last - peak)


def _cosine_between(start: float, end: float, progress: float) -> float:
    """Half a cosine from ``start`` (progress 0) to ``end`` (progress 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
