"""CIFAR-10: find, fetch, unpack, check and batch it.

Where the data comes from, first match wins:

1. the ``data_dir`` argument,
2. the ``FASTMLP_DATA`` environment variable,
3. the default cache folder (``$FASTMLP_CACHE``, else ``~/.cache/fastmlp``).

That folder may hold the official "python version" folder ``cifar-10-batches-py/``
or the archive ``cifar-10-python.tar.gz`` (the folder wins when both are there);
``data_dir`` may also name the batches folder or the archive file itself. An
archive is unpacked once into ``<cache>/extracted/<key>/`` (never beside the
archive: the shared copy is read-only), through a temporary folder that is
renamed into place only after every batch was read back and checked. When
nothing is found, the official archive is downloaded into the chosen folder and
checked against its published md5 -- only downloads are checked, so a re-encoded
copy with another checksum loads fine.

Batch files are pickles; they are read with an unpickler that only accepts the
few NumPy globals a CIFAR-10 batch needs, so a hostile file cannot run code.
Loading and checking all six batches of the real data set takes 0.1-0.3 s once
unpacked (2-core machine), so no second (``.npy``) cache is kept.

:func:`get_cifar10` adds the course's preprocessing and returns
:class:`DataSet` objects whose :meth:`DataSet.next_batch` follows the course's
epoch semantics and whose :meth:`DataSet.get_state` makes ``--resume`` exact.
"""
from __future__ import annotations

import codecs
import contextlib
import hashlib
import http.client
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

import numpy as np

from fastmlp.atomic import atomic_path

try:  # NumPy >= 2 keeps the pickle helpers in numpy._core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.multiarray import scalar as _np_scalar

__all__ = [
    "ARCHIVE_NAME",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DataError",
    "DataNotFoundError",
    "DataSet",
    "FOLDER_NAME",
    "IMAGE_SHAPE",
    "LABEL_NAMES",
    "NUM_CLASSES",
    "PREPROCESSINGS",
    "augment_batch",
    "default_cache_dir",
    "download_cifar10",
    "get_cifar10",
    "load_cifar10",
    "read_batch",
    "resolve_data_dir",
]

#: The official archive; tests point CIFAR10_URL at a local ``file://`` copy.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
#: md5 of the official archive (checked for downloads only).
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: Accepted values of ``get_cifar10(preprocessing=...)``.
PREPROCESSINGS = ("mean_image", "standardize")
DATA_ENV = "FASTMLP_DATA"
CACHE_ENV = "FASTMLP_CACHE"
#: Seconds before an unanswered download gives up.
DOWNLOAD_TIMEOUT = 30.0

_FILTER_ERRORS = getattr(tarfile, "FilterError", ())  # Python >= 3.11.4
_PIXELS = int(np.prod(IMAGE_SHAPE))  # 3072 values per image: R plane, G plane, B plane
_STATE_FORMAT = "fastmlp.data.DataSet/1"


class DataError(ValueError):
    """A CIFAR-10 file is corrupt, truncated, unsafe or not in the expected layout.

    The message names the offending file (and the archive member, if any).
    """


class DataNotFoundError(FileNotFoundError):
    """CIFAR-10 is not where it was looked for and could not (or may not) be downloaded."""


# --------------------------------------------------------------------------- where


def default_cache_dir() -> Path:
    """The cache folder: ``$FASTMLP_CACHE`` if set, else ``~/.cache/fastmlp``.

    It is the last place :func:`resolve_data_dir` falls back to, where downloads
    land by default, and where archives are unpacked (``<cache>/extracted/``).
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fastmlp"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder (or file) to take CIFAR-10 from.

    Parameters
    ----------
    data_dir : path or None
        Used when given. Otherwise ``$FASTMLP_DATA`` when set and non-empty,
        otherwise :func:`default_cache_dir`. The first of these that is given
        wins, whether or not it holds the data (the loader then downloads
        into it, or reports where to put the archive).

    Returns
    -------
    pathlib.Path
        With ``~`` expanded; relative paths stay relative to the working folder.
    """
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir must be a path (str or os.PathLike) or None, got {type(data_dir).__name__}")
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return default_cache_dir()


