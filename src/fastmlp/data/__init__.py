"""Data sets: find, fetch, read, cache, preprocess and batch them (CIFAR-10 by default).

:func:`load_dataset` loads any data set of the registry
(:mod:`fastmlp.data.registry`: ``cifar10``, ``cifar100``, ``cifar100_coarse``,
``mnist``, ``fashion_mnist``, ``npz``); :func:`get_cifar10` is its CIFAR-10 entry.
Where the data comes from, first match wins:

1. the ``data_dir`` argument,
2. the ``FASTMLP_DATA`` environment variable,
3. the default cache folder (``$FASTMLP_CACHE``, else ``~/.cache/fastmlp``).

For CIFAR-10 that folder may hold the official "python version" folder ``cifar-10-batches-py/``
or the archive ``cifar-10-python.tar.gz`` (the folder wins when both are there);
``data_dir`` may also name the batches folder or the archive file itself. When
nothing is found, the official files are downloaded into the chosen folder and
checked against their published md5 -- only downloads are checked, so a re-encoded
copy with another checksum loads fine.

The first load of a source decodes it (the archive is read as a stream, every
batch checked; ~1 s) and keeps the arrays in ``<cache>/decoded/``, keyed by the
data set and the source's content; later loads read them back in a few hundredths
of a second (:mod:`fastmlp.data.cache`). :func:`load_dataset` adds the course's
preprocessing and returns :class:`DataSet` objects that keep the pixels as uint8 and convert
each batch as it is served; :meth:`DataSet.next_batch` follows the course's
epoch semantics and :meth:`DataSet.get_state` makes ``--resume`` exact.

Modules: :mod:`~fastmlp.data.registry` (the data sets, one entry each),
:mod:`~fastmlp.data.sources` (folders, downloads, safe reading of archives and pickles),
:mod:`~fastmlp.data.files` (CIFAR-10/100 batches), :mod:`~fastmlp.data.idx` (MNIST's idx files),
:mod:`~fastmlp.data.cache` (decoded arrays on disk),
:mod:`~fastmlp.data.preprocessing` (pixels to inputs, augmentation),
:mod:`~fastmlp.data.examples` (stored examples as inputs, in order, for evaluation),
:mod:`~fastmlp.data.order` (the shuffled, resumable epoch order),
:mod:`~fastmlp.data.dataset` (the two together: training batches).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from fastmlp.data.dataset import DataSet
from fastmlp.data.files import (
    ARCHIVE_NAME,
    CIFAR10_MD5,
    CIFAR10_URL,
    FOLDER_NAME,
    IMAGE_SHAPE,
    LABEL_NAMES,
    NUM_CLASSES,
    download_cifar10,
    read_batch,
)
from fastmlp.data.preprocessing import PREPROCESSINGS, Preprocessing, augment_batch
from fastmlp.data.registry import DATASET_NAMES, DATASETS, load_raw
from fastmlp.data.sources import DataError, DataNotFoundError, default_cache_dir, resolve_data_dir

__all__ = [
    "ARCHIVE_NAME",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DATASETS",
    "DATASET_NAMES",
    "DataError",
    "DataNotFoundError",
    "DataSet",
    "FOLDER_NAME",
    "IMAGE_SHAPE",
    "LABEL_NAMES",
    "NUM_CLASSES",
    "PREPROCESSINGS",
    "Preprocessing",
    "augment_batch",
    "dataset_metrics",
    "example_shape",
    "default_cache_dir",
    "download_cifar10",
    "get_cifar10",
    "load_cifar10",
    "load_dataset",
    "load_raw",
    "read_batch",
    "resolve_data_dir",
]


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Load CIFAR-10 as uint8 images and int64 labels, without preprocessing (``load_raw("cifar10", ...)``).

    Parameters
    ----------
    data_dir : path or None
        Where to look (see :func:`resolve_data_dir`): a folder holding
        ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``, or either of them.
        Any number of images per batch file is accepted (tests use tiny ones).
    download : bool
        When nothing is found: download the official archive into the resolved
        folder (True) or raise :class:`DataNotFoundError` (False).
    cache_dir : path or None
        Where decoded arrays are kept; default :func:`default_cache_dir`.

    Returns
    -------
    dict
        ``x_train`` uint8 (n_train, 3, 32, 32) and ``y_train`` int64 (n_train,)
        (the five training batches in order), ``x_test`` uint8 (n_test, 3, 32, 32),
        ``y_test`` int64 (n_test,), ``label_names`` list of 10 str. Arrays private to
        the caller (writable; from the cache, copy-on-write mappings of its files).

    Raises
    ------
    DataNotFoundError (a FileNotFoundError)
        Nothing found and ``download=False``, or the download failed (offline).
    DataError (a ValueError)
        A corrupt, truncated, oversized or unsafe archive or batch file (named in the message).
    """
    return load_raw("cifar10", data_dir, download=download, cache_dir=cache_dir)


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _check_validation_size(validation_size: Any, n_total: int) -> int:
    if isinstance(validation_size, bool) or not isinstance(validation_size, (int, np.integer)):
        raise TypeError(f"validation_size must be an int, got {type(validation_size).__name__}")
    if not 0 <= validation_size < n_total:
        raise ValueError(f"validation_size must lie in 0..{n_total - 1} (training set of {n_total}), got {validation_size}")
    return int(validation_size)


