"""CIFAR-10's and CIFAR-100's files: where they are, fetching the official archives, and reading them.

Both come as "python version" archives of pickled batches (CIFAR-10: five
training batches, a test batch and ``batches.meta``; CIFAR-100: ``train``,
``test`` and ``meta``); a :class:`PickleLayout` says which. Batches are read with
:func:`fastmlp.data.sources.unpickle`, which accepts only the NumPy globals a
batch needs and never allocates more than the file holds; archives are read as
a stream by :func:`fastmlp.data.sources.read_tar` (nothing is written to disk).
"""
from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fastmlp.data.sources import (
    CACHE_ENV,
    DATA_ENV,
    DOWNLOAD_DEADLINE,
    DOWNLOAD_TIMEOUT,
    MAX_ARCHIVE_BYTES,
    MAX_FILE_BYTES,
    DataError,
    DataNotFoundError,
    archive_mode,
    check_arrays,
    default_cache_dir,
    download_file,
    read_limited,
    read_tar,
    resolve_data_dir,
    unpickle,
)

__all__ = [
    "ARCHIVE_NAME",
    "CACHE_ENV",
    "CIFAR10",
    "CIFAR100",
    "CIFAR100_COARSE",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DATA_ENV",
    "DataError",
    "DataNotFoundError",
    "FOLDER_NAME",
    "IMAGE_SHAPE",
    "LABEL_NAMES",
    "MAX_ARCHIVE_BYTES",
    "MAX_FILE_BYTES",
    "NUM_CLASSES",
    "PickleLayout",
    "archive_mode",
    "check_cifar10",
    "default_cache_dir",
    "download_cifar10",
    "find_source",
    "locate",
    "not_found_message",
    "read_archive",
    "read_batch",
    "read_folder",
    "resolve_data_dir",
    "source_files",
]

#: The official archive; tests point CIFAR10_URL at a local ``file://`` copy.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
#: md5 of the official archive (checked for downloads only).
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PIXELS = int(np.prod(IMAGE_SHAPE))  # 3072 values per image: R plane, G plane, B plane


@dataclasses.dataclass(frozen=True)
class PickleLayout:
    """Where a CIFAR-style data set keeps its pickled batches, and which keys hold what.

    Attributes
    ----------
    title : str
        Names the data set in messages.
    archive, folder : str
        The official archive's file name and the folder it unpacks to.
    url, md5 : str
        The official download and its published md5.
    train, test, meta : tuple of str, str, str
        Batch files of the training split (concatenated in this order), of the test split, and the meta file.
    labels_key, names_key : str
        The batch key holding the labels and the meta key holding the class names.
    n_classes : int
    """

    title: str
    archive: str
    folder: str
    url: str
    md5: str
    train: tuple[str, ...]
    test: str
    meta: str
    labels_key: str
    names_key: str
    n_classes: int

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, self.test, self.meta)


CIFAR10 = PickleLayout("CIFAR-10", ARCHIVE_NAME, FOLDER_NAME, CIFAR10_URL, CIFAR10_MD5,
                       tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
                       "labels", "label_names", NUM_CLASSES)
#: CIFAR-100 with its 100 fine labels (the data set's usual task).
CIFAR100 = PickleLayout("CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python",
                        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                        ("train",), "test", "meta", "fine_labels", "fine_label_names", 100)
#: The same files read with the 20 coarse labels (superclasses).
CIFAR100_COARSE = dataclasses.replace(CIFAR100, labels_key="coarse_labels", names_key="coarse_label_names",
                                      n_classes=20)


def _layout(layout: PickleLayout | None) -> PickleLayout:
    # read at call time, so tests can point CIFAR10_URL / CIFAR10_MD5 at a local copy
    if layout is None or layout is CIFAR10:
        return dataclasses.replace(CIFAR10, url=CIFAR10_URL, md5=CIFAR10_MD5)
    return layout