def _not_found_message(root: Path, reason: str = "") -> str:
    return (
        f"CIFAR-10 was not found in {root}: looked for the folder {root / FOLDER_NAME}/ and the archive "
        f"{root / ARCHIVE_NAME}. {reason}To fix it, put the official python-version archive {ARCHIVE_NAME} "
        f"(from {CIFAR10_URL}) or its extracted {FOLDER_NAME}/ folder (data_batch_1..5, test_batch, "
        f"batches.meta) into {root}, or pass data_dir= / set {DATA_ENV} to a folder that holds one of them."
    )


def _locate(root: Path) -> tuple[str, Path] | None:
    """``("folder", batches_folder)``, ``("archive", archive_file)`` or ``None``."""
    if root.is_file():
        return "archive", root
    if not root.is_dir():
        return None
    if (root / FOLDER_NAME).is_dir():  # the folder wins over the archive
        return "folder", root / FOLDER_NAME
    if root.name == FOLDER_NAME or ((root / TRAIN_BATCHES[0]).is_file() and (root / TEST_BATCH).is_file()):
        return "folder", root  # data_dir names the batches folder itself
    if (root / ARCHIVE_NAME).is_file():
        return "archive", root / ARCHIVE_NAME
    return None


# --------------------------------------------------------------------------- download


def download_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT,
) -> Path:
    """Download the CIFAR-10 archive into ``data_dir`` and check its md5.

    The bytes go to a temporary file beside the target (with a tqdm progress
    bar); only when the md5 matches is it renamed to ``cifar-10-python.tar.gz``,
    so an interrupted or corrupt download never leaves an archive behind.

    Parameters
    ----------
    data_dir : path or None
        Destination folder, resolved by :func:`resolve_data_dir`; created if needed.
    url, md5 : str or None
        Default to the module constants :data:`CIFAR10_URL` and :data:`CIFAR10_MD5`
        (read at call time, so tests can point them at a local ``file://`` copy).
    progress : bool
        Show the progress bar.
    timeout : float
        Seconds to wait for the server.

    Returns
    -------
    pathlib.Path
        The downloaded archive.

    Raises
    ------
    DataNotFoundError
        Offline or the transfer failed (any URLError/OSError); the message says
        where to put the archive by hand.
    DataError
        The downloaded bytes do not have the expected md5.
    """
    from tqdm.auto import tqdm

    root = resolve_data_dir(data_dir)
    url = CIFAR10_URL if url is None else url
    md5 = CIFAR10_MD5 if md5 is None else md5
    dest = root / ARCHIVE_NAME
    try:
        root.mkdir(parents=True, exist_ok=True)
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise DataNotFoundError(_not_found_message(root, f"Downloading {url} failed ({exc}). ")) from exc
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with response, atomic_path(dest) as tmp:
            length = response.headers.get("Content-Length") if response.headers else None
            total = int(length) if length and length.isdigit() else None
            with open(tmp, "wb") as out, tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=ARCHIVE_NAME, disable=not progress
            ) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if digest.hexdigest() != md5:
                raise DataError(
                    f"downloaded {url} has md5 {digest.hexdigest()}, expected {md5}: the transfer was "
                    f"corrupted or the file changed; nothing was kept in {root}"
                )
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise DataNotFoundError(_not_found_message(root, f"Downloading {url} was interrupted ({exc}). ")) from exc
    return dest


