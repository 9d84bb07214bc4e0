"""Host NumPy batches onto the training device without stalling it.

Why a module of its own: ``tensor.to("cuda", non_blocking=True)`` only overlaps with GPU
work when the source lives in pinned (page-locked) memory, and a pinned buffer may only be
refilled once the copy out of it has finished; that bookkeeping is separate from the loop.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["HostToDevice"]


class HostToDevice:
    """Copy NumPy arrays to ``device``: zero-copy on the CPU, through pinned buffers on CUDA.

    On CUDA each array shape/dtype gets a ring of ``slots`` pinned buffers: an array is
    written into the next buffer of its ring and sent with ``non_blocking=True`` on the
    current stream, and a CUDA event recorded after the copy guards the buffer against being
    refilled (``slots`` calls later) before the copy has read it.

    Parameters
    ----------
    device : torch.device
    slots : int
        Pinned buffers per shape (2: one in flight while the next batch is written).
    """

    def __init__(self, device: torch.device, slots: int = 2):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots!r}")
        self.device = device
        self.slots = slots
        self._rings: dict[tuple, list] = {}  # (shape, dtype) -> [[pinned tensor, event or None], ...]
        self._next: dict[tuple, int] = {}

    def __call__(self, array: np.ndarray) -> torch.Tensor:
        """``array`` as a tensor on the device (on the CPU it shares ``array``'s memory).

        Parameters
        ----------
        array : ndarray, any shape
            Made C-contiguous if it is not; not modified.

        Returns
        -------
        torch.Tensor of ``array``'s shape and dtype
        """
        array = np.ascontiguousarray(array)
        if self.device.type != "cuda":
            return torch.from_numpy(array)
        key = (array.shape, array.dtype.str)
        ring = self._rings.setdefault(key, [])
        index = self._next.get(key, 0)
        self._next[key] = (index + 1) % self.slots
        if index == len(ring):
            ring.append([torch.empty(array.shape, dtype=torch.from_numpy(np.empty(0, array.dtype)).dtype,
                                    pin_memory=True), None])
        buffer, event = ring[index]
        if event is not None:
            event.synchronize()  # the copy issued `slots` calls ago has read this buffer
        buffer.numpy()[...] = array
        out = buffer.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        ring[index][1] = event
        return out
