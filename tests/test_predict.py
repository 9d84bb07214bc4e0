"""python -m fastmlp.predict: images and arrays in, one line per input out; bad input is one error line, exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastmlp
from fastmlp import exits, predict

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("safetensors")

CLASSES = ["ant", "bee", "cow", "doe", "elk"]


@pytest.fixture
def model_file(tmp_path):
    """A model over 4x4 RGB images (stored CHW), mean-image preprocessing, five named classes."""
    model = fastmlp.MLP(48, [10], 5, dtype=np.float32, seed=0, init="kaiming")
    offset = np.random.default_rng(1).uniform(0, 255, 48)
    return fastmlp.save(model, tmp_path / "model.safetensors", offset=offset, preprocessing="mean_image",
                        classes=CLASSES, input_shape=(3, 4, 4))


def _images(n=4, size=(4, 4), seed=2):
    """n uint8 images (n, H, W, 3) with a random pattern each."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, size[1], size[0], 3)).astype(np.uint8)


def _write_pngs(folder, images):
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def _run(argv, capsys):
    status = predict.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.splitlines()


def test_pngs_get_the_classes_the_loaded_model_predicts(tmp_path, model_file, capsys):
    images = _images()
    paths = _write_pngs(tmp_path, images)
    status, lines, err = _run([model_file, *paths], capsys)
    assert status == 0 and err == []
    expected = fastmlp.load(model_file).predict(images)
    proba = fastmlp.load(model_file).predict_proba(images).max(axis=1)
    assert [line.rsplit(" ", 1)[0] for line in lines] == [f"{p}: {c}" for p, c in zip(paths, expected)]
    assert [float(line.rsplit(" ", 1)[1]) for line in lines] == pytest.approx(proba, abs=1e-4)


def test_top_k_and_json_lines(tmp_path, model_file, capsys):
    images = _images(2)
    paths = _write_pngs(tmp_path, images)
    status, lines, _ = _run([model_file, *paths, "--top_k", "3", "--json"], capsys)
    assert status == 0 and len(lines) == 2
    loaded = fastmlp.load(model_file)
    for line, path, row, logits in zip(lines, paths, loaded.predict_proba(images), loaded.decision_function(images)):
        record = json.loads(line)
        best = np.argsort(-logits)[:3]  # ranked by the logits (far-off classes' probabilities underflow to ties)
        assert record["input"] == str(path)
        assert [t["class"] for t in record["top"]] == [CLASSES[i] for i in best]
        assert [t["probability"] for t in record["top"]] == pytest.approx(row[best].tolist(), rel=1e-4, abs=1e-7)


def test_a_jpeg_is_read_as_its_decoded_pixels(tmp_path, model_file, capsys):
    path = tmp_path / "photo.jpg"
    Image.fromarray(_images(1)[0]).save(path, quality=95)
    decoded = np.asarray(Image.open(path).convert("RGB"))[None]
    status, lines, _ = _run([model_file, path], capsys)
    assert status == 0 and lines[0].split(": ")[1].split()[0] == fastmlp.load(model_file).predict(decoded)[0]


def test_npy_arrays_one_example_or_a_batch_in_either_layout(tmp_path, model_file, capsys):
    images = _images(3)
    np.save(tmp_path / "one.npy", images[0])
    np.save(tmp_path / "chw.npy", images.transpose(0, 3, 1, 2))
    np.save(tmp_path / "rows.npy", images.transpose(0, 3, 1, 2).reshape(3, -1))
    status, lines, _ = _run([model_file, tmp_path / "one.npy", tmp_path / "chw.npy", tmp_path / "rows.npy"], capsys)
    assert status == 0
    expected = fastmlp.load(model_file).predict(images)
    assert [line.split(": ")[0] for line in lines] == [
        str(tmp_path / "one.npy"), *(f"{tmp_path / n}.npy[{i}]" for n in ("chw", "rows") for i in range(3))]
    assert [line.split(": ")[1].split()[0] for line in lines] == [expected[0], *expected, *expected]


@pytest.mark.parametrize("case,match", [
    ("wrong_size", r"expected a 4x4 image \(the size the model was trained on\), got 8x6"),
    ("missing", "no such file"),
    ("not_an_image", "not a readable PNG or JPEG"),
    ("suffix", "expected a .png, .jpg, .jpeg or .npy file"),
    ("bad_npy_shape", r"x: expected a non-empty array of shape .*got shape \(2, 7\)"),
    ("pickled_npy", "not a readable .npy array"),
])
def test_bad_inputs_exit_2_with_one_error_line_and_no_output(tmp_path, model_file, capsys, case, match):
    good = _write_pngs(tmp_path, _images(1))[0]
    bad = tmp_path / {"suffix": "x.txt", "bad_npy_shape": "x.npy", "pickled_npy": "p.npy"}.get(case, "x.png")
    if case == "wrong_size":
        Image.fromarray(_images(1, size=(8, 6))[0]).save(bad)
    elif case in ("not_an_image", "suffix"):
        bad.write_bytes(b"not an image at all")
    elif case == "bad_npy_shape":
        np.save(bad, np.zeros((2, 7)))
    elif case == "pickled_npy":
        np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    status, lines, err = _run([model_file, good, bad], capsys)
    assert status == 2 and lines == []  # every input is checked before anything is printed
    assert len(err) == 1 and err[0].startswith("error: ") and str(bad) in err[0]
    assert __import__("re").search(match, err[0]), err[0]


