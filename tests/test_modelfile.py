"""fastmlp.save / fastmlp.load: round trips of every kind of model, and hostile files refused by name."""
from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

import fastmlp

safetensors_numpy = pytest.importorskip("safetensors.numpy")


@pytest.fixture
def mlp():
    return fastmlp.MLP(12, [7, 5], 3, dtype=np.float32, seed=0, init="kaiming")


@pytest.fixture
def saved(tmp_path, mlp):
    """A model file of ``mlp`` with a standardising preprocessing over (3, 2, 2) images."""
    return fastmlp.save(mlp, tmp_path / "m.safetensors", offset=np.arange(12.0), scale=np.full(12, 2.0),
                        preprocessing="standardize", classes=["cat", "dog", "emu"], input_shape=(3, 2, 2))


def _pixels(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 12)).astype(np.uint8)


# --------------------------------------------------------------------------- round trips
def test_a_loaded_model_predicts_raw_pixels_as_the_network_does_on_preprocessed_ones(saved, mlp):
    loaded = fastmlp.load(saved)
    x = _pixels()
    expected = mlp.predict_proba((x.astype(np.float32) - np.arange(12, dtype=np.float32)) / np.float32(2))
    np.testing.assert_array_equal(loaded.predict_proba(x), expected)
    assert loaded.predict(x).tolist() == [["cat", "dog", "emu"][i] for i in expected.argmax(1)]
    assert loaded.classes_.tolist() == ["cat", "dog", "emu"]
    assert loaded.dtype == np.float32 and loaded.preprocessing == "standardize"


def test_images_in_the_stored_layout_and_channels_last_give_the_same_answer(saved):
    loaded = fastmlp.load(saved)
    x = _pixels()
    chw = x.reshape(-1, 3, 2, 2)
    np.testing.assert_array_equal(loaded.predict_proba(chw), loaded.predict_proba(x))
    np.testing.assert_array_equal(loaded.predict_proba(chw.transpose(0, 2, 3, 1)), loaded.predict_proba(x))


def test_a_wrong_input_shape_is_refused_with_the_shapes_accepted(saved):
    loaded = fastmlp.load(saved)
    with pytest.raises(ValueError, match=r"\(N, 12\) or \(N, 3, 2, 2\) or \(N, 2, 2, 3\).*\(4, 13\)"):
        loaded.predict(np.zeros((4, 13), np.uint8))
    with pytest.raises(TypeError, match="x: expected a real numeric array"):
        loaded.predict(np.array([["a"] * 12]))


def test_a_plain_mlp_round_trips_with_index_classes(tmp_path, mlp):
    loaded = fastmlp.load(fastmlp.save(mlp, tmp_path / "plain.safetensors"))
    x = np.random.default_rng(1).normal(size=(5, 12))
    np.testing.assert_array_equal(loaded.predict_proba(x), mlp.predict_proba(x))
    assert loaded.classes_.tolist() == [0, 1, 2]
    for a, b in zip(loaded.model.linears, mlp.linears):
        np.testing.assert_array_equal(a.params["weight"], b.params["weight"])


def test_a_predictor_saves_again_unchanged(tmp_path, saved):
    first = fastmlp.load(saved)
    again = fastmlp.load(fastmlp.save(first, tmp_path / "again.safetensors"))
    np.testing.assert_array_equal(again.predict_proba(_pixels()), first.predict_proba(_pixels()))
    assert again.input_shape == (3, 2, 2) and again.classes_.tolist() == first.classes_.tolist()