def check_cifar10(data: dict[str, Any], what: str = "the decoded CIFAR-10 data") -> dict[str, Any]:
    """:func:`~fastmlp.data.sources.check_arrays` for CIFAR-10: images (3, 32, 32), 10 classes."""
    return check_arrays(data, what, shape=IMAGE_SHAPE, n_classes=NUM_CLASSES)


# --------------------------------------------------------------------------- where


def not_found_message(root: Path, reason: str = "", layout: PickleLayout | None = None) -> str:
    layout = _layout(layout)
    return (
        f"{layout.title} was not found in {root}: looked for the folder {root / layout.folder}/ and the archive "
        f"{root / layout.archive}. {reason}To fix it, put the official python-version archive {layout.archive} "
        f"(from {layout.url}) or its extracted {layout.folder}/ folder ({', '.join(layout.files)}) into {root}, "
        f"or pass data_dir= / set {DATA_ENV} to a folder that holds one of them."
    )


def locate(root: Path, layout: PickleLayout | None = None) -> tuple[str, Path] | None:
    """``("folder", batches_folder)``, ``("archive", archive_file)`` or ``None``."""
    layout = _layout(layout)
    if root.is_file():
        return "archive", root
    if not root.is_dir():
        return None
    if (root / layout.folder).is_dir():  # the folder wins over the archive
        return "folder", root / layout.folder
    if root.name == layout.folder or ((root / layout.train[0]).is_file() and (root / layout.test).is_file()):
        return "folder", root  # data_dir names the batches folder itself
    if (root / layout.archive).is_file():
        return "archive", root / layout.archive
    return None


def source_files(kind: str, path: Path, layout: PickleLayout | None = None) -> list[Path]:
    """The files whose bytes make up a source: the archive, or a folder's batch files in a fixed order."""
    if kind == "archive":
        return [path]
    layout = _layout(layout)
    missing = [n for n in layout.files if not (path / n).is_file()]
    if missing:
        raise DataError(f"{path} is not a complete {layout.title} python folder: missing {missing}")
    return [path / n for n in layout.files]


def find_source(root: Path, layout: PickleLayout | None = None) -> tuple[Path, list[Path], Callable[[], dict]] | None:
    """The source in ``root`` (see :func:`locate`), its files, and how to decode it; None when absent."""
    layout = _layout(layout)
    found = locate(root, layout)
    if found is None:
        return None
    kind, path = found
    read = read_archive if kind == "archive" else read_folder
    return path, source_files(kind, path, layout), lambda: read(path, layout)


def download_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT,
    deadline: float = DOWNLOAD_DEADLINE,
    layout: PickleLayout | None = None,
) -> Path:
    """Download the official archive (CIFAR-10 unless ``layout`` says otherwise) into ``data_dir``, md5-checked.

    Parameters
    ----------
    data_dir : path or None
        Destination folder, resolved by :func:`~fastmlp.data.sources.resolve_data_dir`; created if needed.
    url, md5 : str or None
        Default to the layout's (for CIFAR-10 the module constants :data:`CIFAR10_URL` and
        :data:`CIFAR10_MD5`, read at call time so tests can point them at a local copy).
    progress, timeout, deadline
        As in :func:`~fastmlp.data.sources.download_file`.

    Returns
    -------
    pathlib.Path
        The downloaded archive.
    """
    layout = _layout(layout)
    root = resolve_data_dir(data_dir)
    return download_file(layout.url if url is None else url, root / layout.archive,
                         md5=layout.md5 if md5 is None else md5, progress=progress, timeout=timeout,
                         deadline=deadline, not_found=lambda reason: not_found_message(root, reason, layout))


# --------------------------------------------------------------------------- batches


def _check_batch(batch: dict[str, Any], what: str, layout: PickleLayout) -> tuple[np.ndarray, np.ndarray]:
    missing = [key for key in ("data", layout.labels_key) if key not in batch]
    if missing:
        raise DataError(f"{what} lacks the key(s) {missing}; found {sorted(map(str, batch))}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{what}: 'data' should be a uint8 array of shape (n, {PIXELS}), got {got}")
    labels = np.asarray(batch[layout.labels_key])
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"{what}: {layout.labels_key!r} should be a list of ints, got {labels.dtype} values "
                        f"of shape {labels.shape}")
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{what}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.n_classes):
        raise DataError(
            f"{what}: labels should lie in 0..{layout.n_classes - 1}, found values in {labels.min()}..{labels.max()}"
        )
    return data.reshape((-1, *IMAGE_SHAPE)), labels.astype(np.int64)