@pytest.mark.parametrize("argv,match", [
    (["--top_k", "0"], "--top_k.*expected a positive integer"),
    ([], "required"),
])
def test_bad_flags_exit_2_with_one_error_line(model_file, capsys, argv, match):
    status, lines, err = _run([model_file, *argv] if argv else [], capsys)
    assert status == 2 and lines == [] and len(err) == 1 and err[0].startswith("error: ")
    assert __import__("re").search(match, err[0]), err[0]


def test_a_bad_model_file_exits_2_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04\x95" + b"\0" * 40)  # what a pickle starts with
    status, _, err = _run([bad, bad], capsys)
    assert status == 2 and len(err) == 1 and str(bad) in err[0]


def test_a_model_without_an_image_shape_refuses_images(tmp_path, capsys):
    path = fastmlp.save(fastmlp.MLP(48, [], 2, seed=0), tmp_path / "rows.safetensors")
    png = _write_pngs(tmp_path, _images(1))[0]
    status, _, err = _run([path, png], capsys)
    assert status == 2 and "this model takes no images" in err[0]


def test_the_command_runs_in_a_fresh_process_with_no_data(tmp_path, model_file):
    paths = _write_pngs(tmp_path, _images(2))
    env = {k: v for k, v in os.environ.items() if k != "FASTMLP_DATA"}
    done = subprocess.run([sys.executable, "-m", "fastmlp.predict", str(model_file), *map(str, paths)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert [line.split(": ")[1].split()[0] for line in done.stdout.splitlines()] == \
        fastmlp.load(model_file).predict(_images(2)).tolist()


@pytest.mark.parametrize("input_shape", [(1, 4, 4), (4, 4)])
def test_grey_models_read_images_as_one_channel(tmp_path, capsys, input_shape):
    model = fastmlp.MLP(16, [], 3, dtype=np.float32, seed=0, init="kaiming")
    path = fastmlp.save(model, tmp_path / "grey.safetensors", offset=np.full(16, 100.0), classes=["a", "b", "c"],
                        preprocessing="mean_image", input_shape=input_shape)
    grey = np.random.default_rng(5).integers(0, 256, size=(4, 4)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    status, lines, err = _run([path, tmp_path / "grey.png"], capsys)
    assert status == 0, err
    assert lines[0].split(": ")[1].split()[0] == fastmlp.load(path).predict(grey.reshape(1, 16))[0]


# --------------------------------------------------------------------------- regressors and multilabel models
def _head_model(tmp_path, output, n_outputs, classes=None):
    model = fastmlp.MLP(6, [5], n_outputs, dtype=np.float32, seed=3, init="kaiming", activation="tanh",
                        output=output)
    x = np.random.default_rng(4).normal(size=(3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return fastmlp.save(model, tmp_path / f"{output}.safetensors", classes=classes), tmp_path / "x.npy", x


@pytest.mark.parametrize("n_outputs", [1, 2])
def test_a_regressor_prints_its_values(tmp_path, capsys, n_outputs):
    path, npy, x = _head_model(tmp_path, "identity", n_outputs)
    expected = fastmlp.load(path).predict(x).reshape(3, -1)
    status, lines, err = _run([path, npy], capsys)
    assert status == 0 and err == []
    got = [[float(v) for v in line.split(": ", 1)[1].split(", ")] for line in lines]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert [line.split(":")[0] for line in lines] == [f"{npy}[{i}]" for i in range(3)]
    status, lines, _ = _run([path, npy, "--json"], capsys)
    np.testing.assert_allclose([json.loads(line)["values"] for line in lines], expected, rtol=1e-6)


def test_a_multilabel_model_prints_the_labels_it_predicts(tmp_path, capsys):
    path, npy, x = _head_model(tmp_path, "logistic", 4, classes=["red", "green", "blue", "grey"])
    loaded = fastmlp.load(path)
    chosen, proba = loaded.predict(x), loaded.predict_proba(x)
    status, lines, err = _run([path, npy, "--json"], capsys)
    assert status == 0 and err == []
    for line, row, p in zip(lines, chosen, proba):
        found = json.loads(line)["labels"]
        assert [f["class"] for f in found] == [c for c, on in zip(loaded.classes_, row) if on]
        assert [f["probability"] for f in found] == pytest.approx(p[row == 1].tolist(), abs=1e-6)
    status, lines, _ = _run([path, npy], capsys)
    assert lines[0] == f"{npy}[0]: " + (", ".join(f"{c} {q:.4f}" for c, q, on in zip(loaded.classes_, proba[0],
                                                                                      chosen[0]) if on)
                                        or "(no label)")


def test_a_binary_model_ranks_its_two_classes(tmp_path, capsys):
    path, npy, x = _head_model(tmp_path, "logistic", 1, classes=["no", "yes"])
    loaded = fastmlp.load(path)
    status, lines, _ = _run([path, npy, "--top_k", "2", "--json"], capsys)
    assert status == 0
    for line, label, p in zip(lines, loaded.predict(x), loaded.predict_proba(x)):
        top = json.loads(line)["top"]
        assert top[0]["class"] == label and [t["probability"] for t in top] == pytest.approx(sorted(p)[::-1])


@pytest.mark.parametrize("output, n_outputs", [("identity", 1), ("logistic", 3)])
def test_top_k_is_refused_for_a_regressor_or_multilabel_model(tmp_path, capsys, output, n_outputs):
    path, npy, _ = _head_model(tmp_path, output, n_outputs)
    status, lines, err = _run([path, npy, "--top_k", "2"], capsys)
    assert status == exits.EXIT_BAD_INPUT and lines == []
    assert len(err) == 1 and err[0].startswith("error: --top_k:")
