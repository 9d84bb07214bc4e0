"""``fastmlp.schedules``: the learning rate of each update, for every ``--lr_schedule``."""
from __future__ import annotations

import math

import pytest

from fastmlp.schedules import ONECYCLE_FINAL_DIV, ONECYCLE_START_DIV, SCHEDULES, LearningRateSchedule


def test_learning_rate_schedules():
    constant = LearningRateSchedule(0.1, 100)
    assert [constant(s) for s in (1, 50, 100, 500)] == [0.1] * 4

    warm = LearningRateSchedule(0.1, 100, "constant", warmup_steps=10)
    assert warm(1) == pytest.approx(0.01) and warm(5) == pytest.approx(0.05) and warm(10) == 0.1 and warm(11) == 0.1

    cosine = LearningRateSchedule(0.1, 100, "cosine", warmup_steps=10)
    values = [cosine(s) for s in range(11, 101)]
    assert values[0] == 0.1
    assert all(a > b for a, b in zip(values, values[1:]))
    assert 0 < values[-1] < 0.001
    assert cosine(56) == pytest.approx(0.05)  # half-way: 45 of the 90 post-warm-up steps done

    step = LearningRateSchedule(1.0, 100, "step")
    assert step(1) == step(50) == 1.0
    assert step(51) == pytest.approx(0.1) and step(76) == pytest.approx(0.01)

    for bad in (dict(base_lr=0.0, total_steps=10), dict(base_lr=0.1, total_steps=0),
                dict(base_lr=0.1, total_steps=10, kind="linear"), dict(base_lr=0.1, total_steps=10, warmup_steps=-1)):
        with pytest.raises(ValueError):
            LearningRateSchedule(**bad)
    with pytest.raises(ValueError):
        constant(0)



def test_one_cycle_rises_over_30_percent_then_falls():
    total = 100
    schedule = LearningRateSchedule(0.1, total, "onecycle")
    rates = [schedule(s) for s in range(1, total + 1)]
    start, end = 0.1 / ONECYCLE_START_DIV, 0.1 / ONECYCLE_START_DIV / ONECYCLE_FINAL_DIV
    assert rates[0] == pytest.approx(start)
    peak = rates.index(max(rates))
    assert peak == 29 and rates[peak] == pytest.approx(0.1)  # update 30 of 100, PyTorch's pct_start 0.3
    assert all(a < b for a, b in zip(rates[:peak], rates[1:peak + 1]))
    assert all(a > b for a, b in zip(rates[peak:], rates[peak + 1:]))
    assert rates[-1] == pytest.approx(end) and schedule(total + 7) == rates[-1]  # kept past the end
    # --warmup_steps sets the length of the rise (the linear warm-up does not apply).
    short = LearningRateSchedule(0.1, total, "onecycle", warmup_steps=10)
    assert short(1) == pytest.approx(start) and short(10) == pytest.approx(0.1)
    assert short(5) == pytest.approx(start + (0.1 - start) * 0.5 * (1 - math.cos(math.pi * 4 / 9)))
    assert LearningRateSchedule(0.1, 1, "onecycle", warmup_steps=1)(1) == 0.1
    assert "onecycle" in SCHEDULES


@pytest.mark.parametrize("total, warmup", [(5000, 0), (100, 0), (7, 0), (3, 0), (50, 10)])
def test_one_cycle_is_pytorchs_one_cycle_lr(total, warmup):
    """Every update's rate equals torch.optim.lr_scheduler.OneCycleLR's (defaults), so trainers can move to it."""
    torch = pytest.importorskip("torch")
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    pct_start = warmup / total if warmup else 0.3
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total, pct_start=pct_start)
    ours = LearningRateSchedule(0.1, total, "onecycle", warmup_steps=warmup)
    for step in range(1, total + 1):
        assert ours(step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9, abs=1e-15), step
        optimizer.step()
        if step < total:
            scheduler.step()


@pytest.mark.parametrize("total, warmup", [(100, 0), (7, 0), (3, 0), (50, 10)])
def test_one_cycle_momentum_is_pytorchs(total, warmup):
    """The momentum OneCycleLR cycles (SGD's momentum, Adam's beta1) equals ``momentum(step)``."""
    torch = pytest.importorskip("torch")
    pct_start = warmup / total if warmup else 0.3
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    adam = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedulers = [torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total, pct_start=pct_start)
                  for opt in (sgd, adam)]
    ours = LearningRateSchedule(0.1, total, "onecycle", warmup_steps=warmup)
    for step in range(1, total + 1):
        assert ours.momentum(step) == pytest.approx(sgd.param_groups[0]["momentum"], rel=1e-12), step
        assert ours.momentum(step) == pytest.approx(adam.param_groups[0]["betas"][0], rel=1e-12), step
        for optimizer, scheduler in zip((sgd, adam), schedulers):
            optimizer.step()
            if step < total:
                scheduler.step()
    assert all(0.85 <= ours.momentum(step) <= 0.95 for step in range(1, total + 1))
    with pytest.raises(ValueError, match="only a 'onecycle' schedule"):
        LearningRateSchedule(0.1, 10, "cosine").momentum(1)
