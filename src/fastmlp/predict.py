"""Classify images or arrays with a model file: ``python -m fastmlp.predict MODEL INPUT...``.

MODEL is a ``model.safetensors`` (``fastmlp.save``, or any run folder holding one);
nothing else is read: no training data, no ``FASTMLP_DATA``. Each INPUT is

- a PNG or JPEG image (needs Pillow: ``pip install fastmlp[predict]``) of the size
  the model was trained on (32x32 for CIFAR-10); another size is refused, not resized;
- a ``.npy`` array: one example (e.g. ``(32, 32, 3)`` or ``(3072,)`` uint8) or a batch
  of them (``(N, 32, 32, 3)``, ``(N, 3, 32, 32)``, ``(N, 3072)``), one line per example.

Each line names the input and its ``--top_k`` most likely classes with their
probabilities; for a multilabel model the labels it predicts (probability above
0.5) with theirs; for a regressor its value(s) (``--top_k`` is refused for both).
``--json``: one JSON object per line instead. Exit status: 0 done, 2 bad input (the
model file, an input, a flag), with one ``error:`` line.

Examples
--------
::

    python -m fastmlp.predict runs/20260101-120000 cat.png dog.jpg
    python -m fastmlp.predict model.safetensors batch.npy --top_k 3 --json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from fastmlp.exits import EXIT_BAD_INPUT
from fastmlp.modelfile import Predictor, load

__all__ = ["build_parser", "main", "read_input"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Pillow's mode for an image of this many channels.
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class _Refused(Exception):
    """A usage error, shown as one ``error:`` line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage too: the brief asks for one line
        raise _Refused(message)


def _top_k(value: str) -> int:
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return k


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m fastmlp.predict", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="a model file (model.safetensors) or a run folder holding one")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="PNG/JPEG images or .npy arrays")
    parser.add_argument("--top_k", type=_top_k, default=None,
                        help="classes shown per input (default 1; single-label classifiers only)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def _read_image(path: Path, predictor: Predictor) -> np.ndarray:
    """A PNG/JPEG as one uint8 row (1, D) in the stored channel-first order, its size checked against the model's."""
    shape = predictor.input_shape
    if shape is not None and len(shape) == 2:  # grey images stored without a channel axis
        shape = (1, *shape)
    if shape is None or len(shape) != 3 or shape[0] not in _MODES:
        raise ValueError(f"{path}: this model takes no images (its input is {predictor.n_features_in_} values); "
                         "pass a .npy array")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ValueError("reading PNG/JPEG needs Pillow: pip install 'fastmlp[predict]'") from None
    channels, height, width = shape
    try:
        with Image.open(path) as image:  # reads the header only: the size is checked before decoding
            if image.size != (width, height):
                raise ValueError(f"{path}: expected a {width}x{height} image (the size the model was trained "
                                 f"on), got {image.size[0]}x{image.size[1]}; resize it first")
            pixels = np.asarray(image.convert(_MODES[channels]))
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not a readable PNG or JPEG image") from None
    return pixels.reshape(height, width, channels).transpose(2, 0, 1).reshape(1, -1)  # one row, stored order


def read_input(path: str | Path, predictor: Predictor) -> tuple[np.ndarray, list[str]]:
    """The examples of one INPUT as an array (N, ...) and their labels (the path, or ``path[i]`` in a batch).

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file: missing, unreadable, of the wrong size or shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return _read_image(path, predictor), [str(path)]
    if suffix != ".npy":
        raise ValueError(f"{path}: expected a .png, .jpg, .jpeg or .npy file")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy array of numbers ({exc})") from None
    if array.shape in predictor.accepted_shapes():  # one example
        return array[None], [str(path)]
    try:
        predictor.rows(array)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    return array, [f"{path}[{i}]" for i in range(len(array))]


def _lines(predictor: Predictor, array: np.ndarray, labels: list[str], top_k: int | None, as_json: bool):
    """The output lines of one INPUT's examples, by what the model predicts."""
    target = predictor.target
    if target in ("multilabel", "regression") and top_k is not None:
        raise _Refused(f"--top_k: a {target} model prints every label it predicts or all its values; "
                       "--top_k is for a model that predicts one class")
    if target == "regression":
        return _value_lines(predictor.predict(array).reshape(len(array), -1), labels, as_json)
    if target == "multilabel":
        return _label_set_lines(predictor, array, labels, as_json)
    return _class_lines(predictor, array, labels, top_k or 1, as_json)


def _value_lines(values: np.ndarray, labels: list[str], as_json: bool):
    for label, row in zip(labels, values.tolist()):
        if as_json:
            yield json.dumps({"input": label, "values": row})
        else:
            yield f"{label}: " + ", ".join(f"{v:.6g}" for v in row)


def _label_set_lines(predictor: Predictor, array: np.ndarray, labels: list[str], as_json: bool):
    proba = predictor.predict_proba(array)
    for label, row, chosen in zip(labels, proba, predictor.predict(array)):
        found = [(predictor.classes_[i].item(), float(row[i])) for i in np.flatnonzero(chosen)]
        if as_json:
            yield json.dumps({"input": label, "labels": [{"class": c, "probability": p} for c, p in found]})
        else:
            yield f"{label}: " + (", ".join(f"{c} {p:.4f}" for c, p in found) or "(no label)")


def _class_lines(predictor: Predictor, array: np.ndarray, labels: list[str], top_k: int, as_json: bool):
    proba = predictor.predict_proba(array)
    # ranked by the logits, as Predictor.predict is: probabilities near 1/C can round to ties
    # (a binary model's one logit ranks its two columns as their probabilities do)
    scores = proba if predictor.target == "binary" else predictor.decision_function(array)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    for label, row, best in zip(labels, proba, order):
        top = [(predictor.classes_[i].item(), float(row[i])) for i in best]
        if as_json:
            yield json.dumps({"input": label, "top": [{"class": c, "probability": p} for c, p in top]})
        else:
            yield f"{label}: " + ", ".join(f"{c} {p:.4f}" for c, p in top)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), print one line per input; return the exit status."""
    try:
        args = build_parser().parse_args(argv)
        predictor = load(args.model)
        inputs = [read_input(path, predictor) for path in args.inputs]  # every input checked before any output
        lines = [list(_lines(predictor, array, labels, args.top_k, args.json)) for array, labels in inputs]
        for line in (line for block in lines for line in block):
            print(line)
    except (_Refused, FileNotFoundError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
