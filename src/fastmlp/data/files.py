"""CIFAR-10's files: where they are, fetching the official archive, and reading them safely.

Batch files are pickles; they are read with an unpickler that only accepts the
few NumPy globals a CIFAR-10 batch needs, so a hostile file cannot run code.
Archives are read as a stream (nothing is written to disk from them), with a
size limit on every member and on the whole decompressed stream, so a
decompression bomb costs an error, not a full disk.
"""
from __future__ import annotations

import codecs
import hashlib
import io
import math
import os
import pickle
import tarfile
import time
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable

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
    "archive_mode",
    "CIFAR10_URL",
    "DataError",
    "DataNotFoundError",
    "FOLDER_NAME",
    "IMAGE_SHAPE",
    "LABEL_NAMES",
    "MAX_ARCHIVE_BYTES",
    "MAX_FILE_BYTES",
    "NUM_CLASSES",
    "default_cache_dir",
    "check_arrays",
    "check_cifar10",
    "download_cifar10",
    "download_file",
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
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
BATCH_FILES = (*TRAIN_BATCHES, TEST_BATCH, META_FILE)
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DATA_ENV = "FASTMLP_DATA"
CACHE_ENV = "FASTMLP_CACHE"
#: Seconds before an unanswered download gives up.
DOWNLOAD_TIMEOUT = 30.0
#: Seconds a whole download may take (the 170 MB archive at 100 kB/s fits).
DOWNLOAD_DEADLINE = 3600.0
#: Largest batch file read (a real one is 31 MB: 10,000 images of 3,072 bytes).
MAX_FILE_BYTES = 256 * 2**20
#: Largest decompressed archive stream read (the real one is 177 MB).
MAX_ARCHIVE_BYTES = 2**30

PIXELS = int(np.prod(IMAGE_SHAPE))  # 3072 values per image: R plane, G plane, B plane


class DataError(ValueError):
    """A CIFAR-10 file is corrupt, truncated, unsafe or not in the expected layout.

    The message names the offending file (and the archive member, if any).
    """


class DataNotFoundError(FileNotFoundError):
    """CIFAR-10 is not where it was looked for and could not (or may not) be downloaded."""


# --------------------------------------------------------------------------- decoded arrays

#: dtypes a data set's inputs may have: uint8 pixels (converted batch by batch) or model-ready floats.
INPUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))


def _describe(value: Any) -> str:
    return f"{value.dtype} array of shape {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__


def check_arrays(data: dict[str, Any], what: str = "the decoded data", *, shape: tuple[int, ...] | None = None,
                 n_classes: int | None = None) -> dict[str, Any]:
    """Check a data set's arrays and class names; return ``data``.

    Parameters
    ----------
    data : dict
        ``x_train``, ``x_test``: (n, ...) arrays of one of :data:`INPUT_DTYPES` with the same
        shape per example; ``y_train``, ``y_test``: int64 (n,) labels in ``0..len(label_names)-1``;
        ``label_names``: a non-empty list of str.
    what : str
        Names the data in messages.
    shape, n_classes : optional
        The shape of one example and the number of classes the data set must have.

    Raises
    ------
    DataError
        Naming ``what``, the part that is wrong, what was expected and what was found.
    """
    names = data.get("label_names")
    if (not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)
            or (n_classes is not None and len(names) != n_classes)):
        count = f"{n_classes}" if n_classes is not None else "one or more"
        raise DataError(f"{what}: the class names should be a list of {count} str, got {names!r:.200}")
    for split in ("train", "test"):
        x, y = data.get(f"x_{split}"), data.get(f"y_{split}")
        if not isinstance(x, np.ndarray) or x.dtype not in INPUT_DTYPES or x.ndim < 2 or x.shape[0] == 0:
            raise DataError(f"{what}: x_{split} should be a non-empty (n, ...) array of uint8, float32 or "
                            f"float64, got {_describe(x)}")
        expected = shape if shape is not None else data["x_train"].shape[1:]
        if x.shape[1:] != tuple(expected) or x.dtype != data["x_train"].dtype:
            raise DataError(f"{what}: x_{split} should hold {data['x_train'].dtype} examples of shape "
                            f"{tuple(expected)}, got {_describe(x)}")
        if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (x.shape[0],):
            raise DataError(f"{what}: y_{split} should be {x.shape[0]} int64 labels, got {_describe(y)}")
        if y.min() < 0 or y.max() >= len(names):
            raise DataError(f"{what}: y_{split} should lie in 0..{len(names) - 1} ({len(names)} classes), "
                            f"found values in {y.min()}..{y.max()}")
    return data


