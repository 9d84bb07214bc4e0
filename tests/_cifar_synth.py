"""Tiny synthetic CIFAR-10 in the official python layout, for tests.

The batch files are written opcode by opcode the way Python 2 pickled them
(``SHORT_BINSTRING``/``BINSTRING`` strings, ``numpy.core.multiarray._reconstruct``),
so ``pickle.load(f, encoding="latin1")`` gives str keys and ``encoding="bytes"``
gives bytes keys, exactly like the real files.

The images are learnable: every class has a fixed random 3x32x32 template and an
image is ``signal * template + (1 - signal) * uniform noise``, so a linear model
separates the classes after a few hundred steps.

Nothing here imports fastmlp, so the fixtures work even when the package does not.
"""
from __future__ import annotations

import gzip
import io
import struct
import tarfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

FOLDER_NAME = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# --------------------------------------------------------------------------- Python 2 style pickles


def _p2_string(raw: bytes) -> bytes:
    """A Python 2 ``str``: SHORT_BINSTRING below 256 bytes, else BINSTRING."""
    if len(raw) < 256:
        return b"U" + bytes([len(raw)]) + raw
    return b"T" + struct.pack("<I", len(raw)) + raw


def _p2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def _p2_ndarray(array: np.ndarray) -> bytes:
    """An ndarray the way NumPy under Python 2 reduced it (uint8 only, as in CIFAR)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"only uint8 arrays are written, got {array.dtype}")
    out = [b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\nndarray\n", _p2_int(0), b"\x85", _p2_string(b"b")]
    out += [b"\x87R", b"(", _p2_int(1), b"("]
    out += [_p2_int(int(d)) for d in array.shape]
    out += [b"t", b"cnumpy\ndtype\n", _p2_string(b"u1"), _p2_int(0), _p2_int(1), b"\x87R"]
    out += [b"(", _p2_int(3), _p2_string(b"|"), b"NNN", _p2_int(-1), _p2_int(-1), _p2_int(0), b"tb"]
    out += [b"\x89", _p2_string(array.tobytes()), b"tb"]
    return b"".join(out)


def _p2_value(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        return _p2_ndarray(value)
    if isinstance(value, bytes):
        return _p2_string(value)
    if isinstance(value, str):
        return _p2_string(value.encode("latin1"))
    if isinstance(value, (bool, np.bool_)):
        return b"\x88" if value else b"\x89"
    if isinstance(value, (int, np.integer)):
        return _p2_int(int(value))
    if isinstance(value, (list, tuple)):
        items = b"".join(_p2_value(v) for v in value)
        return b"]" + (b"(" + items + b"e" if value else b"")
    raise TypeError(f"cannot write {type(value).__name__}")


def py2_pickle_dict(mapping: dict[str, Any]) -> bytes:
    """Protocol-2 pickle of a dict with Python 2 ``str`` keys (and str values)."""
    items = b"".join(_p2_string(k.encode("latin1")) + _p2_value(v) for k, v in mapping.items())
    return b"\x80\x02}(" + items + b"u."


# --------------------------------------------------------------------------- data


def make_synthetic(shape: tuple[int, ...], n_classes: int, n_train: int, n_test: int, *, seed: int = 0,
                   signal: float = 0.35) -> dict[str, Any]:
    """Learnable synthetic uint8 examples of ``shape`` in ``n_classes`` classes (per-class template plus noise).

    Returns ``x_train`` uint8 (n_train, *shape), ``y_train`` int64, ``x_test``, ``y_test`` and
    ``label_names`` ("class 0", ...). Classes are balanced (as far as the sizes allow) and shuffled.
    """
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    templates = rng.integers(0, 256, size=(n_classes, size)).astype(np.float64)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % n_classes).astype(np.int64)
        noise = rng.integers(0, 256, size=(n, size))
        pixels = np.rint(signal * templates[labels] + (1.0 - signal) * noise).astype(np.uint8)
        return pixels.reshape(n, *shape), labels

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "label_names": [f"class {i}" for i in range(n_classes)]}


def make_synthetic_cifar(
    n_per_batch: int = 200, n_test: int = 200, *, seed: int = 0, signal: float = 0.35
) -> dict[str, Any]:
    """Learnable synthetic CIFAR-10 arrays, in the format ``fastmlp.data.load_cifar10`` returns.

    Returns
    -------
    dict
        ``x_train`` uint8 (5 * n_per_batch, 3, 32, 32), ``y_train`` int64,
        ``x_test`` uint8 (n_test, 3, 32, 32), ``y_test`` int64, ``label_names``.
        Classes are balanced (as far as the sizes allow) and shuffled.
    """
    data = make_synthetic((3, 32, 32), 10, 5 * n_per_batch, n_test, seed=seed, signal=signal)
    return {**data, "label_names": list(LABEL_NAMES)}


def write_batch(path: str | Path, images: np.ndarray, labels: Any, *, batch_label: str = "synthetic batch") -> Path:
    """Write one batch file: images uint8 (n, 3, 32, 32) or (n, 3072), labels (n,)."""
    images = np.asarray(images)
    data = images.reshape(images.shape[0], -1) if images.ndim == 4 else images
    content = {
        "batch_label": batch_label,
        "labels": [int(v) for v in np.asarray(labels).ravel()],
        "data": data,
        "filenames": [f"synthetic_{i:05d}.png" for i in range(data.shape[0])],
    }
    path = Path(path)
    path.write_bytes(py2_pickle_dict(content))
    return path


def write_cifar_folder(root: str | Path, data: dict[str, Any] | None = None) -> Path:
    """Write ``root/cifar-10-batches-py/`` (5 training batches, test batch, meta).

    ``data`` defaults to :func:`make_synthetic_cifar`; the training set is split
    into five equal batches. Returns ``root``.
    """
    data = make_synthetic_cifar() if data is None else data
    folder = Path(root) / FOLDER_NAME
    folder.mkdir(parents=True, exist_ok=True)
    n_per_batch = data["x_train"].shape[0] // 5
    for i, name in enumerate(TRAIN_BATCHES):
        part = slice(i * n_per_batch, (i + 1) * n_per_batch)
        write_batch(folder / name, data["x_train"][part], data["y_train"][part], batch_label=f"training batch {i + 1} of 5")
    write_batch(folder / TEST_BATCH, data["x_test"], data["y_test"], batch_label="testing batch 1 of 1")
    meta = {"num_cases_per_batch": n_per_batch, "label_names": list(data["label_names"]), "num_vis": 3072}
    (folder / META_FILE).write_bytes(py2_pickle_dict(meta))
    return Path(root)


def tar_member(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    """A (TarInfo, payload) pair for :func:`write_cifar_archive`'s ``extra_members``."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def write_cifar_archive(
    archive: str | Path,
    root: str | Path,
    *,
    extra_members: Iterable[tuple[tarfile.TarInfo, bytes | None]] = (),
    skip: Iterable[str] = (),
) -> Path:
    """Pack ``root/cifar-10-batches-py/`` into the .tar.gz ``archive``.

    Parameters
    ----------
    extra_members : (TarInfo, payload) pairs
        Appended after the real files (see :func:`tar_member`), e.g. an escaping
        ``../evil`` or a symlink, to build hostile variants.
    skip : file names
        Files of the folder to leave out.
    """
    archive, folder = Path(archive), Path(root) / FOLDER_NAME
    archive.parent.mkdir(parents=True, exist_ok=True)
    skip = set(skip)
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:  # random pixels do not compress anyway
        tar.add(folder, arcname=FOLDER_NAME, recursive=False)
        for path in sorted(folder.iterdir()):
            if path.name not in skip:
                tar.add(path, arcname=f"{FOLDER_NAME}/{path.name}")
        for info, payload in extra_members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return archive


