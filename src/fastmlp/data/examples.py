"""A data set's examples as stored, served as model inputs in their original order (for evaluation).

:class:`StoredExamples` holds the images either as model inputs already (any float
array) or as uint8 pixels plus a :class:`~fastmlp.data.preprocessing.Preprocessing`
that turns rows into floats as they are asked for. :class:`~fastmlp.data.DataSet`
adds the shuffled, resumable training order on top.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from fastmlp.data.order import check_batch_size
from fastmlp.data.preprocessing import Preprocessing
from fastmlp.images import ImageBatch

__all__ = ["StoredExamples"]


def _spans(n: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of rows 0..n in pieces of ``size``, the last one shorter."""
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _check_examples(images: np.ndarray, labels: np.ndarray, preprocessing: Preprocessing | None) -> None:
    """Raise TypeError/ValueError unless ``images`` and ``labels`` can make a data set (with ``preprocessing``)."""
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
    if preprocessing is not None:
        if images.dtype != np.uint8 or int(np.prod(images.shape[1:])) != preprocessing.offset.shape[0]:
            raise ValueError(f"images: with a preprocessing, expected uint8 images of "
                             f"{preprocessing.offset.shape[0]} values each, got {images.dtype} {images.shape}")


class StoredExamples:
    """Images and labels kept by reference, converted to model inputs when asked for, in their original order.

    Parameters
    ----------
    images : ndarray, shape (n, 3, 32, 32) (any (n, ...))
        Model inputs (float), or uint8 pixels when ``preprocessing`` is given.
        Kept by reference, never modified; batches are gathered copies.
    labels : ndarray, shape (n,) int class indices or (n, n_classes) one-hot
        Kept by reference, never modified.
    flatten : bool
        :meth:`batches` and :meth:`as_arrays` return x of shape (batch, D) by default.
    preprocessing : Preprocessing or None
        Turns uint8 ``images`` into model inputs batch by batch.
    class_names : sequence of str or None
        The name of each class (kept as the tuple :attr:`class_names`); None when unknown.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, flatten: bool = False,
                 preprocessing: Preprocessing | None = None, class_names: Sequence[str] | None = None):
        _check_examples(images, labels, preprocessing)
        self._images = images
        self._labels = labels
        self._preprocessing = preprocessing
        self.class_names = None if class_names is None else tuple(class_names)
        self._converted: np.ndarray | None = None
        self._batch_buffer: np.ndarray | None = None
        self.flatten = bool(flatten)

    @property
    def images(self) -> np.ndarray:
        """All model inputs, shape (n, 3, 32, 32), in their original order.

        The stored array itself when it holds floats; with a preprocessing, the whole
        set converted once on first access and kept (n * D floats of memory:
        :meth:`batches` converts one batch at a time instead).
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
        """The dtype of the model inputs served."""
        return self._preprocessing.dtype if self._preprocessing is not None else self._images.dtype

    @property
    def labels(self) -> np.ndarray:
        """All labels, shape (n,) or (n, n_classes), in their original order (not a copy)."""
        return self._labels

    @property
    def num_examples(self) -> int:
        return int(self._images.shape[0])

    def __len__(self) -> int:
        return self.num_examples

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

    def batches(self, batch_size: int, *, flatten: bool | None = None,
                limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The first ``limit`` examples (all by default) in their original order, ``batch_size`` at a time.

        For evaluation: no augmentation. Each x is converted into one buffer that the
        next batch (and the next call) reuses: use it before asking for the next.
        Does not touch the batch order of ``DataSet.next_batch``.
        """
        flatten = self.flatten if flatten is None else flatten
        check_batch_size(batch_size)
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

        For evaluation (no augmentation); x.to_array() equals the x :meth:`batches`
        yields, flattened. Nothing is converted here: ``MLP.evaluate_batches`` lets its
        first layer convert each chunk into its GEMM's panels without writing the
        converted rows anywhere.

        Raises
        ------
        ValueError
            When the examples are model inputs rather than uint8 pixels.
        """
        if self._preprocessing is None:
            raise ValueError("image_batches: this DataSet holds model inputs, not uint8 pixels; use batches")
        check_batch_size(batch_size)
        pixels, prep = self._images.reshape(self.num_examples, -1), self._preprocessing
        for start, stop in _spans(self._evaluation_rows(limit), batch_size):
            yield ImageBatch(pixels, np.arange(start, stop), prep.offset, prep.scale), self._labels[start:stop]

    def as_arrays(self, flatten: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All examples in their original order, for evaluation (no augmentation).

        Parameters
        ----------
        flatten : bool or None
            Return x as (n, D); None uses :attr:`flatten`.

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
