"""The data set registry: every data set from small files in its official format, and short trainings on each."""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from _cifar_synth import CIFAR100_ARCHIVE, IDX_FILES, idx_bytes, make_synthetic, write_cifar100_archive, write_idx_set
from fastmlp import data as D
from fastmlp import train as fm_train
from fastmlp.data import idx as I
from fastmlp.data import registry as R

@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    """Every data set written in its official format: ``{name: (data_dir, expected arrays)}``."""
    root = tmp_path_factory.mktemp("datasets")
    out = {}
    c100 = make_synthetic((3, 32, 32), 100, 1000, 300, seed=1, signal=0.5)
    out["cifar100"] = (write_cifar100_archive(root / "c100" / CIFAR100_ARCHIVE, c100).parent, c100)
    coarse = {**c100, "y_train": c100["y_train"] // 5, "y_test": c100["y_test"] // 5,
              "label_names": [f"superclass {i}" for i in range(20)]}
    out["cifar100_coarse"] = (root / "c100", coarse)
    for i, name in enumerate(("mnist", "fashion_mnist")):
        digits = make_synthetic((1, 28, 28), 10, 500, 200, seed=2 + i, signal=0.5)
        digits["label_names"] = list(I.MNIST.label_names if name == "mnist" else I.FASHION_MNIST.label_names)
        out[name] = (write_idx_set(root / f"idx{i}", digits), digits)
    table = make_synthetic((6, 7), 4, 400, 100, seed=5, signal=0.5)
    np.savez(root / "u8.npz", x_train=table["x_train"], y_train=table["y_train"], x_test=table["x_test"],
             y_test=table["y_test"], class_names=np.array(["w", "x", "y", "z"]))
    out["npz"] = (root / "u8.npz", {**table, "x_train": table["x_train"].reshape(400, 42),
                                    "x_test": table["x_test"].reshape(100, 42), "label_names": ["w", "x", "y", "z"]})
    floats = {k: (v.astype(np.float32) - 128) / 64 if k[0] == "x" else v for k, v in table.items() if k != "label_names"}
    np.savez_compressed(root / "f32.npz", **floats)
    out["npz_float"] = (root / "f32.npz", {**floats, "x_train": floats["x_train"].reshape(400, 42),
                                           "x_test": floats["x_test"].reshape(100, 42),
                                           "label_names": ["0", "1", "2", "3"]})
    return out


@pytest.mark.parametrize("case", ["cifar100", "cifar100_coarse", "mnist", "fashion_mnist", "npz", "npz_float"])
def test_each_data_set_reads_its_official_format(sources, case, tmp_path):
    name = "npz" if case.startswith("npz") else case
    data_dir, expected = sources[case]
    for _ in range(2):  # decoded, then from the cache
        loaded = D.load_raw(name, data_dir, download=False, cache_dir=tmp_path / "cache")
        for key in ("x_train", "y_train", "x_test", "y_test"):
            want = expected[key]
            assert loaded[key].dtype == want.dtype and loaded[key].shape == want.shape, key
            np.testing.assert_array_equal(loaded[key], want, err_msg=key)
        assert loaded["label_names"] == list(expected["label_names"])


