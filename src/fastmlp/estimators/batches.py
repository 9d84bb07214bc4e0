"""An epoch's batches in scikit-learn's order, gathered into arrays that the whole fit reuses.

scikit-learn's ``_fit_stochastic`` shuffles an index permutation once per epoch
(``sklearn.utils.shuffle``, which permutes ``arange(n)`` with the estimator's
``RandomState`` and indexes the previous order with it) and cuts it into
``gen_batches`` slices. :class:`Batches` draws the same permutation by shuffling
its order array in place with the same ``RandomState`` (the same swaps, so the
same order and the same random numbers drawn), then gathers every row of the
epoch at once into buffers allocated once per fit; each batch is then a view of
them. At the estimators' sizes the per-call cost of scikit-learn's helpers and of
a fancy index per batch is as large as the update itself.

Shapes: n samples, D features, K target columns.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import sparse

__all__ = ["Batches"]


class Batches:
    """The training rows of one fit, handed out batch by batch in scikit-learn's order.

    Parameters
    ----------
    arrays : tuple (X, targets, sample_weight)
        ``X`` ndarray (n, D) C-contiguous or CSR matrix (n, D) (sparse rows are
        made dense one batch at a time); ``targets`` ndarray (n,) or (n, K), what
        the update reads for each row; ``sample_weight`` ndarray (n,) or None.
    bounds : list of slice
        scikit-learn's batches of the epoch order (``gen_batches``).
    order : ndarray (n,) of int, or None
        The epoch order, shuffled in place every epoch; None: no shuffling.
    buffers : list of (ndarray or None)
        Where each of ``arrays`` is gathered in the epoch order (None: gathered
        into a new array, for a sparse X or no sample weights).
    """

    def __init__(self, arrays: tuple, bounds: list[slice], order, buffers: list):
        self.arrays = arrays
        self.bounds = bounds
        self.order = order
        self.buffers = buffers

    @classmethod
    def create(cls, X, targets: np.ndarray, sample_weight, batch_size: int, shuffle: bool) -> "Batches":
        """Batches of ``batch_size`` rows (the last one shorter), as ``gen_batches(n, batch_size)``."""
        n_samples = X.shape[0]
        bounds = [slice(start, min(start + batch_size, n_samples)) for start in range(0, n_samples, batch_size)]
        arrays = (X, targets, sample_weight)
        if not shuffle:
            return cls(arrays, bounds, None, [])
        buffers = [None if a is None or sparse.issparse(a) else np.empty_like(a, order="C") for a in arrays]
        return cls(arrays, bounds, np.arange(n_samples, dtype=int), buffers)

    @property
    def n_samples(self) -> int:
        return self.arrays[0].shape[0]

    def epoch(self, random_state: np.random.RandomState) -> Iterator[tuple]:
        """The next epoch's batches ``(x, targets, sample_weight)``, shuffled with ``random_state``.

        ``x`` is (B, D) C-contiguous, ``targets`` (B,) or (B, K), ``sample_weight``
        (B,) or None. Views of buffers that the next epoch overwrites.
        """
        X, targets, weights = self.arrays if self.order is None else self._shuffled(random_state)
        dense = not sparse.issparse(X)
        for rows in self.bounds:
            x = X[rows] if dense else X[rows].toarray()
            yield x, targets[rows], None if weights is None else weights[rows]

    def _shuffled(self, random_state: np.random.RandomState) -> list:
        """The arrays in a new epoch order, drawn as ``sklearn.utils.shuffle(order, random_state)``."""
        random_state.shuffle(self.order)
        gathered = []
        for source, buffer in zip(self.arrays, self.buffers):
            if buffer is not None:
                # the indices are a permutation (none out of range); mode="raise" would buffer the output
                gathered.append(source.take(self.order, axis=0, out=buffer, mode="clip"))
            else:  # a sparse X, or no sample weights
                gathered.append(None if source is None else source[self.order])
        return gathered
