"""The course's ``DataSet``: shuffled mini-batches with exact, resumable epoch order.

A DataSet holds its images either as model inputs already (any float array) or
as uint8 pixels plus a :class:`~fastmlp.data.preprocessing.Preprocessing`, which
turns each batch into floats as it is served (what ``get_cifar10`` returns).
"""
from __future__ import annotations

import json
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from fastmlp.data.preprocessing import Preprocessing, augment_batch
from fastmlp.images import ImageBatch

__all__ = ["DataSet"]

_STATE_FORMAT = "fastmlp.data.DataSet/1"
#: Bit generators a saved state may name (``np.random.<name>()`` is called on it).
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


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


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _spans(n: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of rows 0..n in pieces of ``size``, the last one shorter."""
    for start in range(0, n, size):
        yield start, min(start + size, n)


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


class DataSet:
    """Images and labels served in shuffled mini-batches (the course's ``DataSet``).

    Parameters
    ----------
    images : ndarray, shape (n, 3, 32, 32) (any (n, ...) without ``augment``)
        Model inputs (float), or uint8 pixels when ``preprocessing`` is given.
        Kept by reference, never modified; batches are gathered copies.
    labels : ndarray, shape (n,) int class indices or (n, n_classes) one-hot
        Kept by reference, never modified.
    seed : int, numpy.random.SeedSequence or None
        Seeds this data set's own ``numpy.random.Generator`` (shuffling and
        augmentation); None draws fresh entropy.
    augment : bool
        Apply :func:`augment_batch` (random crop, pad 4, and horizontal flip) to
        each batch from :meth:`next_batch` (not to :meth:`as_arrays`), after the
        preprocessing (so the zero padding is the mean pixel for centred data).
    flatten : bool
        :meth:`next_batch` and :meth:`as_arrays` return x of shape (batch, D).
    preprocessing : Preprocessing or None
        Turns uint8 ``images`` into model inputs batch by batch.
    class_names : sequence of str or None
        The name of each class (kept as the tuple :attr:`class_names`); None when unknown.

    Notes
    -----
    Epoch semantics: the order of every epoch (the first one too) is a fresh
    random permutation. When fewer examples than ``batch_size`` remain in the
    epoch, the batch takes them, the data set is reshuffled and the batch is
    filled from the start of the new epoch, so every example is served exactly
    once per epoch. ``epochs_completed`` counts finished passes.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        seed: int | np.random.SeedSequence | None = None,
        augment: bool = False,
        flatten: bool = False,
        preprocessing: Preprocessing | None = None,
        class_names: Sequence[str] | None = None,
    ):
        if not isinstance(images, np.ndarray) or images.ndim < 2 or images.shape[0] == 0:
            got = f"shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise TypeError(f"images must be a non-empty ndarray of shape (n, 3, 32, 32), got {got}")
        if not isinstance(labels, np.ndarray) or labels.ndim not in (1, 2):
            got = f"shape {labels.shape}" if isinstance(labels, np.ndarray) else type(labels).__name__
            raise TypeError(f"labels must be an ndarray of shape (n,) or (n, n_classes), got {got}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"images and labels must have the same length: images {images.shape}, labels {labels.shape}"
            )
        if augment and images.ndim != 4:
            raise ValueError(f"augment=True needs images of shape (n, channels, height, width), got {images.shape}")
        if preprocessing is not None:
            if images.dtype != np.uint8 or int(np.prod(images.shape[1:])) != preprocessing.offset.shape[0]:
                raise ValueError(f"images: with a preprocessing, expected uint8 images of "
                                 f"{preprocessing.offset.shape[0]} values each, got {images.dtype} {images.shape}")
        self._images = images
        self._labels = labels
        self._preprocessing = preprocessing
        self.class_names = None if class_names is None else tuple(class_names)
        self._converted: np.ndarray | None = None
        self._batch_buffer: np.ndarray | None = None
        self.augment = bool(augment)
        self.flatten = bool(flatten)
        self._rng = np.random.default_rng(seed)
        self._perm = self._rng.permutation(self.num_examples)
        self._index_in_epoch = 0
        self._epochs_completed = 0

    def reseeded(self, seed: int | np.random.SeedSequence | None, *, augment: bool | None = None,
                 flatten: bool | None = None) -> "DataSet":
        """A DataSet over the same stored images, labels and preprocessing with its own seeded order."""
        return DataSet(self._images, self._labels, seed=seed, preprocessing=self._preprocessing,
                       class_names=self.class_names, augment=self.augment if augment is None else augment,
                       flatten=self.flatten if flatten is None else flatten)

    @property
    def images(self) -> np.ndarray:
        """All model inputs, shape (n, 3, 32, 32), in their original order.

        The stored array itself when the DataSet holds floats; with a preprocessing,
        the whole set converted once on first access and kept (n * D floats of memory:
        :meth:`next_batch` and :meth:`batches` convert one batch at a time instead).
        """
        if self._preprocessing is None:
            return self._images
        if self._converted is None:
            self._converted = self._preprocessing.apply(self._images).reshape(self._images.shape)
        return self._converted

    @property
    def raw_images(self) -> np.ndarray:
        """The stored images (uint8 pixels with a preprocessing, else the model inputs); not a copy."""
        return self._images

    @property
    def preprocessing(self) -> Preprocessing | None:
        return self._preprocessing

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the model inputs this DataSet serves."""
        return self._preprocessing.dtype if self._preprocessing is not None else self._images.dtype

    @property
    def labels(self) -> np.ndarray:
        """All labels, shape (n,) or (n, n_classes), in their original order (not a copy)."""
        return self._labels

    @property
    def num_examples(self) -> int:
        return int(self._images.shape[0])

    @property
    def epochs_completed(self) -> int:
        """Number of finished passes over the data."""
        return self._epochs_completed

    @property
    def index_in_epoch(self) -> int:
        """Examples of the current epoch already served."""
        return self._index_in_epoch

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        stored = f"{self._images.dtype}{list(self._images.shape[1:])}"
        if self._preprocessing is not None:
            stored += f" -> {self._preprocessing.kind} {self.dtype}"
        return (
            f"DataSet(num_examples={self.num_examples}, images={stored}, "
            f"labels={self._labels.dtype}{list(self._labels.shape[1:])}, augment={self.augment}, "
            f"flatten={self.flatten}, epochs_completed={self._epochs_completed})"
        )

    def _next_indices(self, batch_size: int) -> np.ndarray:
        """Row numbers of the next batch; advances the position, the epoch counter and the generator."""
        _check_batch_size(batch_size)
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

    def _inputs(self, index: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """Model inputs (m, D) of rows ``index``, written into ``out`` when given."""
        if self._preprocessing is not None:
            return self._preprocessing.apply(self._images, index, out)
        return np.take(self._images.reshape(self.num_examples, -1), index, axis=0, out=out)

    def _check_out(self, out: np.ndarray | None, batch_size: int) -> None:
        if out is None:
            return
        width = int(np.prod(self._images.shape[1:]))
        if (not isinstance(out, np.ndarray) or out.dtype != self.dtype or out.shape != (batch_size, width)
                or not out.flags.c_contiguous):
            got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise ValueError(f"out: expected a C-contiguous {self.dtype} array of shape ({batch_size}, {width}), "
                             f"got {got}")

    def next_batch(self, batch_size: int, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The next ``batch_size`` examples (the course's epoch semantics).

        Parameters
        ----------
        batch_size : int
            > 0. May exceed what is left of the epoch (the batch then spans two
            epochs) or even ``num_examples``.
        out : ndarray (batch_size, D) of :attr:`dtype`, C-contiguous, optional
            Filled with the batch's inputs and returned (reshaped unless ``flatten``),
            so a training loop can reuse one buffer. Ignored with ``augment``.

        Returns
        -------
        x : ndarray, shape (batch_size, 3, 32, 32), or (batch_size, D) with ``flatten``
            Preprocessed (and augmented when ``augment``).
        y : ndarray, shape (batch_size,) or (batch_size, n_classes)
            A new array.

        Advances the position, the epoch counter and the generator.
        """
        index = self._next_indices(batch_size)
        self._check_out(out, len(index))
        x = self._inputs(index, None if self.augment else out)
        if self.augment:
            x = augment_batch(x.reshape(len(index), *self._images.shape[1:]), self._rng)
        x = x.reshape(len(index), -1) if self.flatten else x.reshape(len(index), *self._images.shape[1:])
        return x, self._labels[index]

    @property
    def serves_image_batches(self) -> bool:
        """Whether :meth:`next_image_batch` can serve this DataSet (uint8 pixels, no augmentation)."""
        return self._preprocessing is not None and not self.augment

    def next_image_batch(self, batch_size: int) -> tuple[ImageBatch, np.ndarray]:
        """The batch :meth:`next_batch` would serve, as uint8 rows the model converts itself.

        Advances the position, the epoch counter and the generator exactly as
        :meth:`next_batch` does (the two may be mixed), so x.to_array() equals
        next_batch's x (flattened). ``MLP.train_step`` converts an
        :class:`~fastmlp.images.ImageBatch` inside its first layer.

        Returns
        -------
        x : fastmlp.images.ImageBatch
            Rows of :attr:`raw_images` (viewed as (n, D)) and the preprocessing's offset and scale.
        y : ndarray, shape (batch_size,) or (batch_size, n_classes)
            A new array.

        Raises
        ------
        ValueError
            When the DataSet holds model inputs rather than uint8 pixels, or augments.
        """
        if not self.serves_image_batches:
            why = "it augments its batches" if self.augment else "it holds model inputs, not uint8 pixels"
            raise ValueError(f"next_image_batch: this DataSet cannot serve uint8 batches ({why}); use next_batch")
        index = self._next_indices(batch_size)
        pixels = self._images.reshape(self.num_examples, -1)
        prep = self._preprocessing
        return ImageBatch(pixels, index, prep.offset, prep.scale), self._labels[index]

    def batches(self, batch_size: int, *, flatten: bool | None = None,
                limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The first ``limit`` examples (all by default) in their original order, ``batch_size`` at a time.

        For evaluation: no augmentation. Each x is converted into one buffer that the
        next batch (and the next call) reuses: use it before asking for the next.
        Does not touch the batch order of :meth:`next_batch`.
        """
        flatten = self.flatten if flatten is None else flatten
        _check_batch_size(batch_size)
        n, shape = self._evaluation_rows(limit), self._images.shape[1:]
        width, rows = int(np.prod(shape)), min(batch_size, n)
        buffer = self._batch_buffer  # kept between calls: a fresh 12 MB array per evaluation costs page faults
        if buffer is None or buffer.shape[0] < rows:
            buffer = self._batch_buffer = np.empty((rows, width), dtype=self.dtype)
        for start, stop in _spans(n, batch_size):
            if self._preprocessing is not None:
                x = self._preprocessing.apply(self._images[start:stop], None, buffer[: stop - start])
            else:
                x = self._images[start:stop].reshape(stop - start, -1)
            yield (x if flatten else x.reshape(stop - start, *shape)), self._labels[start:stop]

    def _evaluation_rows(self, limit: int | None) -> int:
        """How many examples, from the first, an evaluation limited to ``limit`` (None: all) covers."""
        return self.num_examples if limit is None else min(int(limit), self.num_examples)

    def image_batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[tuple[ImageBatch, np.ndarray]]:
        """:meth:`batches` as uint8 rows the model converts itself: (ImageBatch, y) pairs in the original order.

        For evaluation (no augmentation, whatever :attr:`augment` says); x.to_array()
        equals the x :meth:`batches` yields, flattened. Nothing is converted here:
        ``MLP.evaluate_batches`` lets its first layer convert each chunk into its
        GEMM's panels without writing the converted rows anywhere.

        Raises
        ------
        ValueError
            When the DataSet holds model inputs rather than uint8 pixels.
        """
        if self._preprocessing is None:
            raise ValueError("image_batches: this DataSet holds model inputs, not uint8 pixels; use batches")
        _check_batch_size(batch_size)
        pixels, prep = self._images.reshape(self.num_examples, -1), self._preprocessing
        for start, stop in _spans(self._evaluation_rows(limit), batch_size):
            yield ImageBatch(pixels, np.arange(start, stop), prep.offset, prep.scale), self._labels[start:stop]

    def as_arrays(self, flatten: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All examples in their original order, for evaluation (no augmentation).

        Parameters
        ----------
        flatten : bool or None
            Return x as (n, D); None uses the data set's ``flatten``.

        Returns
        -------
        x : ndarray, shape (n, 3, 32, 32) or (n, D)
            A view of :attr:`images`: do not modify it.
        y : ndarray, shape (n,) or (n, n_classes)
            The stored labels (not a copy).
        """
        flatten = self.flatten if flatten is None else flatten
        x = self.images.reshape(self.num_examples, -1) if flatten else self.images
        return x, self._labels

    def get_state(self) -> dict[str, Any]:
        """Everything :meth:`set_state` needs to continue exactly from here.

        Returns
        -------
        dict
            Values that ``np.savez`` and ``json`` both accept (after
            ``.tolist()`` for the array):

            - ``"format"`` str: ``"fastmlp.data.DataSet/1"``,
            - ``"num_examples"`` int,
            - ``"permutation"`` int64 ndarray (num_examples,): order of the current epoch,
            - ``"index_in_epoch"`` int: examples of that order already served,
            - ``"epochs_completed"`` int,
            - ``"rng_state"`` str: JSON of ``Generator.bit_generator.state``
              (a string because PCG64's 128-bit integers fit no NumPy dtype).

            Copies: later batches do not change it.
        """
        return {
            "format": _STATE_FORMAT,
            "num_examples": self.num_examples,
            "permutation": self._perm.astype(np.int64, copy=True),
            "index_in_epoch": int(self._index_in_epoch),
            "epochs_completed": int(self._epochs_completed),
            "rng_state": json.dumps(self._rng.bit_generator.state, default=_array_to_list),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (also after ``np.savez``/``np.load`` or JSON).

        Values may be 0-d arrays (as ``np.load`` gives them) or lists.
        Modifies the position, epoch counter, permutation and generator in place.

        Raises
        ------
        ValueError
            A missing key, a value of the wrong type, a state taken from a data set
            of another size, or a generator outside :data:`BIT_GENERATORS`.
        """
        keys = ("format", "num_examples", "permutation", "index_in_epoch", "epochs_completed", "rng_state")
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"DataSet state lacks {missing}; expected the keys {list(keys)} from get_state()")
        fmt = _as_str(state["format"], "format")
        if fmt != _STATE_FORMAT:
            raise ValueError(f"state['format'] is {fmt!r}, expected {_STATE_FORMAT!r}")
        n = _as_int(state["num_examples"], "num_examples")
        if n != self.num_examples:
            raise ValueError(f"state is for a data set of {n} examples, this one has {self.num_examples}")
        perm = np.asarray(state["permutation"])
        if perm.shape != (n,) or perm.dtype.kind not in "iu":
            raise ValueError(f"state['permutation'] should be {n} ints, got {perm.dtype} of shape {perm.shape}")
        perm = perm.astype(np.int64)
        if perm.min() < 0 or perm.max() >= n or np.bincount(perm, minlength=n).max() != 1:
            raise ValueError("state['permutation'] is not a permutation of 0..num_examples-1")
        index = _as_int(state["index_in_epoch"], "index_in_epoch")
        if not 0 <= index < n:
            raise ValueError(f"state['index_in_epoch'] should lie in 0..{n - 1}, got {index}")
        epochs = _as_int(state["epochs_completed"], "epochs_completed")
        if epochs < 0:
            raise ValueError(f"state['epochs_completed'] should be >= 0, got {epochs}")
        bit_generator = _bit_generator(_as_str(state["rng_state"], "rng_state"))
        self._rng = np.random.Generator(bit_generator)
        self._perm = perm
        self._index_in_epoch = index
        self._epochs_completed = epochs