def test_fine_and_coarse_cifar100_keep_their_own_cache_entries(sources, tmp_path):
    data_dir, _ = sources["cifar100"]
    cache = tmp_path / "cache"
    fine = D.load_raw("cifar100", data_dir, cache_dir=cache)
    coarse = D.load_raw("cifar100_coarse", data_dir, cache_dir=cache)
    assert len(fine["label_names"]) == 100 and len(coarse["label_names"]) == 20
    np.testing.assert_array_equal(coarse["y_train"], fine["y_train"] // 5)
    assert len(D.load_raw("cifar100", data_dir, cache_dir=cache)["label_names"]) == 100


def test_load_dataset_wraps_any_set_in_datasets_with_class_names(sources):
    data = D.load_dataset("fashion_mnist", sources["fashion_mnist"][0], one_hot=True, validation_size=50,
                          preprocessing="standardize", seed=0)
    assert data["train"].num_examples == 450 and data["validation"].num_examples == 50
    assert data["train"].class_names == I.FASHION_MNIST.label_names
    x, y = data["train"].next_batch(8)
    assert x.shape == (8, 1, 28, 28) and y.shape == (8, 10)
    assert D.example_shape(data) == ((1, 28, 28), 10)
    floats = D.load_dataset("npz", sources["npz_float"][0], one_hot=False)
    assert floats["train"].preprocessing is None and floats["train"].dtype == np.float32
    with pytest.raises(ValueError, match="augment=True needs an image data set"):
        D.load_dataset("npz", sources["npz"][0], augment=True)


@pytest.mark.parametrize("case, steps, floor", [
    ("cifar100", 300, 0.10), ("mnist", 200, 0.4), ("fashion_mnist", 200, 0.4), ("npz", 300, 0.6),
    ("npz_float", 300, 0.6)])
def test_a_short_fastmlp_training_on_each_data_set_beats_chance(sources, case, steps, floor, tmp_path, capsys):
    # chance is 1/100 for CIFAR-100, 1/10 for the digits, 1/4 for the npz sets
    name = "npz" if case.startswith("npz") else case
    out = tmp_path / "run"
    extra = ["--learning_rate", "0.05"] if case == "npz_float" else []  # features near 1, not pixels near 100
    argv = ["--dataset", name, "--data_dir", sources[case][0], "--max_steps", steps, "--eval_freq", steps,
            "--batch_size", 100, "--quiet", "--out_dir", out, *extra]
    assert fm_train.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= floor, metrics["test_accuracy"]
    assert metrics["dataset"] == name and metrics["flags"]["dataset"] == name
    assert metrics["class_names"] == list(sources[case][1]["label_names"])
    assert {"metrics.json", "curves.csv", "checkpoint.npz"} <= {p.name for p in out.iterdir()}


def test_resume_keeps_the_data_set_and_refuses_another(sources, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--dataset", "mnist", "--data_dir", str(sources["mnist"][0]), "--max_steps", "20", "--eval_freq", "10",
            "--quiet", "--out_dir", str(out)]
    assert fm_train.main(argv) == 0
    # --dataset is taken from the checkpoint when not given ...
    assert fm_train.main(["--resume", str(out), "--data_dir", str(sources["mnist"][0]), "--max_steps", "30",
                          "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["dataset"] == "mnist"
    capsys.readouterr()
    # ... and another one (same shapes, other data) is refused
    assert fm_train.main(["--resume", str(out), "--dataset", "fashion_mnist", "--data_dir",
                          str(sources["fashion_mnist"][0]), "--max_steps", "40", "--quiet"]) == 2
    assert "--dataset 'mnist'" in capsys.readouterr().err


def test_the_torch_trainers_take_any_data_set(sources, tmp_path):
    pytest.importorskip("torch")
    from torch_models import train_convnet, train_mlp

    mlp = train_mlp.main(["--dataset", "npz", "--data_dir", str(sources["npz"][0]), "--max_steps", "150",
                          "--eval_freq", "150", "--batch_size", "50", "--learning_rate", "0.01", "--device", "cpu",
                          "--quiet", "--out_dir", str(tmp_path / "mlp")])
    assert mlp == 0
    metrics = json.loads((tmp_path / "mlp" / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.6 and metrics["class_names"] == ["w", "x", "y", "z"]
    # The ConvNet on 28x28 one-channel images: the input shape comes from the data.
    digits = make_synthetic((1, 28, 28), 10, 20, 8, seed=9, signal=0.6)
    write_idx_set(tmp_path / "tiny", digits)
    assert train_convnet.main(["--dataset", "mnist", "--data_dir", str(tmp_path / "tiny"), "--max_steps", "2",
                               "--eval_freq", "2", "--batch_size", "4", "--eval_batch_size", "8", "--device", "cpu",
                               "--quiet", "--out_dir", str(tmp_path / "cnn")]) == 0
    metrics = json.loads((tmp_path / "cnn" / "metrics.json").read_text())
    assert metrics["dataset"] == "mnist" and len(metrics["class_names"]) == 10
    assert train_convnet.main(["--dataset", "npz", "--data_dir", str(sources["npz"][0]), "--max_steps", "1",
                               "--device", "cpu", "--quiet", "--out_dir", str(tmp_path / "no")]) == 2


def test_a_search_runs_on_the_data_set_it_is_given_and_keeps_it(sources, tmp_path, capsys):
    pytest.importorskip("optuna")
    from fastmlp import search

    flags = ["--model", "numpy", "--dataset", "mnist", "--data_dir", str(sources["mnist"][0]), "--validation_size",
             "100", "--max_steps_cap", "5", "--eval_freq", "5", "--quiet", "--out_dir", str(tmp_path / "s")]
    assert search.main([*flags, "--n_trials", "1"]) == 0
    final = json.loads((tmp_path / "s" / "final" / "metrics.json").read_text())
    assert final["dataset"] == "mnist" and final["class_names"] == list(I.MNIST.label_names)
    capsys.readouterr()
    other = [v if v != "mnist" else "fashion_mnist" for v in flags]
    assert search.main([*other, "--n_trials", "2"]) == 2
    assert "dataset: stored 'mnist', now 'fashion_mnist'" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad files


def _write_npz_member(path: Path, name: str, header_shape: tuple, payload: bytes, **arrays) -> Path:
    """An .npz holding ``arrays`` and a member ``name`` whose .npy header declares ``header_shape`` uint8."""
    np.savez(path, **arrays)
    header = {"descr": "|u1", "fortran_order": False, "shape": header_shape}
    raw = np.lib.format.magic(1, 0) + _npy_header(header)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(f"{name}.npy", raw + payload)
    return path


def _npy_header(header: dict) -> bytes:
    text = repr(header).encode("latin1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return len(text).to_bytes(2, "little") + text


@pytest.mark.parametrize("case, message", [
    ("declared-huge", "declares"), ("missing", r"lacks \['y_test'\]"), ("objects", "Python objects"),
    ("labels-float", "class indices"), ("not-zip", "not a readable .npz"), ("names-short", "class_names"),
    ("nan", "NaN"),
])
def test_bad_npz_files_are_refused_with_the_reason(tmp_path, case, message):
    path = tmp_path / "bad.npz"
    x, y = np.zeros((4, 3), np.uint8), np.arange(4) % 2
    good = dict(x_train=x, y_train=y, x_test=x, y_test=y)
    if case == "declared-huge":
        _write_npz_member(path, "x_test", (2**20, 2**20), b"\0" * 16, x_train=x, y_train=y, y_test=y)
    elif case == "missing":
        np.savez(path, **{k: v for k, v in good.items() if k != "y_test"})
    elif case == "objects":
        np.savez(path, **{**good, "x_test": np.array([{"a": 1}] * 4, dtype=object)})
    elif case == "labels-float":
        np.savez(path, **{**good, "y_train": y.astype(np.float32)})
    elif case == "not-zip":
        path.write_bytes(b"not a zip file at all" * 10)
    elif case == "names-short":
        np.savez(path, **good, class_names=np.array(["only one"]))
    else:
        np.savez(path, **{**good, "x_train": np.full((4, 3), np.nan, np.float32), "x_test": x.astype(np.float32)})
    with pytest.raises(D.DataError, match=message) as info:
        D.load_raw("npz", path, cache_dir=tmp_path / "cache")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("case, message", [
    ("not-gzip", "not gzip-compressed"), ("huge", "more than a data file may be"),
    ("short", "but holds"), ("longer", "holds more"), ("type", "unsigned bytes"), ("counts", "labels"),
    ("label-range", r"0\.\.9"),
])
def test_bad_idx_files_are_refused_naming_the_file(tmp_path, case, message):
    digits = make_synthetic((1, 28, 28), 10, 20, 10, seed=4)
    folder = write_idx_set(tmp_path / "d", digits)
    target = folder / IDX_FILES[0]
    images = digits["x_train"][:, 0]
    raw = {
        "not-gzip": None,
        "huge": bytes([0, 0, 8, 3]) + (2**16).to_bytes(4, "big") * 3,
        "short": idx_bytes(images)[:-100],
        "longer": idx_bytes(images) + b"\0",
        "type": bytes([0, 0, 0x0D, 3]) + idx_bytes(images)[4:],
        "counts": idx_bytes(images[:-1]),
        "label-range": None,
    }[case]
    if case == "not-gzip":
        target.write_bytes(idx_bytes(images))
    elif case == "label-range":
        target = folder / IDX_FILES[3]
        target.write_bytes(gzip.compress(idx_bytes(np.full(10, 12, np.uint8))))
    else:
        target.write_bytes(gzip.compress(raw))
    with pytest.raises(D.DataError, match=message) as info:
        D.load_raw("mnist", folder, cache_dir=tmp_path / "cache")
    assert str(folder) in str(info.value)


def test_a_cifar100_archive_without_its_meta_file_is_named(tmp_path, sources):
    import tarfile

    data = make_synthetic((3, 32, 32), 100, 100, 100, seed=6)
    full = write_cifar100_archive(tmp_path / "full" / CIFAR100_ARCHIVE, data)
    cut = tmp_path / "cut" / CIFAR100_ARCHIVE
    cut.parent.mkdir()
    with tarfile.open(full) as src, tarfile.open(cut, "w:gz") as dst:
        for member in src:
            if not member.name.endswith("/meta"):
                dst.addfile(member, src.extractfile(member))
    with pytest.raises(D.DataError, match=r"does not contain cifar-100-python/\['meta'\]"):
        D.load_raw("cifar100", cut.parent, cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- downloads


def test_mnist_downloads_its_four_files_with_their_md5s(tmp_path, monkeypatch):
    digits = make_synthetic((1, 28, 28), 10, 30, 10, seed=8)
    server = write_idx_set(tmp_path / "server", digits)
    md5 = tuple(hashlib.md5((server / n).read_bytes()).hexdigest() for n in IDX_FILES)
    layout = dataclasses.replace(I.MNIST, base_url=server.as_uri() + "/", md5=md5)
    entry = dataclasses.replace(R.DATASETS["mnist"], download=functools.partial(I.download_idx, layout=layout))
    monkeypatch.setitem(R.DATASETS, "mnist", entry)
    loaded = D.load_raw("mnist", tmp_path / "data", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(loaded["x_train"], digits["x_train"])
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(IDX_FILES)
    # a wrong md5 keeps nothing of that file
    bad = dataclasses.replace(layout, md5=("0" * 32, *md5[1:]))
    with pytest.raises(D.DataError, match="md5"):
        I.download_idx(tmp_path / "other", lambda reason: reason, layout=bad)
    assert not (tmp_path / "other" / "mnist" / IDX_FILES[0]).exists()


def test_npz_has_no_download_and_says_what_to_pass(tmp_path):
    with pytest.raises(D.DataNotFoundError, match="an .npz file holding x_train, y_train, x_test, y_test"):
        D.load_raw("npz", tmp_path / "nothing.npz")


def test_an_unknown_data_set_is_refused_on_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        fm_train.main(["--dataset", "imagenet", "--out_dir", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "imagenet" in capsys.readouterr().err
