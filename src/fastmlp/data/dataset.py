"""The course's ``DataSet``: shuffled mini-batches with exact, resumable epoch order.

A DataSet is its :class:`~fastmlp.data.examples.StoredExamples` (the images and
labels, converted to model inputs batch by batch, in their original order for
evaluation) plus an :class:`~fastmlp.data.order.EpochOrder` (which rows the next
training batch takes; its state is what a checkpoint stores) and the optional
augmentation of training batches.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from fastmlp.data.examples import StoredExamples
from fastmlp.data.order import EpochOrder
from fastmlp.data.preprocessing import Preprocessing, augment_batch
from fastmlp.images import ImageBatch

__all__ = ["DataSet"]


class DataSet(StoredExamples):
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
        super().__init__(images, labels, flatten=flatten, preprocessing=preprocessing, class_names=class_names)
        if augment and images.ndim != 4:
            raise ValueError(f"augment=True needs images of shape (n, channels, height, width), got {images.shape}")
        self.augment = bool(augment)
        self._order = EpochOrder.shuffled(self.num_examples, seed)

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_order" not in state:  # pickled before the order had its own class: its four parts lay here
            state = dict(state)
            state["_order"] = EpochOrder(state.pop("_rng"), state.pop("_perm"), state.pop("_index_in_epoch"),
                                         state.pop("_epochs_completed"))
        self.__dict__.update(state)

    def reseeded(self, seed: int | np.random.SeedSequence | None, *, augment: bool | None = None,
                 flatten: bool | None = None) -> "DataSet":
        """A DataSet over the same stored images, labels and preprocessing with its own seeded order."""
        return DataSet(self._images, self._labels, seed=seed, preprocessing=self._preprocessing,
                       class_names=self.class_names, augment=self.augment if augment is None else augment,
                       flatten=self.flatten if flatten is None else flatten)

    @property
    def epochs_completed(self) -> int:
        """Number of finished passes over the data."""
        return self._order.epochs_completed

    @property
    def index_in_epoch(self) -> int:
        """Examples of the current epoch already served."""
        return self._order.index_in_epoch

    def __repr__(self) -> str:
        stored = f"{self._images.dtype}{list(self._images.shape[1:])}"
        if self._preprocessing is not None:
            stored += f" -> {self._preprocessing.kind} {self.dtype}"
        return (
            f"DataSet(num_examples={self.num_examples}, images={stored}, "
            f"labels={self._labels.dtype}{list(self._labels.shape[1:])}, augment={self.augment}, "
            f"flatten={self.flatten}, epochs_completed={self.epochs_completed})"
        )

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
        index = self._order.take(batch_size)
        self._check_out(out, len(index))
        x = self._inputs(index, None if self.augment else out)
        if self.augment:
            x = augment_batch(x.reshape(len(index), *self._images.shape[1:]), self._order.rng)
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
        index = self._order.take(batch_size)
        pixels = self._images.reshape(self.num_examples, -1)
        prep = self._preprocessing
        return ImageBatch(pixels, index, prep.offset, prep.scale), self._labels[index]

    def get_state(self) -> dict[str, Any]:
        """Everything :meth:`set_state` needs to continue exactly from here (the batch order and the generator).

        Returns
        -------
        dict
            :meth:`fastmlp.data.order.EpochOrder.get_state`: ``format``
            (``"fastmlp.data.DataSet/1"``), ``num_examples``, ``permutation`` (int64
            ndarray (num_examples,)), ``index_in_epoch``, ``epochs_completed``,
            ``rng_state`` (str); values that ``np.savez`` and ``json`` both accept. Copies.
        """
        return self._order.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (also after ``np.savez``/``np.load`` or JSON).

        Raises
        ------
        ValueError
            A missing key, a value of the wrong type, a state taken from a data set
            of another size, or a generator outside :data:`fastmlp.data.order.BIT_GENERATORS`.
        """
        self._order.set_state(state)
