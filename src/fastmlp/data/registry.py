"""The data sets fastmlp knows, one entry each, and the one loader for all of them.

An entry (:class:`Dataset`) says how to find a data set's files in a folder, how
to download them (official URLs, md5-checked), how to decode them into the common
form, and what to check; everything downstream (the decoded-array cache,
preprocessing, :class:`~fastmlp.data.DataSet`, the trainers) is the same for every
entry. The common form is ``x_train``/``x_test`` (n, ...) uint8 pixels (or floats
for an ``npz`` file of floats), ``y_train``/``y_test`` int64 labels and
``label_names``. A new data set is one more entry in :data:`DATASETS`.

==================  =========================================  ==============  =======
name                files in ``data_dir``                      example shape   classes
==================  =========================================  ==============  =======
``cifar10``         ``cifar-10-python.tar.gz`` or its folder   (3, 32, 32)     10
``cifar100``        ``cifar-100-python.tar.gz`` or its folder  (3, 32, 32)     100 fine
``cifar100_coarse`` the same files, the 20 coarse labels       (3, 32, 32)     20
``mnist``           the four official idx ``.gz`` files        (1, 28, 28)     10
``fashion_mnist``   the four official idx ``.gz`` files        (1, 28, 28)     10
``npz``             ``data_dir`` is the ``.npz`` file           (D,)            from y
==================  =========================================  ==============  =======
"""
from __future__ import annotations

import dataclasses
import functools
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fastmlp.data import files, idx, sources
from fastmlp.data.cache import cached_decode
from fastmlp.data.sources import DataError, DataNotFoundError, check_arrays, resolve_data_dir

__all__ = ["DATASETS", "DATASET_NAMES", "Dataset", "load_raw", "read_npz"]

Finder = Callable[[Path], "tuple[Path, list[Path], Callable[[], dict]] | None"]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One data set: where its files are, how to get and read them, what they must hold.

    Attributes
    ----------
    name, title : str
        The registry key (``--dataset``) and the name in messages.
    find : callable
        ``find(root)`` -> ``(source, files, decode)`` or None: the source found in the
        folder ``root`` (which keys the cache), the files whose bytes make it up, and a
        function decoding it into the common form.
    expected : str
        What to put into ``root``, for the message when nothing is found.
    download : callable or None
        ``download(root, not_found)`` fetches the official files into ``root`` (md5-checked);
        None when the data set has no official source.
    shape : tuple of int or None
        The shape of one example, when fixed.
    n_classes : int or None
    """

    name: str
    title: str
    find: Finder
    expected: str
    download: Callable[[Path, Callable[[str], str]], Any] | None = None
    shape: tuple[int, ...] | None = None
    n_classes: int | None = None

    @property
    def images(self) -> bool:
        """Whether examples are (channels, height, width) images (augmentation, convolutions)."""
        return self.shape is not None and len(self.shape) == 3

    def check(self, data: dict[str, Any]) -> dict[str, Any]:
        """:func:`~fastmlp.data.sources.check_arrays` with this data set's shape and class count."""
        return check_arrays(data, f"the decoded {self.title} data", shape=self.shape, n_classes=self.n_classes)

    def not_found(self, root: Path, reason: str = "") -> str:
        return (f"{self.title} was not found in {root}: expected {self.expected}. {reason}"
                f"Pass --data_dir / data_dir= (or set {sources.DATA_ENV}) to where it is.")


# --------------------------------------------------------------------------- npz

_NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
#: deflate never expands data more than about 1032 times: a member declaring more is lying.
_DEFLATE_RATIO = 1100


def _check_npz_member(archive: Any, info: Any, path: Path) -> None:
    """Refuse a member holding objects or declaring more bytes than it holds (checked before np.load allocates)."""
    with archive.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format {version}; versions 1.0 and 2.0 are read")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
        except ValueError as exc:
            raise DataError(f"{path}: member {info.filename!r} is not a .npy array ({exc})") from exc
        declared = f.tell() + dtype.itemsize * int(np.prod(shape, dtype=object))
    if dtype.hasobject:
        raise DataError(f"{path}: member {info.filename!r} holds Python objects (pickles are never loaded)")
    compressed_bound = _DEFLATE_RATIO * info.compress_size + 1024
    if declared != info.file_size or declared > compressed_bound or declared > 4 * sources.MAX_ARCHIVE_BYTES:
        raise DataError(f"{path}: member {info.filename!r} declares {declared} bytes, but the archive records "
                        f"{info.file_size} bytes ({info.compress_size} stored); refusing to allocate it")