# --------------------------------------------------------------------------- reading


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals an ndarray in a CIFAR batch needs.

    The original batches were written by Python 2 and name
    ``numpy.core.multiarray._reconstruct``; Python 3 protocol-2 pickles add
    ``_codecs.encode`` for bytes. Anything else is refused, so loading a
    hostile file cannot call arbitrary functions.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy.core.multiarray", "scalar"): _np_scalar,
        ("numpy._core.multiarray", "scalar"): _np_scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _unpickle(path: Path, what: str) -> dict[str, Any]:
    """Load the pickled dict in ``path`` with str keys; ``what`` names it in errors."""
    with open(path, "rb") as f:  # an unreadable file is an OSError naming itself
        try:
            # 'bytes' keeps Python 2 strings as bytes: the pixel string becomes the
            # array's buffer without a round trip through a 30 MB str.
            obj = _BatchUnpickler(f, encoding="bytes").load()
        except Exception as exc:
            raise DataError(
                f"{what} is not a readable CIFAR-10 pickle ({type(exc).__name__}: {exc}); "
                "the file is truncated or corrupt"
            ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{what} should hold a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_batch(path: str | os.PathLike, *, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one CIFAR-10 batch file (``data_batch_k`` or ``test_batch``).

    Parameters
    ----------
    path : path
        The pickled batch: a dict with ``data`` (n, 3072) uint8 (1024 red, then
        green, then blue values, rows of 32) and ``labels`` (n ints in 0..9).
    name : str, optional
        How to name the file in error messages (default: ``path``).

    Returns
    -------
    images : ndarray, uint8, shape (n, 3, 32, 32)
    labels : ndarray, int64, shape (n,)

    Raises
    ------
    DataError
        Unreadable/truncated pickle, missing keys, wrong shape or dtype, labels
        outside 0..9, or lengths that differ.
    """
    what = name or str(path)
    batch = _unpickle(Path(path), what)
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise DataError(f"{what} lacks the key(s) {missing}; found {sorted(map(str, batch))}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{what}: 'data' should be a uint8 array of shape (n, {_PIXELS}), got {got}")
    labels = np.asarray(batch["labels"])
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"{what}: 'labels' should be a list of ints, got {labels.dtype} values of shape {labels.shape}")
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{what}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(
            f"{what}: labels should lie in 0..{NUM_CLASSES - 1}, found values in {labels.min()}..{labels.max()}"
        )
    return data.reshape((-1, *IMAGE_SHAPE)), labels.astype(np.int64)


def _read_label_names(path: Path, what: str) -> list[str]:
    meta = _unpickle(path, what)
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != NUM_CLASSES:
        raise DataError(f"{what}: 'label_names' should be a list of {NUM_CLASSES} names, got {names!r:.200}")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _read_folder(folder: Path, describe: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Read and check every file of a ``cifar-10-batches-py`` folder.

    ``describe(file_name)`` names a file in error messages (default: its path).
    """
    describe = describe or (lambda file_name: str(folder / file_name))
    wanted = (*TRAIN_BATCHES, TEST_BATCH, META_FILE)
    missing = [n for n in wanted if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{describe('')} is not a complete CIFAR-10 python folder: missing {missing}")
    label_names = _read_label_names(folder / META_FILE, describe(META_FILE))
    train = [read_batch(folder / n, name=describe(n)) for n in TRAIN_BATCHES]
    x_test, y_test = read_batch(folder / TEST_BATCH, name=describe(TEST_BATCH))
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
        "label_names": label_names,
    }


# --------------------------------------------------------------------------- unpacking


def _cache_key(archive: Path) -> tuple[str, str]:
    """(prefix naming the archive's path, full key that also changes with its contents)."""
    stat = archive.stat()
    prefix = hashlib.sha256(str(archive.resolve()).encode()).hexdigest()[:12]
    stamp = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return prefix, f"{prefix}-{stamp}"


def _check_member(member: tarfile.TarInfo, archive: Path) -> bool:
    """Raise DataError for a member that could escape the target; True if it is wanted."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or PurePosixPath(name).is_absolute():
        raise DataError(f"{archive}: refusing to unpack: member {name!r} has an absolute path")
    if ".." in parts or "\\" in name:
        raise DataError(f"{archive}: refusing to unpack: member {name!r} would escape the target folder")
    if member.issym() or member.islnk():
        raise DataError(
            f"{archive}: refusing to unpack: member {name!r} is a link (to {member.linkname!r}); "
            "the CIFAR-10 archive holds only plain files"
        )
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing to unpack: member {name!r} is not a plain file or folder")
    parts = tuple(p for p in parts if p != ".")
    return bool(parts) and parts[0] == FOLDER_NAME


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _extract_and_read(archive: Path, cache_dir: Path) -> dict[str, Any]:
    """Unpack ``archive`` once into ``cache_dir/extracted/<key>/`` and read it.

    Extraction goes into a temporary sibling folder; every batch is read back and
    checked there, and only then is the folder renamed into place, so a crash,
    a corrupt archive or a bad batch never leaves a half-filled cache.
    """
    extracted = cache_dir / "extracted"
    prefix, key = _cache_key(archive)
    target = extracted / key
    if (target / FOLDER_NAME).is_dir():
        return _read_folder(
            target / FOLDER_NAME,
            lambda n: f"{target / FOLDER_NAME / n} (unpacked from {archive}; delete {target} to unpack again)",
        )
    extracted.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=extracted))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                # One pass: each member is checked as its header is read, then unpacked.
                members = (m for m in tar if _check_member(m, archive))
                if hasattr(tarfile, "data_filter"):  # our check first, tarfile's "data" filter as well
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python without extraction filters
                    tar.extractall(tmp, members=members)
        except _FILTER_ERRORS as exc:  # tarfile's own "data" filter caught what our check let through
            raise DataError(f"{archive}: refusing to unpack: {exc}") from exc
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise DataError(f"{archive} is not a readable CIFAR-10 archive ({type(exc).__name__}: {exc})") from exc
        except OSError as exc:
            if exc.errno is not None:
                raise  # a file-system problem (disk full, permissions), not a bad archive
            raise DataError(f"{archive} is not a readable CIFAR-10 archive ({type(exc).__name__}: {exc})") from exc
        if not (tmp / FOLDER_NAME).is_dir():
            raise DataError(f"{archive} does not contain the folder {FOLDER_NAME}/ (official python layout)")
        data = _read_folder(tmp / FOLDER_NAME, lambda n: f"{archive} (member {FOLDER_NAME}/{n})")
        _fsync_tree(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / FOLDER_NAME).is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process unpacked it first: keep theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Older unpackings of an archive at the same path (since replaced) are stale, and so
    # are temporary folders of killed runs (an unpacking takes seconds, not an hour).
    for stale in extracted.glob(f"{prefix}-*"):
        if stale.name != key:
            shutil.rmtree(stale, ignore_errors=True)
    for orphan in extracted.glob(f".tmp-{prefix}-*"):
        with contextlib.suppress(OSError):
            if time.time() - orphan.stat().st_mtime > 3600:
                shutil.rmtree(orphan, ignore_errors=True)
    return data


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Load CIFAR-10 as uint8 images and int64 labels, without preprocessing.

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
        Where archives are unpacked; default :func:`default_cache_dir`.

    Returns
    -------
    dict
        ``x_train`` uint8 (n_train, 3, 32, 32) and ``y_train`` int64 (n_train,)
        (the five training batches in order), ``x_test`` uint8 (n_test, 3, 32, 32),
        ``y_test`` int64 (n_test,), ``label_names`` list of 10 str. Fresh arrays.

    Raises
    ------
    DataNotFoundError (a FileNotFoundError)
        Nothing found and ``download=False``, or the download failed (offline).
    DataError (a ValueError)
        A corrupt, truncated or unsafe archive or batch file (named in the message).
    """
    root = resolve_data_dir(data_dir)
    source = _locate(root)
    if source is None:
        if not download:
            raise DataNotFoundError(_not_found_message(root, "Downloading was not allowed (download=False). "))
        source = ("archive", download_cifar10(root))
    kind, path = source
    if kind == "folder":
        return _read_folder(path)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _extract_and_read(path, cache)


# --------------------------------------------------------------------------- batches


def augment_batch(images: np.ndarray, rng: np.random.Generator, *, pad: int = 4, flip: bool = True) -> np.ndarray:
    """Random crop (after zero padding) and random horizontal flip, per image.

    Vectorised: one gather for the whole batch, no loop over images. The draws
    come from ``rng`` in a fixed order (row offsets, column offsets, flips), so
    restoring the generator's state reproduces the result.

    Parameters
    ----------
    images : ndarray, shape (batch, channels, height, width)
        Not modified. Zero padding equals the mean pixel for centred data.
    rng : numpy.random.Generator
        Advanced by the draws.
    pad : int
        Pixels of zero padding on each side; the crop offset is uniform in
        ``0..2*pad`` along each axis (``pad=0``: no crop).
    flip : bool
        Mirror left-right with probability 1/2.

    Returns
    -------
    ndarray, shape and dtype of ``images``
        A new array.
    """
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        got = f"shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be an array of shape (batch, channels, height, width), got {got}")
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    n, c, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else images
    rows = rng.integers(0, 2 * pad + 1, size=n)[:, None] + np.arange(h)  # (n, h) source rows
    cols = rng.integers(0, 2 * pad + 1, size=n)[:, None] + np.arange(w)  # (n, w) source columns
    if flip:
        mirrored = rng.random(n) < 0.5
        cols = np.where(mirrored[:, None], cols[:, ::-1], cols)
    return padded[
        np.arange(n)[:, None, None, None],
        np.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


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


class DataSet:
    """Images and labels served in shuffled mini-batches (the course's ``DataSet``).

    Parameters
    ----------
    images : ndarray, shape (n, 3, 32, 32) (any (n, ...) without ``augment``)
        Kept by reference, never modified; batches are gathered copies.
    labels : ndarray, shape (n,) int class indices or (n, n_classes) one-hot
        Kept by reference, never modified.
    seed : int, numpy.random.SeedSequence or None
        Seeds this data set's own ``numpy.random.Generator`` (shuffling and
        augmentation); None draws fresh entropy.
    augment : bool
        Apply :func:`augment_batch` (random crop, pad 4, and horizontal flip) to
        each batch from :meth:`next_batch` (not to :meth:`as_arrays`).
    flatten : bool
        :meth:`next_batch` and :meth:`as_arrays` return x of shape (batch, 3072).

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
        self._images = images
        self._labels = labels
        self.augment = bool(augment)
        self.flatten = bool(flatten)
        self._rng = np.random.default_rng(seed)
        self._perm = self._rng.permutation(self.num_examples)
        self._index_in_epoch = 0
        self._epochs_completed = 0

    @property
    def images(self) -> np.ndarray:
        """All images, shape (n, 3, 32, 32), in their original order (not a copy)."""
        return self._images

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
        return (
            f"DataSet(num_examples={self.num_examples}, images={self._images.dtype}{list(self._images.shape[1:])}, "
            f"labels={self._labels.dtype}{list(self._labels.shape[1:])}, augment={self.augment}, "
            f"flatten={self.flatten}, epochs_completed={self._epochs_completed})"
        )

    def next_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``batch_size`` examples (the course's epoch semantics).

        Parameters
        ----------
        batch_size : int
            > 0. May exceed what is left of the epoch (the batch then spans two
            epochs) or even ``num_examples``.

        Returns
        -------
        x : ndarray, shape (batch_size, 3, 32, 32), or (batch_size, 3072) with ``flatten``
            A new array (augmented when ``augment``).
        y : ndarray, shape (batch_size,) or (batch_size, n_classes)
            A new array.

        Advances the position, the epoch counter and the generator.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
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
        index = parts[0] if len(parts) == 1 else np.concatenate(parts)
        x = self._images[index]
        if self.augment:
            x = augment_batch(x, self._rng)
        if self.flatten:
            x = x.reshape(x.shape[0], -1)
        return x, self._labels[index]

    def as_arrays(self, flatten: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All examples in their original order, for evaluation (no augmentation).

        Parameters
        ----------
        flatten : bool or None
            Return x as (n, 3072); None uses the data set's ``flatten``.

        Returns
        -------
        x : ndarray, shape (n, 3, 32, 32) or (n, 3072)
            A view of the stored images: do not modify it.
        y : ndarray, shape (n,) or (n, n_classes)
            The stored labels (not a copy).
        """
        flatten = self.flatten if flatten is None else flatten
        x = self._images.reshape(self.num_examples, -1) if flatten else self._images
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
            A missing key, a value of the wrong type, or a state taken from a
            data set of another size.
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
        try:
            rng_state = json.loads(_as_str(state["rng_state"], "rng_state"))
            bit_generator = getattr(np.random, rng_state["bit_generator"])()
            bit_generator.state = rng_state
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"state['rng_state'] is not a NumPy bit-generator state ({exc})") from exc
        self._rng = np.random.Generator(bit_generator)
        self._perm = perm
        self._index_in_epoch = index
        self._epochs_completed = epochs


# --------------------------------------------------------------------------- preprocessing


def _channel_mean_std(images: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images (n, C, H, W) on the 0..255 scale, float64 (C,).

    Chunked, so no float copy of the whole set is made. The squares of uint8
    values are exact in float32 and their sums exact in float64, so
    E[x^2] - E[x]^2 loses nothing to cancellation beyond the final rounding.
    """
    total = np.zeros(images.shape[1])
    total_sq = np.zeros(images.shape[1])
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].astype(np.float32)
        total += part.sum(axis=(0, 2, 3), dtype=np.float64)
        total_sq += np.square(part).sum(axis=(0, 2, 3), dtype=np.float64)
    count = images.size / images.shape[1]
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))


def get_cifar10(
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
    """CIFAR-10 preprocessed and wrapped in :class:`DataSet` objects.

    Parameters
    ----------
    data_dir, download, cache_dir
        As in :func:`load_cifar10`.
    one_hot : bool
        Labels as one-hot rows (n, 10) of ``dtype``; else int64 class indices (n,).
    validation_size : int
        Examples carved from the END of the training set (0 <= v < n_train).
        They are removed before any statistic is computed.
    preprocessing : {"mean_image", "standardize"}
        ``"mean_image"`` (the course): subtract the per-pixel mean image of the
        training split, pixels stay on the 0..255 scale. ``"standardize"``:
        scale to 0..1, subtract the per-channel mean and divide by the
        per-channel std of the training split.
    flatten : bool
        Batches (and ``as_arrays``) come as (batch, 3072) rows.
    dtype : float32 or float64
        Image (and one-hot label) dtype.
    augment : bool
        Random crop (pad 4) and horizontal flip on "train" batches only.
    seed : int or None
        Seeds the three data sets (independent streams from one SeedSequence).

    Returns
    -------
    dict
        ``"train"``: DataSet of n_train - validation_size examples,
        ``"validation"``: DataSet of validation_size examples or None,
        ``"test"``: DataSet. Images (n, 3, 32, 32) of ``dtype``.
    """
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    raw = load_cifar10(data_dir, download=download, cache_dir=cache_dir)
    n_total = raw["x_train"].shape[0]
    if isinstance(validation_size, bool) or not isinstance(validation_size, (int, np.integer)):
        raise TypeError(f"validation_size must be an int, got {type(validation_size).__name__}")
    if not 0 <= validation_size < n_total:
        raise ValueError(f"validation_size must lie in 0..{n_total - 1} (training set of {n_total}), got {validation_size}")
    n_train = n_total - int(validation_size)
    train_u8 = raw["x_train"][:n_train]  # statistics come from this part only

    def transform(x_u8: np.ndarray) -> np.ndarray:
        if preprocessing == "mean_image":
            return np.subtract(x_u8, mean_image, dtype=dtype)  # cast and centre in one pass
        x = np.subtract(x_u8, channel_mean[:, None, None], dtype=dtype)
        x /= channel_std[:, None, None]
        return x

    if preprocessing == "mean_image":
        mean_image = train_u8.mean(axis=0, dtype=np.float64).astype(dtype)  # (3, 32, 32)
    else:
        mean, std = _channel_mean_std(train_u8)
        # (x/255 - m/255) / (s/255) == (x - m) / s: one pass, same result
        channel_mean, channel_std = mean.astype(dtype), np.maximum(std, 1e-12).astype(dtype)
    x_all = transform(raw["x_train"])
    x_test = transform(raw["x_test"])

    def labels(y: np.ndarray) -> np.ndarray:
        return np.eye(NUM_CLASSES, dtype=dtype)[y] if one_hot else y

    y_all = labels(raw["y_train"])
    seeds = np.random.SeedSequence(seed).spawn(3)
    train = DataSet(x_all[:n_train], y_all[:n_train], seed=seeds[0], augment=augment, flatten=flatten)
    validation = (
        DataSet(x_all[n_train:], y_all[n_train:], seed=seeds[1], flatten=flatten) if validation_size else None
    )
    test = DataSet(x_test, labels(raw["y_test"]), seed=seeds[2], flatten=flatten)
    return {"train": train, "validation": validation, "test": test}