def check_cifar10(data: dict[str, Any], what: str = "the decoded CIFAR-10 data") -> dict[str, Any]:
    """:func:`check_arrays` for CIFAR-10: images (3, 32, 32), 10 classes."""
    return check_arrays(data, what, shape=IMAGE_SHAPE, n_classes=NUM_CLASSES)


# --------------------------------------------------------------------------- where


def default_cache_dir() -> Path:
    """The cache folder: ``$FASTMLP_CACHE`` if set, else ``~/.cache/fastmlp``.

    It is the last place :func:`resolve_data_dir` falls back to, where downloads
    land by default, and where decoded arrays are kept (``<cache>/decoded/``).
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


def not_found_message(root: Path, reason: str = "") -> str:
    return (
        f"CIFAR-10 was not found in {root}: looked for the folder {root / FOLDER_NAME}/ and the archive "
        f"{root / ARCHIVE_NAME}. {reason}To fix it, put the official python-version archive {ARCHIVE_NAME} "
        f"(from {CIFAR10_URL}) or its extracted {FOLDER_NAME}/ folder (data_batch_1..5, test_batch, "
        f"batches.meta) into {root}, or pass data_dir= / set {DATA_ENV} to a folder that holds one of them."
    )


def locate(root: Path) -> tuple[str, Path] | None:
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


def source_files(kind: str, path: Path) -> list[Path]:
    """The files whose bytes make up a source: the archive, or a folder's batch files in a fixed order."""
    if kind == "archive":
        return [path]
    missing = [n for n in BATCH_FILES if not (path / n).is_file()]
    if missing:
        raise DataError(f"{path} is not a complete CIFAR-10 python folder: missing {missing}")
    return [path / n for n in BATCH_FILES]


# --------------------------------------------------------------------------- download


def download_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT,
    deadline: float = DOWNLOAD_DEADLINE,
) -> Path:
    """Download the CIFAR-10 archive into ``data_dir`` and check its md5.

    Parameters
    ----------
    data_dir : path or None
        Destination folder, resolved by :func:`resolve_data_dir`; created if needed.
    url, md5 : str or None
        Default to the module constants :data:`CIFAR10_URL` and :data:`CIFAR10_MD5`
        (read at call time, so tests can point them at a local ``file://`` copy).
    progress, timeout, deadline
        As in :func:`download_file`.

    Returns
    -------
    pathlib.Path
        The downloaded archive.
    """
    root = resolve_data_dir(data_dir)
    return download_file(CIFAR10_URL if url is None else url, root / ARCHIVE_NAME,
                         md5=CIFAR10_MD5 if md5 is None else md5, progress=progress, timeout=timeout,
                         deadline=deadline, not_found=lambda reason: not_found_message(root, reason))


