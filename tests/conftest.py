"""Shared fixtures: synthetic CIFAR-10 (folder and archive) and the real archive.

Fixtures only. The writers live in ``tests/_cifar_synth.py`` so a test can build
its own variants (a truncated archive, a tarball with a ``../evil`` member...).
Nothing here imports fastmlp: collection works even before the core is built.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from _cifar_synth import ARCHIVE_NAME, FOLDER_NAME, make_synthetic_cifar, write_cifar_archive, write_cifar_folder

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Point FASTMLP_CACHE (where decoded arrays are kept) at a session folder, not ~/.cache/fastmlp.

    Every source a test loads, synthetic ones included, gets a decoded-array entry; they
    must not pile up in the user's cache. Subprocesses inherit the variable.
    """
    previous = os.environ.get("FASTMLP_CACHE")
    os.environ["FASTMLP_CACHE"] = str(tmp_path_factory.mktemp("fastmlp-cache"))
    yield Path(os.environ["FASTMLP_CACHE"])
    if previous is None:
        os.environ.pop("FASTMLP_CACHE", None)
    else:
        os.environ["FASTMLP_CACHE"] = previous


@pytest.fixture(scope="session")
def synthetic_cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``cifar-10-batches-py/`` in the official python format.

    Five training batches of 200 images and a test batch of 200 (uint8,
    classes balanced and learnable: per-class template plus noise); the arrays
    are ``_cifar_synth.make_synthetic_cifar()``. Pass it as ``data_dir``.
    Session-scoped: do not modify it (build a variant with ``write_cifar_folder``).
    """
    return write_cifar_folder(tmp_path_factory.mktemp("synthetic_cifar"), make_synthetic_cifar())


@pytest.fixture(scope="session")
def small_cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller synthetic CIFAR-10 folder (100 training, 16 test images) for ConvNet CLI runs."""
    return write_cifar_folder(tmp_path_factory.mktemp("small_cifar"), make_synthetic_cifar(20, 16, seed=1))


@pytest.fixture(scope="session")
def synthetic_cifar_archive(tmp_path_factory: pytest.TempPathFactory, synthetic_cifar_dir: Path) -> Path:
    """The same data as ``synthetic_cifar_dir``, as ``<tmp>/cifar-10-python.tar.gz`` (the file's path).

    ``data_dir`` may be this file or its folder (``.parent``). Loading it unpacks
    it into the cache folder: pass ``cache_dir=tmp_path`` (or set
    ``FASTMLP_CACHE``) to keep ``~/.cache/fastmlp`` clean.
    """
    archive = tmp_path_factory.mktemp("synthetic_cifar_archive") / ARCHIVE_NAME
    return write_cifar_archive(archive, synthetic_cifar_dir)


@pytest.fixture(scope="session")
def real_cifar_dir() -> Path:
    """The folder holding the real CIFAR-10 (``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/``).

    Looks at ``$FASTMLP_DATA`` (relative to the working folder, then to the
    repository root), then at ``<repo root>/../shared/data``; skips the test
    when none of them holds the data, or fails it when ``FASTMLP_REQUIRE_DATA=1``
    (CI sets it: a run that lost the data must not pass by skipping every
    real-data test).
    """
    candidates = []
    env = os.environ.get("FASTMLP_DATA")
    if env:
        candidates += [Path(env).expanduser(), REPO_ROOT / env]
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for candidate in candidates:
        if (candidate / ARCHIVE_NAME).is_file() or (candidate / FOLDER_NAME).is_dir():
            return candidate.resolve()
    message = (f"real CIFAR-10 not found: none of {[str(c) for c in candidates]} holds {ARCHIVE_NAME} or "
               f"{FOLDER_NAME}/; set FASTMLP_DATA to the folder that does")
    if os.environ.get("FASTMLP_REQUIRE_DATA") == "1":
        pytest.fail(message + " (FASTMLP_REQUIRE_DATA=1: the real data is required)", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def torch_single_thread():
    """Run a test with one torch thread: small tensors only pay threading overhead on 2 cores."""
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def openblas_images():
    """Run a test with fastmlp's own images GEMM switched off: the first layer multiplies through OpenBLAS.

    For the tests that promise the very numbers of converting first and multiplying
    the floats; the hand-written GEMM sums in another order (tests/test_images_gemm.py).
    """
    from fastmlp import _kernels as K

    previous = K.images_gemm(False)
    yield
    K.images_gemm(previous)
