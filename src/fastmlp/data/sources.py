"""Where data sets live and how their files are read safely, whatever the data set.

Generic parts shared by every entry of :mod:`fastmlp.data.registry`: the data and
cache folders, downloads (md5-checked, with a timeout per read and an overall
deadline), archives told by their magic bytes and read as a stream with a limit
on every member and on the whole decompressed stream, an unpickler that builds
nothing but plain NumPy arrays no larger than the bytes behind them, and the
check every decoded data set passes (shapes, dtypes, labels, class names).
"""
from __future__ import annotations

import codecs
import hashlib
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
from fastmlp.reading import read_regular_file

try:  # NumPy >= 2 keeps the pickle helpers in numpy._core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.multiarray import scalar as _np_scalar

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "DataError",
    "DataNotFoundError",
    "INPUT_DTYPES",
    "MAX_ARCHIVE_BYTES",
    "MAX_FILE_BYTES",
    "archive_mode",
    "check_arrays",
    "default_cache_dir",
    "download_file",
    "read_limited",
    "read_tar",
    "resolve_data_dir",
    "unpickle",
]

DATA_ENV = "FASTMLP_DATA"
CACHE_ENV = "FASTMLP_CACHE"
#: Seconds before an unanswered download gives up.
DOWNLOAD_TIMEOUT = 30.0
#: Seconds a whole download may take (the 170 MB CIFAR archive at 100 kB/s fits).
DOWNLOAD_DEADLINE = 3600.0
#: Largest data file read whole (a CIFAR-10 batch is 31 MB, CIFAR-100's training file 155 MB).
MAX_FILE_BYTES = 256 * 2**20
#: Largest decompressed archive stream read (CIFAR-10's is 177 MB).
MAX_ARCHIVE_BYTES = 2**30


class DataError(ValueError):
    """A data file is corrupt, truncated, unsafe or not in the expected layout.

    The message names the offending file (and the archive member, if any).
    """


class DataNotFoundError(FileNotFoundError):
    """A data set is not where it was looked for and could not (or may not) be downloaded."""


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
    """The folder (or file) to take a data set from.

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


# --------------------------------------------------------------------------- download


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


# --------------------------------------------------------------------------- pickles


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
    """Unpickler that resolves only the globals an ndarray in a CIFAR batch file needs.

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


def unpickle(stream: IO[bytes], what: str) -> dict[str, Any]:
    """Load the pickled dict in ``stream`` with str keys; ``what`` names it in errors."""
    try:
        # 'bytes' keeps Python 2 strings as bytes: the pixel string becomes the
        # array's buffer without a round trip through a 30 MB str.
        obj = _plain_arrays(_BatchUnpickler(stream, encoding="bytes").load())
    except Exception as exc:
        raise DataError(
            f"{what} is not a readable pickle of a data set ({type(exc).__name__}: {exc}); "
            "the file is truncated or corrupt"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{what} should hold a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_limited(path: Path, what: str = "data file") -> bytes:
    """The bytes of ``path``, a regular file of at most :data:`MAX_FILE_BYTES` (a symbolic link is followed).

    Raises
    ------
    DataError
        For a FIFO, device or socket, or a larger file, naming ``what`` and the path.
    OSError
        When it cannot be opened or read (naming itself).
    """
    try:
        return read_regular_file(path, limit=MAX_FILE_BYTES, what=what)
    except ValueError as exc:
        raise DataError(str(exc)) from None


# --------------------------------------------------------------------------- archives


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


def _check_member(member: tarfile.TarInfo, archive: Path, wanted: Callable[[tuple[str, ...]], str | None]) -> str | None:
    """Raise DataError for a member that is unsafe anywhere; return its key when ``wanted`` names it."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or PurePosixPath(name).is_absolute():
        raise DataError(f"{archive}: refusing to unpack: member {name!r} has an absolute path")
    if ".." in parts or "\\" in name:
        raise DataError(f"{archive}: refusing to unpack: member {name!r} would escape the target folder")
    if member.issym() or member.islnk():
        raise DataError(f"{archive}: refusing to unpack: member {name!r} is a link (to {member.linkname!r}); "
                        "a data set archive holds only plain files")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing to unpack: member {name!r} is not a plain file or folder")
    if member.offset_data + member.size > MAX_ARCHIVE_BYTES:
        raise DataError(f"{archive}: refusing to unpack: member {name!r} ends past {MAX_ARCHIVE_BYTES} "
                        "decompressed bytes, far more than a data set archive holds")
    key = wanted(tuple(p for p in parts if p != ".")) if member.isfile() else None
    if key is not None and member.size > MAX_FILE_BYTES:
        raise DataError(f"{archive}: refusing to unpack: member {name!r} is {member.size} bytes, "
                        f"more than a data file may be ({MAX_FILE_BYTES})")
    return key


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
                            "far more than a data set archive holds")


def read_tar(archive: Path, wanted: Callable[[tuple[str, ...]], str | None]) -> dict[str, bytes]:
    """The bytes of the wanted members of a tar archive, read in one pass, in memory.

    Parameters
    ----------
    archive : Path
        A gzip, bzip2 or xz compressed or plain tar (told by :func:`archive_mode`).
    wanted : callable
        ``wanted(parts)`` gets a regular member's path as a tuple of names and returns
        the key to keep its bytes under, or None to skip it.

    Every member is checked as its header is read (no absolute paths, no ``..``, no
    links or devices, wanted sizes within :data:`MAX_FILE_BYTES` and the stream
    within :data:`MAX_ARCHIVE_BYTES`), and the stream is read to its end so the
    compression's checksum is verified; nothing is written to disk.

    Raises
    ------
    DataError
        An unreadable, damaged, unsafe or oversized archive, named in the message.
    """
    raw: dict[str, bytes] = {}
    mode = archive_mode(archive)
    try:
        with tarfile.open(archive, mode) as tar:
            for member in tar:
                key = _check_member(member, archive, wanted)
                if key is not None:
                    raw[key] = tar.extractfile(member).read()
            _read_to_the_end(tar.fileobj, archive)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive} is not a readable archive ({type(exc).__name__}: {exc})") from exc
    except OSError as exc:
        if exc.errno is not None:
            raise  # a file-system problem (permissions, I/O), not a bad archive
        raise DataError(f"{archive} is not a readable archive ({type(exc).__name__}: {exc})") from exc
    return raw
