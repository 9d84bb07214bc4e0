"""Each training step's loss and correct count, kept on the device until the loop reads them.

Why a module of its own: reading a CUDA tensor's value (``.item()``, ``.tolist()``) makes
the host wait for the GPU to finish every queued kernel, so reading the loss at every step
serialises host and GPU. The values wait in a device buffer instead and are read (and,
under torchrun, all-reduced) together every few steps; on the CPU reading costs nothing and
a capacity of 1 keeps the loss check before every update.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["StepStats"]


class StepStats:
    """A device buffer of (loss, correct) rows, one per step, read in one transfer.

    Parameters
    ----------
    device : torch.device
        Where the losses live.
    capacity : int
        Steps held before :attr:`full` says they must be read.
    world_size : int
        Ranks whose rows :meth:`read` averages (losses) and sums (correct counts); the
        caller must call :meth:`read` at the same steps on every rank.
    """

    def __init__(self, device: torch.device, capacity: int, world_size: int = 1):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self._rows = torch.zeros(capacity, 2, dtype=torch.float64, device=device)
        self._steps: list[int] = []
        self.world_size = world_size

    @property
    def full(self) -> bool:
        return len(self._steps) == len(self._rows)

    def add(self, step: int, loss: torch.Tensor, correct: torch.Tensor) -> None:
        """Store ``step``'s mean batch loss and number of correct predictions (0-d tensors, not read)."""
        if self.full:
            raise RuntimeError("StepStats is full: read() it first")
        row = self._rows[len(self._steps)]
        row[0] = loss.detach()
        row[1] = correct.detach()
        self._steps.append(step)

    def read(self) -> list[tuple[int, float, float]]:
        """``[(step, loss, correct), ...]`` of the steps stored since the last read, then empty.

        Under torchrun the loss is the mean over ranks and ``correct`` the sum (a collective:
        every rank must call it at the same steps).
        """
        n = len(self._steps)
        rows = self._rows[:n]
        if self.world_size > 1:
            dist.all_reduce(rows)
            rows[:, 0] /= self.world_size
        values = rows.tolist()
        steps, self._steps = self._steps, []
        return [(step, loss, correct) for step, (loss, correct) in zip(steps, values)]
