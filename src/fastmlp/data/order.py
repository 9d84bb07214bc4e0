"""The order a :class:`~fastmlp.data.DataSet` serves its examples in: shuffled epochs, resumable exactly.

:class:`EpochOrder` knows nothing of images or labels, only row numbers 0..n-1: it
deals them out batch by batch, one fresh random permutation per epoch, and its
whole position (permutation, place in it, epochs done, generator) is a state that
a checkpoint can store and restore.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

__all__ = ["BIT_GENERATORS", "STATE_FORMAT", "EpochOrder", "check_batch_size"]

#: What ``get_state()["format"]`` says; the DataSet's name stays in it so that old checkpoints resume.
STATE_FORMAT = "fastmlp.data.DataSet/1"
#: Bit generators a saved state may name (``np.random.<name>()`` is called on it).
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
_STATE_KEYS = ("format", "num_examples", "permutation", "index_in_epoch", "epochs_completed", "rng_state")


def check_batch_size(batch_size: Any) -> None:
    """Raise ValueError unless ``batch_size`` is a positive int (a bool is not one)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _array_to_list(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()  # e.g. MT19937's key array
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _as_int(value: Any, key: str) -> int:
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype.kind not in "iu":
        raise ValueError(f"state[{key!r}] should be an int, got {value!r:.100}")
    return int(arr)


def _as_str(value: Any, key: str) -> str:
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype.kind not in "US":
        raise ValueError(f"state[{key!r}] should be a str, got {value!r:.100}")
    item = arr.item()
    return item.decode() if isinstance(item, bytes) else item


def _bit_generator(text: str) -> np.random.BitGenerator:
    """A bit generator restored from the JSON of ``BitGenerator.state``; only known generators are built."""
    try:
        state = json.loads(text)
        name = state["bit_generator"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"state['rng_state'] is not a NumPy bit-generator state ({exc})") from exc
    if name not in BIT_GENERATORS:
        raise ValueError(f"state['rng_state'] names the bit generator {name!r}; expected one of {BIT_GENERATORS}")
    bit_generator = getattr(np.random, name)()
    try:
        bit_generator.state = state
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"state['rng_state'] is not a valid {name} state ({exc})") from exc
    return bit_generator


def _permutation(value: Any, n: int) -> np.ndarray:
    """``state['permutation']`` as int64, checked to be a permutation of 0..n-1."""
    perm = np.asarray(value)
    if perm.shape != (n,) or perm.dtype.kind not in "iu":
        raise ValueError(f"state['permutation'] should be {n} ints, got {perm.dtype} of shape {perm.shape}")
    perm = perm.astype(np.int64)
    if perm.min() < 0 or perm.max() >= n or np.bincount(perm, minlength=n).max() != 1:
        raise ValueError("state['permutation'] is not a permutation of 0..num_examples-1")
    return perm