def load_dataset(
    name: str = "cifar10",
    data_dir: str | os.PathLike | None = None,
    one_hot: bool = True,
    validation_size: int = 0,
    *,
    preprocessing: str = "mean_image",
    flatten: bool = False,
    dtype: Any = np.float32,
    augment: bool = False,
    seed: int | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, DataSet | None]:
    """A data set of the registry, preprocessed and wrapped in :class:`DataSet` objects.

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES` (see :mod:`fastmlp.data.registry`).
    data_dir, download, cache_dir
        As in :func:`load_raw` (for ``npz``, ``data_dir`` is the file).
    one_hot : bool
        Labels as one-hot rows (n, n_classes) of ``dtype``; else int64 class indices (n,).
    validation_size : int
        Examples carved from the END of the training set (0 <= v < n_train).
        They are removed before any statistic is computed.
    preprocessing : {"mean_image", "standardize"}
        For uint8 pixels. ``"mean_image"`` (the course): subtract the per-pixel mean
        image of the training split, pixels stay on the 0..255 scale. ``"standardize"``:
        subtract the per-channel mean and divide by the per-channel std of the
        training split (examples without channels count as one channel). Float
        features (an ``npz`` of floats) are used as they are, cast to ``dtype``.
    flatten : bool
        Batches (and ``as_arrays``) come as (batch, D) rows.
    dtype : float32 or float64
        Input (and one-hot label) dtype.
    augment : bool
        Random crop (pad 4) and horizontal flip on "train" batches only (image data sets).
    seed : int or None
        Seeds the three data sets (independent streams from one SeedSequence).

    Returns
    -------
    dict
        ``"train"``: DataSet of n_train - validation_size examples,
        ``"validation"``: DataSet of validation_size examples or None,
        ``"test"``: DataSet. Each keeps uint8 pixels and a shared
        :class:`Preprocessing` (floats: the inputs themselves) and the class names
        (:attr:`DataSet.class_names`); batches come as ``dtype`` inputs of each
        example's shape ((3, 32, 32) for CIFAR).
    """
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
    dtype = _check_dtype(dtype)
    if name in DATASETS and augment and not DATASETS[name].images:
        raise ValueError(f"augment=True needs an image data set (channels, height, width); {name} is not one")
    raw = load_raw(name, data_dir, download=download, cache_dir=cache_dir)
    n_total = raw["x_train"].shape[0]
    n_train = n_total - _check_validation_size(validation_size, n_total)
    n_classes = len(raw["label_names"])
    if raw["x_train"].dtype == np.uint8:
        prep = Preprocessing.fit(raw["x_train"][:n_train], preprocessing, dtype)  # statistics of this part only
        x_all, x_test = raw["x_train"], raw["x_test"]
    else:
        prep, x_all, x_test = None, raw["x_train"].astype(dtype, copy=False), raw["x_test"].astype(dtype, copy=False)

    def labels(y: np.ndarray) -> np.ndarray:
        return np.eye(n_classes, dtype=dtype)[y] if one_hot else y

    y_all = labels(raw["y_train"])
    seeds = np.random.SeedSequence(seed).spawn(3)
    common = dict(flatten=flatten, preprocessing=prep, class_names=raw["label_names"])
    train = DataSet(x_all[:n_train], y_all[:n_train], seed=seeds[0], augment=augment, **common)
    validation = DataSet(x_all[n_train:], y_all[n_train:], seed=seeds[1], **common) if n_train < n_total else None
    test = DataSet(x_test, labels(raw["y_test"]), seed=seeds[2], **common)
    return {"train": train, "validation": validation, "test": test}


def get_cifar10(data_dir: str | os.PathLike | None = None, one_hot: bool = True, validation_size: int = 0,
                **kwargs: Any) -> dict[str, DataSet | None]:
    """CIFAR-10 preprocessed and wrapped in :class:`DataSet` objects: ``load_dataset("cifar10", ...)``.

    Takes :func:`load_dataset`'s arguments (but ``name``); batches come as (n, 3, 32, 32)
    inputs (``flatten``: (n, 3072)), labels in 0..9.
    """
    return load_dataset("cifar10", data_dir, one_hot, validation_size, **kwargs)


def example_shape(data: Any) -> tuple[tuple[int, ...], int]:
    """The shape of one example and the number of classes of loaded data (``load_dataset``'s dict).

    The classes are the training DataSet's class names when it has them, else one more
    than the largest label of any split (one-hot labels: their width).
    """
    train = data["train"]
    shape = tuple(int(d) for d in train.raw_images.shape[1:])
    if train.class_names is not None:
        return shape, len(train.class_names)
    n = 0
    for split in data.values():
        if split is not None:
            y = split.labels
            n = max(n, y.shape[1] if y.ndim == 2 else int(y.max()) + 1)
    return shape, n


def dataset_metrics(name: str, train_set: Any) -> dict[str, Any]:
    """What a run's ``metrics.json`` says of its data: ``{"dataset": name, "class_names": [...] or None}``.

    ``train_set`` is the run's training :class:`DataSet` (its :attr:`DataSet.class_names`;
    None for a DataSet built without them).
    """
    names = getattr(train_set, "class_names", None)
    return {"dataset": name, "class_names": None if names is None else list(names)}