def download_file(
    url: str,
    dest: Path,
    *,
    md5: str,
    progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT,
    deadline: float = DOWNLOAD_DEADLINE,
    not_found: Callable[[str], str] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and check its md5.

    The bytes go to a temporary file beside the target (with a tqdm progress
    bar); only when the md5 matches is it renamed to ``dest``, so an interrupted,
    late or corrupt download never leaves a file behind.

    Parameters
    ----------
    url : str
    dest : Path
        The file to write; its folder is created if needed.
    md5 : str
        The published md5 of the file (hex).
    progress : bool
        Show the progress bar.
    timeout : float
        Seconds to wait for the server, at the connection and at every read.
    deadline : float
        Seconds the whole transfer may take: a server that keeps sending a byte
        now and then never trips ``timeout``, so the transfer is also given up
        once this is spent (checked after every read, so it may overrun by up
        to ``timeout``).
    not_found : callable, optional
        ``not_found(reason)`` gives the message of the DataNotFoundError raised
        (default: the reason and where to put the file by hand).

    Raises
    ------
    DataNotFoundError
        Offline, the transfer failed (any URLError/OSError) or ran past ``deadline``.
    DataError
        The downloaded bytes do not have the expected md5.
    """
    import http.client  # imported here: only a download needs them (~10 ms of every run otherwise)
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    if not_found is None:
        not_found = lambda reason: f"{reason}Download it by hand from {url} to {dest}."  # noqa: E731
    started = time.monotonic()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise DataNotFoundError(not_found(f"Downloading {url} failed ({exc}). ")) from exc
    digest = hashlib.md5(usedforsecurity=False)
    # read1 returns what one receive brings: read(n) would wait for all n bytes of a dripping server
    read = getattr(response, "read1", response.read)
    try:
        with response, atomic_path(dest) as tmp:
            length = response.headers.get("Content-Length") if response.headers else None
            total = int(length) if length and length.isdigit() else None
            with open(tmp, "wb") as out, tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, disable=not progress
            ) as bar:
                while chunk := read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                    if time.monotonic() - started > deadline:
                        raise TimeoutError(f"the transfer took more than its deadline of {deadline:g} s "
                                           f"({bar.n} bytes received)")
            if digest.hexdigest() != md5:
                raise DataError(
                    f"downloaded {url} has md5 {digest.hexdigest()}, expected {md5}: the transfer was "
                    f"corrupted or the file changed; nothing was kept in {dest.parent}"
                )
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise DataNotFoundError(not_found(f"Downloading {url} was interrupted ({exc}). ")) from exc
    return dest


# --------------------------------------------------------------------------- batches


class _CheckedArray(np.ndarray):
    """The array a batch pickle rebuilds, whose ``__setstate__`` checks the data before NumPy takes it.

    A pickle says an array's shape and dtype apart from its bytes; NumPy would
    allocate the declared shape first, so a 100-byte file could ask for gigabytes.
    Here the declared size must equal the byte string that backs it (which the
    file itself holds, so it is bounded by the file-size limits).
    """

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError(f"an array's state should be a 4- or 5-tuple, got {type(state).__name__}")
        shape, dtype, raw = state[-4], state[-3], state[-1]
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise pickle.UnpicklingError(f"refusing an array of dtype {dtype!r:.100}: only plain numbers are read")
        if not isinstance(raw, bytes):
            raise pickle.UnpicklingError(f"an array's data should be a byte string, got {type(raw).__name__}")
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise pickle.UnpicklingError(f"an array's shape should be a tuple of ints >= 0, got {shape!r:.100}")
        declared = dtype.itemsize * math.prod(shape)  # Python ints: no overflow
        if declared != len(raw):
            raise pickle.UnpicklingError(
                f"an array declares shape {shape} of {dtype} ({declared} bytes) but its data holds "
                f"{len(raw)} bytes; refusing to allocate what the file does not contain")
        super().__setstate__(state)


class _ArrayClass:
    """Stands for ``numpy.ndarray`` in a pickle: only :func:`_checked_reconstruct` accepts it.

    Calling ``numpy.ndarray(shape, dtype)`` from a pickle would allocate any shape
    with no data behind it, so this stand-in refuses to be called.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("refusing to call numpy.ndarray directly (it allocates a declared shape)")


def _checked_reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """NumPy's ``_reconstruct`` for plain arrays only, starting empty whatever shape it is asked for."""
    if subtype is not _ArrayClass:
        raise pickle.UnpicklingError(f"refusing to rebuild {subtype!r:.100}: only numpy.ndarray is read")
    return _np_reconstruct(_CheckedArray, (0,), dtype_code)


def _checked_scalar(dtype: Any, raw: Any = None) -> Any:
    """NumPy's ``scalar`` for plain dtypes whose bytes are all there."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise pickle.UnpicklingError(f"refusing a NumPy scalar of dtype {dtype!r:.100} with "
                                     f"{type(raw).__name__} data")
    return _np_scalar(dtype, raw)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals an ndarray in a CIFAR batch needs.

    The original batches were written by Python 2 and name
    ``numpy.core.multiarray._reconstruct``; Python 3 protocol-2 pickles add
    ``_codecs.encode`` for bytes. Anything else is refused, so loading a
    hostile file cannot call arbitrary functions; the array helpers are checked
    versions that never allocate more than the file's own bytes.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _checked_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _checked_reconstruct,
        ("numpy.core.multiarray", "scalar"): _checked_scalar,
        ("numpy._core.multiarray", "scalar"): _checked_scalar,
        ("numpy", "ndarray"): _ArrayClass,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _plain_arrays(obj: Any) -> Any:
    """``obj`` with the checked arrays inside a dict, list or tuple turned into plain ndarrays (views)."""
    if isinstance(obj, np.ndarray):
        return obj.view(np.ndarray)
    if isinstance(obj, dict):
        return {k: _plain_arrays(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain_arrays(v) for v in obj)
    return obj


def _unpickle(stream: IO[bytes], what: str) -> dict[str, Any]:
    """Load the pickled dict in ``stream`` with str keys; ``what`` names it in errors."""
    try:
        # 'bytes' keeps Python 2 strings as bytes: the pixel string becomes the
        # array's buffer without a round trip through a 30 MB str.
        obj = _plain_arrays(_BatchUnpickler(stream, encoding="bytes").load())
    except Exception as exc:
        raise DataError(
            f"{what} is not a readable CIFAR-10 pickle ({type(exc).__name__}: {exc}); "
            "the file is truncated or corrupt"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{what} should hold a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _check_batch(batch: dict[str, Any], what: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise DataError(f"{what} lacks the key(s) {missing}; found {sorted(map(str, batch))}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{what}: 'data' should be a uint8 array of shape (n, {PIXELS}), got {got}")
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


def _check_label_names(meta: dict[str, Any], what: str) -> list[str]:
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != NUM_CLASSES:
        raise DataError(f"{what}: 'label_names' should be a list of {NUM_CLASSES} names, got {names!r:.200}")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _read_limited(path: Path, what: str) -> bytes:
    size = path.stat().st_size  # an unreadable file is an OSError naming itself
    if size > MAX_FILE_BYTES:
        raise DataError(f"{what} is {size} bytes, more than a CIFAR-10 batch file can be ({MAX_FILE_BYTES})")
    return path.read_bytes()


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
        Unreadable/truncated pickle, a file larger than :data:`MAX_FILE_BYTES`,
        missing keys, wrong shape or dtype, labels outside 0..9, or lengths that differ.
    """
    what = name or str(path)
    return _check_batch(_unpickle(io.BytesIO(_read_limited(Path(path), what)), what), what)


def _assemble(raw: dict[str, bytes], describe: Callable[[str], str]) -> dict[str, Any]:
    """The arrays of a data set from the bytes of its batch files (keyed by file name)."""
    label_names = _check_label_names(_unpickle(io.BytesIO(raw[META_FILE]), describe(META_FILE)), describe(META_FILE))
    train = [_check_batch(_unpickle(io.BytesIO(raw[n]), describe(n)), describe(n)) for n in TRAIN_BATCHES]
    x_test, y_test = _check_batch(_unpickle(io.BytesIO(raw[TEST_BATCH]), describe(TEST_BATCH)), describe(TEST_BATCH))
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
        "label_names": label_names,
    }


