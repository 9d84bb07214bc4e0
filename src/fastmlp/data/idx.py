"""MNIST's idx format (MNIST, Fashion-MNIST): four gzip-compressed files of images and labels.

An idx file is a 4-byte magic (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order.
Only unsigned bytes (type 0x08) are read, which is what both data sets hold.
The declared size is checked against :data:`~fastmlp.data.sources.MAX_FILE_BYTES`
before anything is allocated, and the gzip stream is read to its end so its CRC
is checked.
"""
from __future__ import annotations

import dataclasses
import math
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fastmlp.data import sources
from fastmlp.data.sources import DataError, check_arrays, download_file

__all__ = ["IdxLayout", "FASHION_MNIST", "MNIST", "download_idx", "find_idx_source", "read_idx", "read_idx_set"]

_UBYTE = 0x08
#: The four official files: (training images, training labels, test images, test labels).
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclasses.dataclass(frozen=True)
class IdxLayout:
    """An MNIST-style data set: where its four files come from and what they hold.

    Attributes
    ----------
    name, title : str
        The registry's name (also the sub-folder downloads go to) and the name in messages.
    base_url : str
        The four :data:`IDX_FILES` are downloaded from ``base_url + file name``.
    md5 : tuple of 4 str
        Their published md5s, in the order of :data:`IDX_FILES`.
    label_names : tuple of str
    """

    name: str
    title: str
    base_url: str
    md5: tuple[str, str, str, str]
    label_names: tuple[str, ...]


MNIST = IdxLayout("mnist", "MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/",
                  ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                   "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
                  tuple(str(d) for d in range(10)))
FASHION_MNIST = IdxLayout("fashion_mnist", "Fashion-MNIST",
                          "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
                          ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                           "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
                          ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                           "Bag", "Ankle boot"))


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of ndim dimensions in the gzip-compressed idx file ``path``.

    Raises
    ------
    DataError
        Not gzip, not an idx file of unsigned bytes with ``ndim`` dimensions, declaring
        more than :data:`~fastmlp.data.sources.MAX_FILE_BYTES`, truncated, longer than
        declared, or failing its CRC; the message names the file.
    """
    import gzip  # here: only the idx data sets need it, every run imports this module

    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"\x1f\x8b":  # told before gzip reads anything: a file of zeros fails here, at once
        raise DataError(f"{path} is not gzip-compressed (it starts with {magic.hex(' ')!r}); the official "
                        "idx files are .gz")
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] != _UBYTE or head[3] != ndim or len(head) < 4 + 4 * ndim:
                raise DataError(f"{path}: not an idx file of unsigned bytes with {ndim} dimensions "
                                f"(header {head[:4].hex(' ')!r})")
            shape = struct.unpack(f">{ndim}I", head[4:])
            size = math.prod(shape)
            if size > sources.MAX_FILE_BYTES:
                raise DataError(f"{path}: declares shape {shape} ({size} bytes), more than a data file may be "
                                f"({sources.MAX_FILE_BYTES})")
            values = f.read(size)
            extra = f.read(1)  # reaching the end makes gzip check the CRC
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a file-system problem, not a bad file
        raise DataError(f"{path} is not a readable gzip file ({type(exc).__name__}: {exc})") from exc
    if len(values) != size or extra:
        raise DataError(f"{path}: declares shape {shape} ({size} bytes) but holds "
                        f"{'more' if extra else len(values)} bytes")
    return np.frombuffer(values, dtype=np.uint8).reshape(shape)


def read_idx_set(folder: Path, layout: IdxLayout) -> dict[str, Any]:
    """The four idx files in ``folder`` as ``x_*`` uint8 (n, 1, rows, cols), ``y_*`` int64 (n,), ``label_names``."""
    data: dict[str, Any] = {"label_names": list(layout.label_names)}
    for split, images, labels in (("train", IDX_FILES[0], IDX_FILES[1]), ("test", IDX_FILES[2], IDX_FILES[3])):
        x, y = read_idx(folder / images, 3), read_idx(folder / labels, 1)
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{folder}: {images} holds {x.shape[0]} images but {labels} {y.shape[0]} labels")
        data[f"x_{split}"], data[f"y_{split}"] = x[:, None], y.astype(np.int64)
    return check_arrays(data, f"{layout.title} in {folder}", n_classes=len(layout.label_names))


def find_idx_source(root: Path, layout: IdxLayout) -> tuple[Path, list[Path], Callable[[], dict]] | None:
    """The folder holding the four files (``root/<name>/`` first, then ``root``), its files, and their reader."""
    for folder in (root / layout.name, root):
        if all((folder / name).is_file() for name in IDX_FILES):
            return folder, [folder / name for name in IDX_FILES], lambda: read_idx_set(folder, layout)
    return None


def download_idx(root: Path, not_found: Callable[[str], str], *, layout: IdxLayout) -> None:
    """Download the four files into ``root/<name>/``, each md5-checked (those already there are kept)."""
    for name, md5 in zip(IDX_FILES, layout.md5):
        dest = root / layout.name / name
        if not dest.is_file():
            download_file(layout.base_url + name, dest, md5=md5, not_found=not_found)