def test_a_fitted_estimator_round_trips_with_its_labels(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = np.where(X[:, 0] > 0, "yes", "no")
    clf = fastmlp.MLPClassifier(hidden_layer_sizes=(6,), max_iter=5, learning_rate_init=1e-2, random_state=0)
    with pytest.warns(pytest.importorskip("sklearn.exceptions").ConvergenceWarning):  # five epochs on purpose
        clf.fit(X, y)
    loaded = fastmlp.load(fastmlp.save(clf, tmp_path / "clf.safetensors"))
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert loaded.predict(X).tolist() == clf.predict(X).tolist()
    assert loaded.info["source"] == "MLPClassifier"


def test_an_estimator_with_scikit_learn_coefs_is_saved_from_them(tmp_path, mlp):
    class Fitted:  # the attributes a scikit-learn style estimator exposes once fitted
        classes_ = np.array([3, 5, 9])
        coefs_ = [lin.params["weight"].T.copy() for lin in mlp.linears]
        intercepts_ = [lin.params["bias"].copy() for lin in mlp.linears]
        activation = "relu"
        out_activation_ = "softmax"

    loaded = fastmlp.load(fastmlp.save(Fitted(), tmp_path / "f.safetensors"))
    x = np.random.default_rng(2).normal(size=(4, 12))
    np.testing.assert_array_equal(loaded.predict_proba(x), mlp.predict_proba(x))
    assert loaded.classes_.tolist() == [3, 5, 9]


def test_saving_something_else_or_mismatched_extras_is_refused(tmp_path, mlp):
    with pytest.raises(TypeError, match="obj: expected a fastmlp MLP"):
        fastmlp.save(object(), tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="classes"):
        fastmlp.save(mlp, tmp_path / "y.safetensors", classes=["a", "b"])
    with pytest.raises(ValueError, match="input shape"):
        fastmlp.save(mlp, tmp_path / "z.safetensors", input_shape=(3, 32, 32))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_run_folder_loads_its_model_file(tmp_path, mlp):
    fastmlp.save(mlp, tmp_path / "model.safetensors")
    assert fastmlp.load(tmp_path).model.n_hidden == [7, 5]


# --------------------------------------------------------------------------- hostile files
def _safetensors(header: dict, body: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def _refused(path, match):
    with pytest.raises(ValueError, match=match) as info:
        fastmlp.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("keep", [0, 5, 9, 200, -3])
def test_a_truncated_file_is_refused(tmp_path, saved, keep):
    data = saved.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    _refused(cut, "truncated|header|bytes")


def test_a_header_length_of_two_to_the_62_is_refused_before_anything_is_read(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    _refused(path, "header of 4611686018427387904 bytes")


def test_deeply_nested_json_is_refused(tmp_path):
    path = tmp_path / "deep.safetensors"
    text = ("[" * 100_000 + "]" * 100_000).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    _refused(path, "nests deeper")


def test_deep_json_inside_the_metadata_string_is_refused(tmp_path):
    path = tmp_path / "deepmeta.safetensors"
    path.write_bytes(_safetensors({"__metadata__": {"fastmlp": "[" * 50_000 + "]" * 50_000}}))
    _refused(path, "nests deeper")


def test_offsets_outside_the_file_are_refused(tmp_path):
    path = tmp_path / "offsets.safetensors"
    header = {"linear.0.weight": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}
    path.write_bytes(_safetensors(header, b"\0" * 16))
    _refused(path, "do not fit")


def test_a_size_that_disagrees_with_the_offsets_is_refused(tmp_path):
    path = tmp_path / "shape.safetensors"
    header = {"linear.0.weight": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}
    path.write_bytes(_safetensors(header, b"\0" * 16))
    _refused(path, "do not fit")


def test_a_foreign_dtype_is_refused(tmp_path):
    path = tmp_path / "dtype.safetensors"
    path.write_bytes(_safetensors({"x": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 16))
    _refused(path, "expected dtype F32 or F64")


def test_a_renamed_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.safetensors"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.write_bytes(pickle.dumps(Evil()))
    _refused(path, "not a safetensors model file")
    assert not marker.exists()


@pytest.mark.parametrize("payload", [b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"PK\x03\x04" + b"\0" * 40, b"hello"])
def test_foreign_files_are_refused(tmp_path, payload):
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(payload)
    _refused(path, "safetensors|truncated")


def test_a_safetensors_file_of_another_program_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    path.write_bytes(safetensors_numpy.save({"w": np.zeros(3, np.float32)}, metadata={"framework": "x"}))
    _refused(path, "not a fastmlp model file")


def test_tensors_that_do_not_match_the_architecture_are_refused(tmp_path, saved):
    header = json.loads(saved.read_bytes()[8 : 8 + struct.unpack("<Q", saved.read_bytes()[:8])[0]])
    meta = json.loads(header["__metadata__"]["fastmlp"])
    meta["architecture"]["sizes"] = [12, 8, 5, 3]
    tensors = safetensors_numpy.load(saved.read_bytes())
    path = tmp_path / "mismatch.safetensors"
    path.write_bytes(safetensors_numpy.save(tensors, metadata={"fastmlp": json.dumps(meta)}))
    _refused(path, "do not match the architecture")


def test_another_format_version_is_refused_with_the_versions(tmp_path, saved):
    tensors = safetensors_numpy.load(saved.read_bytes())
    header = json.loads(saved.read_bytes()[8 : 8 + struct.unpack("<Q", saved.read_bytes()[:8])[0]])
    meta = json.loads(header["__metadata__"]["fastmlp"])
    meta["format_version"] = 99
    path = tmp_path / "future.safetensors"
    path.write_bytes(safetensors_numpy.save(tensors, metadata={"fastmlp": json.dumps(meta)}))
    _refused(path, "format version 99")


# --------------------------------------------------------------------------- import cost
def test_importing_fastmlp_and_the_model_file_modules_loads_none_of_their_dependencies():
    code = ("import sys, fastmlp, fastmlp.modelfile, fastmlp.predict, fastmlp.interop, fastmlp.onnx_export; "
            "print(sorted(m for m in ('safetensors', 'PIL', 'onnx', 'onnxruntime', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_a_huge_string_width_for_the_labels_allocates_nothing_large(tmp_path, saved):
    tensors = safetensors_numpy.load(saved.read_bytes())
    header = json.loads(saved.read_bytes()[8 : 8 + struct.unpack("<Q", saved.read_bytes()[:8])[0]])
    meta = json.loads(header["__metadata__"]["fastmlp"])
    meta["classes_dtype"] = "<U50000000"  # 200 MB per label if it were used
    path = tmp_path / "wide.safetensors"
    path.write_bytes(safetensors_numpy.save(tensors, metadata={"fastmlp": json.dumps(meta)}))
    assert fastmlp.load(path).classes_.dtype == np.dtype("<U3")


def test_a_datasets_preprocessing_object_gives_offset_scale_and_name(tmp_path, mlp):
    from fastmlp.data import Preprocessing

    images = np.random.default_rng(3).integers(0, 256, size=(20, 3, 2, 2)).astype(np.uint8)
    prep = Preprocessing.fit(images, "standardize", np.float32)
    loaded = fastmlp.load(fastmlp.save(mlp, tmp_path / "p.safetensors", preprocessing=prep, input_shape=(3, 2, 2)))
    assert loaded.preprocessing == "standardize"
    np.testing.assert_array_equal(loaded.transform(images), prep.apply(images))  # the run's own conversion


def test_predict_takes_the_logits_where_float32_probabilities_tie(tmp_path):
    model = fastmlp.MLP(4, [], 3, dtype=np.float32, seed=0)
    model.linears[0].params["weight"][...] = 0.0
    model.linears[0].params["bias"][...] = [0.0, 1e-8, 0.0]  # exp(-1e-8) rounds to 1 in float32
    loaded = fastmlp.load(fastmlp.save(model, tmp_path / "tie.safetensors", classes=["a", "b", "c"]))
    x = np.zeros((2, 4))
    assert np.ptp(loaded.predict_proba(x)) == 0.0  # the probabilities tie...
    assert loaded.predict(x).tolist() == ["b", "b"]  # ...the logits do not
    np.testing.assert_array_equal(loaded.decision_function(x), np.tile([0.0, 1e-8, 0.0], (2, 1)).astype(np.float32))