def read_folder(folder: Path) -> dict[str, Any]:
    """Read and check every file of a ``cifar-10-batches-py`` folder.

    Returns ``x_train`` uint8 (n, 3, 32, 32), ``y_train`` int64 (n,), ``x_test``,
    ``y_test``, ``label_names``; raises :class:`DataError` naming the bad file.
    """
    files = source_files("folder", folder)
    raw = {p.name: _read_limited(p, str(p)) for p in files}
    return _assemble(raw, lambda n: str(folder / n))


def _check_member(member: tarfile.TarInfo, archive: Path) -> str | None:
    """Raise DataError for a member that is unsafe anywhere; return its batch-file name if it is wanted."""
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
    if member.offset_data + member.size > MAX_ARCHIVE_BYTES:
        raise DataError(f"{archive}: refusing to unpack: member {name!r} ends past {MAX_ARCHIVE_BYTES} "
                        "decompressed bytes, far more than CIFAR-10 holds")
    parts = tuple(p for p in parts if p != ".")
    if member.isfile() and len(parts) == 2 and parts[0] == FOLDER_NAME and parts[1] in BATCH_FILES:
        if member.size > MAX_FILE_BYTES:
            raise DataError(f"{archive}: refusing to unpack: member {name!r} is {member.size} bytes, "
                            f"more than a CIFAR-10 batch file can be ({MAX_FILE_BYTES})")
        return parts[1]
    return None