def truncate_file(path: str | Path, keep_fraction: float = 0.5) -> Path:
    """Cut ``path`` to ``keep_fraction`` of its bytes (a broken download or disk)."""
    path = Path(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep_fraction)])
    return path


# --------------------------------------------------------------------------- the other data sets' official formats

CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def write_cifar100_archive(archive: str | Path, data: dict[str, Any]) -> Path:
    """CIFAR-100's official python archive of ``data`` (100 fine classes; coarse label = fine // 5)."""
    def batch(x: np.ndarray, y: np.ndarray, label: str) -> bytes:
        return py2_pickle_dict({"filenames": [f"synthetic_{i:05d}.png" for i in range(len(y))], "batch_label": label,
                                "fine_labels": [int(v) for v in y], "coarse_labels": [int(v) // 5 for v in y],
                                "data": x.reshape(len(x), -1)})

    meta = py2_pickle_dict({"fine_label_names": list(data["label_names"]),
                            "coarse_label_names": [f"superclass {i}" for i in range(20)]})
    members = {"train": batch(data["x_train"], data["y_train"], "training batch 1 of 1"),
               "test": batch(data["x_test"], data["y_test"], "testing batch 1 of 1"), "meta": meta}
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"{CIFAR100_FOLDER}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive


def idx_bytes(array: np.ndarray) -> bytes:
    """An uncompressed idx file of a uint8 array: magic (0, 0, 0x08, ndim), big-endian dimensions, the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_set(folder: str | Path, data: dict[str, Any]) -> Path:
    """MNIST's four official ``.gz`` idx files of ``data`` (x uint8 (n, 1, 28, 28) or (n, 28, 28)) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (data["x_train"], data["y_train"], data["x_test"], data["y_test"])
    for name, array in zip(IDX_FILES, arrays):
        array = np.asarray(array)
        array = array.reshape(array.shape[0], *array.shape[-2:]) if array.ndim > 1 else array
        (folder / name).write_bytes(gzip.compress(idx_bytes(array), compresslevel=1))
    return folder