def _npz_features(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    if x.ndim < 2 or x.shape[0] == 0 or x.dtype not in sources.INPUT_DTYPES:
        raise DataError(f"{path}: {key} should be a non-empty (n, ...) array of uint8, float32 or float64, "
                        f"got {x.dtype} of shape {x.shape}")
    if x.dtype != np.uint8 and not np.isfinite(x).all():
        raise DataError(f"{path}: {key} holds NaN or infinite values")
    return x.reshape(x.shape[0], -1)


def _npz_labels(y: np.ndarray, key: str, path: Path) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "iu" or (y.size and y.min() < 0):
        raise DataError(f"{path}: {key} should be class indices >= 0 of shape (n,), got {y.dtype} of shape {y.shape}")
    return y.astype(np.int64)


def read_npz(path: Path) -> dict[str, Any]:
    """A data set from an ``.npz`` file: ``x_train, y_train, x_test, y_test`` and optional ``class_names``.

    ``x_*``: (n, ...) uint8 pixels or float32/float64 features, flattened to (n, D);
    ``y_*``: integer class indices (n,); ``class_names``: str (n_classes,), else "0", "1", ...
    Compressed (``np.savez_compressed``) or not; never unpickles.
    """
    import zipfile  # here: only an npz data set needs it, every run imports this module

    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                _check_npz_member(archive, info, path)
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _NPZ_ARRAYS if k not in npz.files]
            if missing:
                raise DataError(f"{path} lacks {missing}; an npz data set holds {list(_NPZ_ARRAYS)} "
                                f"(and optionally class_names), found {npz.files}")
            arrays = {k: npz[k] for k in (*_NPZ_ARRAYS, "class_names") if k in npz.files}
    except (zipfile.BadZipFile, EOFError, ValueError, zlib.error) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    data = {k: (_npz_features if k[0] == "x" else _npz_labels)(arrays[k], k, path) for k in _NPZ_ARRAYS}
    n_classes = int(max(data["y_train"].max(), data["y_test"].max())) + 1
    names = arrays.get("class_names")
    if names is None:
        data["label_names"] = [str(i) for i in range(n_classes)]
    elif names.ndim != 1 or names.dtype.kind != "U" or len(names) < n_classes:
        raise DataError(f"{path}: class_names should be at least {n_classes} str (one per class), "
                        f"got {names.dtype} of shape {names.shape}")
    else:
        data["label_names"] = [str(n) for n in names]
    return check_arrays(data, str(path))


def _find_npz(root: Path) -> tuple[Path, list[Path], Callable[[], dict]] | None:
    return (root, [root], lambda: read_npz(root)) if root.is_file() else None


# --------------------------------------------------------------------------- the entries


def _pickle_entry(name: str, layout: files.PickleLayout) -> Dataset:
    return Dataset(name, layout.title, functools.partial(files.find_source, layout=layout),
                   f"the official {layout.archive} or its {layout.folder}/ folder (from {layout.url})",
                   lambda root, not_found: files.download_cifar10(root, layout=layout),
                   files.IMAGE_SHAPE, layout.n_classes)


def _idx_entry(layout: idx.IdxLayout) -> Dataset:
    return Dataset(layout.name, layout.title, functools.partial(idx.find_idx_source, layout=layout),
                   f"the four official files {', '.join(idx.IDX_FILES)} (from {layout.base_url}) in "
                   f"{layout.name}/ or in the folder itself",
                   functools.partial(idx.download_idx, layout=layout), None, len(layout.label_names))


DATASETS: dict[str, Dataset] = {
    "cifar10": _pickle_entry("cifar10", files.CIFAR10),
    "cifar100": _pickle_entry("cifar100", files.CIFAR100),
    "cifar100_coarse": _pickle_entry("cifar100_coarse", files.CIFAR100_COARSE),
    "mnist": _idx_entry(idx.MNIST),
    "fashion_mnist": _idx_entry(idx.FASHION_MNIST),
    "npz": Dataset("npz", "the npz data set", _find_npz,
                   "data_dir to name an .npz file holding x_train, y_train, x_test, y_test (optional class_names)"),
}
DATASET_NAMES = tuple(DATASETS)


def load_raw(name: str, data_dir: Any = None, *, download: bool = True, cache_dir: Any = None) -> dict[str, Any]:
    """The data set ``name`` in the common form, from the cache or decoded (downloaded first if allowed).

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES`.
    data_dir : path or None
        Where to look (:func:`~fastmlp.data.sources.resolve_data_dir`); for ``npz``, the file.
    download : bool
        When nothing is found: download the official files into ``data_dir`` (True) or raise.
    cache_dir : path or None
        Where decoded arrays are kept; default :func:`~fastmlp.data.sources.default_cache_dir`.

    Returns
    -------
    dict
        ``x_train``, ``y_train``, ``x_test``, ``y_test``, ``label_names`` (see the module docstring).

    Raises
    ------
    ValueError
        An unknown ``name``.
    DataNotFoundError (a FileNotFoundError)
        Nothing found and no download (not allowed, no official source, or it failed).
    DataError (a ValueError)
        A corrupt, truncated, oversized or unsafe file, named in the message.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASET_NAMES}, got {name!r}")
    entry = DATASETS[name]
    root = resolve_data_dir(data_dir)
    found = entry.find(root)
    if found is None:
        if not download or entry.download is None:
            why = "Downloading was not allowed (download=False). " if entry.download else ""
            raise DataNotFoundError(entry.not_found(root, why))
        entry.download(root, lambda reason: entry.not_found(root, reason))
        found = entry.find(root)
        if found is None:  # pragma: no cover - a download that left nothing findable
            raise DataNotFoundError(entry.not_found(root, "The download left nothing readable. "))
    source, source_files, decode = found
    cache = Path(cache_dir).expanduser() if cache_dir is not None else sources.default_cache_dir()
    return cached_decode(source, source_files, decode, cache, dataset=name, check=entry.check)