def _check_label_names(meta: dict[str, Any], what: str, layout: PickleLayout) -> list[str]:
    names = meta.get(layout.names_key)
    if (not isinstance(names, (list, tuple)) or len(names) != layout.n_classes
            or not all(isinstance(n, (bytes, str)) for n in names)):
        raise DataError(f"{what}: {layout.names_key!r} should be a list of {layout.n_classes} names, "
                        f"got {names!r:.200}")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def read_batch(path: str | os.PathLike, *, name: str | None = None,
               layout: PickleLayout | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one batch file (CIFAR-10's ``data_batch_k`` or ``test_batch`` by default).

    Parameters
    ----------
    path : path
        The pickled batch: a dict with ``data`` (n, 3072) uint8 (1024 red, then
        green, then blue values, rows of 32) and the labels (n ints in 0..n_classes-1).
    name : str, optional
        How to name the file in error messages (default: ``path``).
    layout : PickleLayout, optional
        :data:`CIFAR10` (default), :data:`CIFAR100` or :data:`CIFAR100_COARSE`.

    Returns
    -------
    images : ndarray, uint8, shape (n, 3, 32, 32)
    labels : ndarray, int64, shape (n,)

    Raises
    ------
    DataError
        Unreadable/truncated pickle, a FIFO or device, a file larger than :data:`MAX_FILE_BYTES`,
        missing keys, wrong shape or dtype, labels out of range, or lengths that differ.
    """
    what = name or str(path)
    layout = _layout(layout)
    return _check_batch(unpickle(io.BytesIO(read_limited(Path(path))), what), what, layout)


def _assemble(raw: dict[str, bytes], describe: Callable[[str], str], layout: PickleLayout) -> dict[str, Any]:
    """The arrays of a data set from the bytes of its batch files (keyed by file name)."""
    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        return _check_batch(unpickle(io.BytesIO(raw[name]), describe(name)), describe(name), layout)

    meta = describe(layout.meta)
    label_names = _check_label_names(unpickle(io.BytesIO(raw[layout.meta]), meta), meta, layout)
    train = [batch(n) for n in layout.train]
    x_test, y_test = batch(layout.test)
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
        "label_names": label_names,
    }


def read_folder(folder: Path, layout: PickleLayout | None = None) -> dict[str, Any]:
    """Read and check every file of a batches folder (``cifar-10-batches-py`` by default).

    Returns ``x_train`` uint8 (n, 3, 32, 32), ``y_train`` int64 (n,), ``x_test``,
    ``y_test``, ``label_names``; raises :class:`DataError` naming the bad file.
    """
    layout = _layout(layout)
    files = source_files("folder", folder, layout)
    raw = {p.name: read_limited(p) for p in files}
    return _assemble(raw, lambda n: str(folder / n), layout)


def read_archive(archive: Path, layout: PickleLayout | None = None) -> dict[str, Any]:
    """Read and check the batch files inside an official ``.tar.gz`` in one pass, in memory.

    The archive is read by :func:`~fastmlp.data.sources.read_tar` (every member checked
    as its header is read; nothing written to disk). Returns what :func:`read_folder` returns.
    """
    layout = _layout(layout)
    wanted = set(layout.files)
    raw = read_tar(archive, lambda parts: parts[1] if len(parts) == 2 and parts[0] == layout.folder
                   and parts[1] in wanted else None)
    missing = [n for n in layout.files if n not in raw]
    if missing:
        raise DataError(f"{archive} does not contain {layout.folder}/{missing} (official python layout)")
    return _assemble(raw, lambda n: f"{archive} (member {layout.folder}/{n})", layout)