class EpochOrder:
    """Row numbers 0..n-1 dealt out in batches, one fresh random permutation per epoch.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws every epoch's permutation; a DataSet's augmentation draws from it too,
        so that one state restores both.
    permutation : ndarray, shape (n,) int
        The current epoch's order.
    index_in_epoch : int
        Rows of ``permutation`` already dealt out (0 <= index_in_epoch < n).
    epochs_completed : int
        Finished passes.

    Notes
    -----
    :meth:`shuffled` makes a fresh order. When fewer rows than a batch needs remain in
    the epoch, the batch takes them, the rows are shuffled again and the batch is
    filled from the start of the new epoch, so each row is dealt exactly once per epoch.
    """

    def __init__(self, rng: np.random.Generator, permutation: np.ndarray, index_in_epoch: int = 0,
                 epochs_completed: int = 0):
        self._rng = rng
        self._perm = permutation
        self._index_in_epoch = index_in_epoch
        self._epochs_completed = epochs_completed

    @classmethod
    def shuffled(cls, num_examples: int, seed: int | np.random.SeedSequence | None) -> "EpochOrder":
        """A first epoch of ``num_examples`` rows in a random order drawn from a generator seeded with ``seed``."""
        rng = np.random.default_rng(seed)
        return cls(rng, rng.permutation(num_examples))

    @property
    def rng(self) -> np.random.Generator:
        """The generator of the permutations (replaced by :meth:`set_state`)."""
        return self._rng

    @property
    def num_examples(self) -> int:
        return int(self._perm.shape[0])

    @property
    def epochs_completed(self) -> int:
        """Number of finished passes over the rows."""
        return self._epochs_completed

    @property
    def index_in_epoch(self) -> int:
        """Rows of the current epoch already dealt out."""
        return self._index_in_epoch

    def take(self, batch_size: int) -> np.ndarray:
        """Row numbers of the next batch, shape (batch_size,); advances the position, the epoch counter and the generator.

        ``batch_size`` (> 0) may exceed what is left of the epoch or even the number of rows.
        """
        check_batch_size(batch_size)
        n = self.num_examples
        parts, needed = [], int(batch_size)
        while needed:
            take = min(needed, n - self._index_in_epoch)
            parts.append(self._perm[self._index_in_epoch : self._index_in_epoch + take])
            self._index_in_epoch += take
            needed -= take
            if self._index_in_epoch == n:  # epoch done: reshuffle for the next one
                self._epochs_completed += 1
                self._perm = self._rng.permutation(n)
                self._index_in_epoch = 0
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def get_state(self) -> dict[str, Any]:
        """Everything :meth:`set_state` needs to continue exactly from here.

        Returns
        -------
        dict
            Values that ``np.savez`` and ``json`` both accept (after
            ``.tolist()`` for the array):

            - ``"format"`` str: :data:`STATE_FORMAT`,
            - ``"num_examples"`` int,
            - ``"permutation"`` int64 ndarray (num_examples,): order of the current epoch,
            - ``"index_in_epoch"`` int: rows of that order already dealt out,
            - ``"epochs_completed"`` int,
            - ``"rng_state"`` str: JSON of ``Generator.bit_generator.state``
              (a string because PCG64's 128-bit integers fit no NumPy dtype).

            Copies: later batches do not change it.
        """
        return {
            "format": STATE_FORMAT,
            "num_examples": self.num_examples,
            "permutation": self._perm.astype(np.int64, copy=True),
            "index_in_epoch": int(self._index_in_epoch),
            "epochs_completed": int(self._epochs_completed),
            "rng_state": json.dumps(self._rng.bit_generator.state, default=_array_to_list),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (also after ``np.savez``/``np.load`` or JSON).

        Values may be 0-d arrays (as ``np.load`` gives them) or lists.
        Replaces the position, epoch counter, permutation and generator.

        Raises
        ------
        ValueError
            A missing key, a value of the wrong type, a state taken from a data set
            of another size, or a generator outside :data:`BIT_GENERATORS`.
        """
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"DataSet state lacks {missing}; expected the keys {list(_STATE_KEYS)} from get_state()")
        fmt = _as_str(state["format"], "format")
        if fmt != STATE_FORMAT:
            raise ValueError(f"state['format'] is {fmt!r}, expected {STATE_FORMAT!r}")
        n = _as_int(state["num_examples"], "num_examples")
        if n != self.num_examples:
            raise ValueError(f"state is for a data set of {n} examples, this one has {self.num_examples}")
        perm = _permutation(state["permutation"], n)
        index = _as_int(state["index_in_epoch"], "index_in_epoch")
        if not 0 <= index < n:
            raise ValueError(f"state['index_in_epoch'] should lie in 0..{n - 1}, got {index}")
        epochs = _as_int(state["epochs_completed"], "epochs_completed")
        if epochs < 0:
            raise ValueError(f"state['epochs_completed'] should be >= 0, got {epochs}")
        self._rng = np.random.Generator(_bit_generator(_as_str(state["rng_state"], "rng_state")))
        self._perm, self._index_in_epoch, self._epochs_completed = perm, index, epochs