def _read_to_the_end(stream: IO[bytes], archive: Path) -> None:
    """Read the (decompressed) stream past the tar's end marker to its end.

    tarfile stops at the end-of-archive blocks, before the compressed stream's
    trailer, so a gzip CRC would never be checked: damaged bytes inside a stored
    (incompressible) block, pixels for instance, would come out as silent garbage.
    Reaching the end makes the decompressor check it (a mismatch raises).
    """
    while stream.read(1 << 20):
        if stream.tell() > MAX_ARCHIVE_BYTES:
            raise DataError(f"{archive}: refusing to read on: more than {MAX_ARCHIVE_BYTES} decompressed bytes, "
                            "far more than CIFAR-10 holds")


#: tarfile's read modes by the magic bytes that open each kind of file (a plain tar says "ustar" at 257).
_ARCHIVE_MAGIC = ((b"\x1f\x8b", "r:gz"), (b"BZh", "r:bz2"), (b"\xfd7zXZ\x00", "r:xz"))
_TAR_MAGIC_OFFSET = 257


def archive_mode(archive: Path) -> str:
    """tarfile's read mode for ``archive``, told by its first bytes (gzip, bzip2, xz or a plain POSIX tar).

    tarfile's own probing ("r:*") tries every decompressor over the whole file before it
    gives up, which costs seconds per 100 MB of zeros and ends in a misleading message.

    Raises
    ------
    DataError
        When the file starts like none of them, showing its first bytes.
    """
    with open(archive, "rb") as f:
        head = f.read(_TAR_MAGIC_OFFSET + 8)
    for magic, mode in _ARCHIVE_MAGIC:
        if head.startswith(magic):
            return mode
    if head[_TAR_MAGIC_OFFSET:_TAR_MAGIC_OFFSET + 5] == b"ustar":
        return "r:"
    raise DataError(f"{archive} is not a gzip/tar archive: it starts with {head[:8].hex(' ')!r} "
                    "(expected gzip 1f 8b, bzip2 'BZh', xz, or a POSIX tar); the file is damaged or another format")


def read_archive(archive: Path) -> dict[str, Any]:
    """Read and check the batch files inside a CIFAR-10 ``.tar.gz`` in one pass, in memory.

    Every member is checked as its header is read (no absolute paths, no ``..``,
    no links or devices, sizes within :data:`MAX_FILE_BYTES` and the stream within
    :data:`MAX_ARCHIVE_BYTES`); nothing is written to disk. Returns what
    :func:`read_folder` returns.
    """
    raw: dict[str, bytes] = {}
    mode = archive_mode(archive)
    try:
        with tarfile.open(archive, mode) as tar:
            for member in tar:
                wanted = _check_member(member, archive)
                if wanted is not None:
                    raw[wanted] = tar.extractfile(member).read()
            _read_to_the_end(tar.fileobj, archive)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive} is not a readable CIFAR-10 archive ({type(exc).__name__}: {exc})") from exc
    except OSError as exc:
        if exc.errno is not None:
            raise  # a file-system problem (permissions, I/O), not a bad archive
        raise DataError(f"{archive} is not a readable CIFAR-10 archive ({type(exc).__name__}: {exc})") from exc
    missing = [n for n in BATCH_FILES if n not in raw]
    if missing:
        raise DataError(f"{archive} does not contain {FOLDER_NAME}/{missing} (official python layout)")
    return _assemble(raw, lambda n: f"{archive} (member {FOLDER_NAME}/{n})")
