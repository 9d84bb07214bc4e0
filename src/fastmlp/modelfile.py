"""The model file: a trained network with everything needed to predict raw inputs, in safetensors.

:func:`save` writes an :class:`~fastmlp.MLP`, an :class:`~fastmlp.MLPClassifier`, a
loaded :class:`Predictor` or a training run's network (``fastmlp.train`` writes
``model.safetensors`` in every run folder); :func:`load` reads one back as a
:class:`Predictor`, which takes the inputs the training data held (for CIFAR-10:
uint8 rows of 3,072 values in CIFAR's CHW order, or ``(N, 32, 32, 3)`` images) and
applies the run's preprocessing itself.

The file is safetensors (tensors and a JSON header; reading it runs no code):

- tensors ``linear.{l}.weight`` (out, in) and ``linear.{l}.bias`` (out,) for each
  linear layer ``l``, input to output, in the model's dtype; ``preprocessing.offset``
  (D,) and ``preprocessing.scale`` (D,) when the inputs are preprocessed;
- the header's ``__metadata__["fastmlp"]``: a JSON object with ``format``,
  ``format_version``, ``fastmlp_version``, ``architecture`` (``sizes`` [D, H..., C],
  ``activation``, ``out_activation``, ``dtype``), ``input`` (``shape`` of one example,
  e.g. [3, 32, 32], and ``preprocessing``, its kind or null), ``classes`` and
  ``classes_dtype``, and ``source`` (what was saved).

Every file is checked before safetensors parses it, so a truncated, foreign or
hostile file raises ``ValueError`` naming it: the 8-byte header length against the
file's size and :data:`MAX_HEADER_BYTES`, the JSON's nesting depth, and every
tensor's dtype, shape and byte range against the file.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_FILE_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "MODEL_FILE_NAME",
    "Predictor",
    "load",
    "model_record",
    "predictor_of",
    "save",
    "save_trained",
]

FORMAT_NAME = "fastmlp-model"
FORMAT_VERSION = 1
#: The name of the model file in a run folder.
MODEL_FILE_NAME = "model.safetensors"
#: Largest JSON header read (safetensors' own limit is 100 MB; ours hold a few kB).
MAX_HEADER_BYTES = 1 << 24
#: Largest model file read: four times a 1-billion-parameter float32 network.
MAX_FILE_BYTES = 1 << 34
#: Deepest nesting of brackets accepted in the header's JSON (ours is 4 deep).
MAX_JSON_DEPTH = 16
#: The tensor dtypes a model file may hold, by their safetensors names.
TENSOR_DTYPES = {"F32": np.dtype(np.float32), "F64": np.dtype(np.float64)}
#: The kinds of class labels a file may hold (bool, ints, floats, str).
CLASS_KINDS = "biufU"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


# --------------------------------------------------------------------------- the loaded model
class Predictor:
    """A network with its input preprocessing and class labels: predicts raw inputs.

    Parameters
    ----------
    model : fastmlp.MLP
        The network, D inputs and C classes.
    classes : ndarray (C,)
        The label of each output, in order.
    offset, scale : ndarray (D,) of the model's dtype, or None
        The preprocessing x = (raw - offset) / scale (no division when ``scale`` is
        None; no preprocessing at all when ``offset`` is None).
    preprocessing : str or None
        The name of the preprocessing (``mean_image``, ``standardize``), for display.
    input_shape : tuple of int or None
        The shape of one example as the training data stored it, e.g. (3, 32, 32).
    info : dict, optional
        The file's metadata (versions, source), as read.

    Attributes
    ----------
    classes_ : ndarray (C,)
    n_features_in_ : int
        D.
    """

    def __init__(self, model, classes, *, offset=None, scale=None, preprocessing=None, input_shape=None,
                 info=None):
        self.model = model
        self.classes_ = classes
        self.offset, self.scale = offset, scale
        self.preprocessing = preprocessing
        self.input_shape = input_shape
        self.info = info if info is not None else {}

    @property
    def n_features_in_(self) -> int:
        return self.model.n_inputs

    @property
    def dtype(self) -> np.dtype:
        return self.model.dtype

    def __repr__(self) -> str:
        return (f"Predictor({self.model!r}, classes={len(self.classes_)}, "
                f"preprocessing={self.preprocessing!r}, input_shape={self.input_shape})")

    def rows(self, x) -> np.ndarray:
        """Raw inputs as rows (N, D): ``x`` (N, D), (N, *input_shape), or HWC images for a CHW input_shape.

        Raises
        ------
        TypeError
            For non-numeric ``x``.
        ValueError
            For any other shape, naming the shapes accepted.
        """
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"x: expected a real numeric array (e.g. uint8 pixels), got dtype {arr.dtype}")
        accepted = self.accepted_shapes()
        per_example = arr.shape[1:]
        if arr.ndim < 2 or per_example not in accepted or arr.shape[0] == 0:
            shown = " or ".join(f"(N, {', '.join(map(str, s))})" for s in accepted)
            raise ValueError(f"x: expected a non-empty array of shape {shown}, got shape {arr.shape}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError("x: expected finite values, got NaN or infinity")
        if accepted.index(per_example) == 2:  # channels last: into the stored channels-first order
            arr = arr.transpose(0, 3, 1, 2)
        return arr.reshape(arr.shape[0], -1)

    def accepted_shapes(self) -> list[tuple]:
        """The shapes of one example :meth:`rows` takes: (D,), ``input_shape``, and (H, W, C) for (C, H, W)."""
        shapes = [(self.n_features_in_,)]
        if self.input_shape is not None and len(self.input_shape) > 1:
            shapes.append(tuple(self.input_shape))
            if len(self.input_shape) == 3:
                c, h, w = self.input_shape
                shapes.append((h, w, c))
        return shapes

    def transform(self, x) -> np.ndarray:
        """The model inputs (N, D) of the model's dtype for raw inputs ``x`` (see :meth:`rows`)."""
        rows = self.rows(x)
        # NumPy's cast-subtract-divide is the arithmetic of the run's own conversion (fastmlp.data).
        out = rows.astype(self.dtype)
        if self.offset is not None:
            out -= self.offset
            if self.scale is not None:
                out /= self.scale
        return out

    def predict_proba(self, x, batch_size: int = 1000) -> np.ndarray:
        """Class probabilities (N, C) of the model's dtype for raw inputs ``x``, columns in ``classes_`` order."""
        return self.model.predict_proba(self.transform(x), batch_size)

    def decision_function(self, x, batch_size: int = 1000) -> np.ndarray:
        """The logits (N, C) of raw inputs ``x``: what the softmax turns into :meth:`predict_proba`."""
        rows = self.transform(x)
        out = np.empty((rows.shape[0], len(self.classes_)), dtype=self.dtype)
        for start in range(0, rows.shape[0], batch_size):
            h = rows[start : start + batch_size]
            for layer in self.model.layers[:-1]:  # every layer but the softmax
                h = layer.forward(h)
            out[start : start + h.shape[0]] = h
        return out

    def predict(self, x, batch_size: int = 1000) -> np.ndarray:
        """The predicted label (N,) of each raw input, values from ``classes_``.

        Taken from the logits, as the training run counts its accuracy: probabilities near
        1/C can round to equal values where the logits still differ.
        """
        return self.classes_[self.decision_function(x, batch_size).argmax(axis=1)]


# --------------------------------------------------------------------------- saving
def _mlp_layers(model) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight (out, in), bias (out,)) of each linear layer of a fastmlp MLP, input to output."""
    return [(lin.params["weight"], lin.params["bias"]) for lin in model.linears]


def _estimator_layers(estimator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight (out, in), bias (out,)) of a fitted estimator: scikit-learn's ``coefs_`` (in, out), or its network."""
    coefs = getattr(estimator, "coefs_", None)
    if coefs is not None:
        return [(np.asarray(w).T, np.asarray(b)) for w, b in zip(coefs, estimator.intercepts_)]
    return _mlp_layers(estimator.model_)


def model_record(obj, *, offset=None, scale=None, preprocessing: str | None = None, classes=None,
                 input_shape=None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and the metadata :func:`save` writes for ``obj``, as a dict and a JSON-able dict.

    Parameters are those of :func:`save`.
    """
    from fastmlp.mlp import MLP

    if preprocessing is not None and not isinstance(preprocessing, str):  # a fastmlp.data.Preprocessing
        offset, scale, preprocessing = preprocessing.offset, preprocessing.scale, preprocessing.kind
    if isinstance(obj, Predictor):
        return model_record(obj.model, offset=obj.offset, scale=obj.scale, preprocessing=obj.preprocessing,
                            classes=obj.classes_, input_shape=obj.input_shape)
    if isinstance(obj, MLP):
        layers, source, activation = _mlp_layers(obj), "MLP", getattr(obj, "activation", "relu")
        out_activation = "softmax"
    elif hasattr(obj, "classes_") and (hasattr(obj, "coefs_") or hasattr(obj, "model_")):
        layers, source, activation = _estimator_layers(obj), type(obj).__name__, getattr(obj, "activation", "relu")
        out_activation = getattr(obj, "out_activation_", "softmax")
        classes = obj.classes_ if classes is None else classes
    else:
        raise TypeError(f"obj: expected a fastmlp MLP, a fitted MLPClassifier or a Predictor, got "
                        f"{type(obj).__name__}")
    dtype = np.dtype(layers[0][0].dtype)
    tensors = {}
    for l, (weight, bias) in enumerate(layers):
        tensors[f"linear.{l}.weight"] = np.ascontiguousarray(weight, dtype=dtype)
        tensors[f"linear.{l}.bias"] = np.ascontiguousarray(bias, dtype=dtype)
    sizes = [int(layers[0][0].shape[1])] + [int(w.shape[0]) for w, _ in layers]
    for name, value in (("preprocessing.offset", offset), ("preprocessing.scale", scale)):
        if value is not None:
            tensors[name] = np.ascontiguousarray(value, dtype=dtype).reshape(-1)
    classes = np.arange(sizes[-1]) if classes is None else np.asarray(classes)
    if classes.dtype.kind == "O":  # e.g. pandas strings
        classes = classes.astype(str)
    meta = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "fastmlp_version": _version(),
        "source": source,
        "architecture": {"sizes": sizes, "activation": activation, "out_activation": out_activation,
                         "dtype": dtype.name},
        "input": {"shape": None if input_shape is None else [int(d) for d in input_shape],
                  "preprocessing": preprocessing if offset is not None else None},
        "classes": classes.tolist(), "classes_dtype": classes.dtype.str,
    }
    return tensors, meta


def _version() -> str:
    from fastmlp.version import __version__

    return __version__


def save(obj, path: str | os.PathLike, *, offset=None, scale=None, preprocessing: str | None = None,
         classes=None, input_shape=None) -> Path:
    """Write ``obj`` to the model file ``path`` atomically (a reader sees no half-written file).

    Parameters
    ----------
    obj : fastmlp.MLP, fitted fastmlp.MLPClassifier, or Predictor
        The estimator's ``classes_`` are its labels; a Predictor keeps everything it holds.
    path : path
        The file to write (by convention ``*.safetensors``); its folder is created.
    offset, scale : array (D,), optional
        The input preprocessing x = (raw - offset) / scale (e.g. a
        ``fastmlp.data.Preprocessing``'s ``offset`` and ``scale``).
    preprocessing : str or fastmlp.data.Preprocessing, optional
        Its name (``"mean_image"``...); or a training DataSet's ``preprocessing``, which
        gives ``offset``, ``scale`` and the name at once.
    classes : array-like (C,), optional
        The label of each output (default 0..C-1, or the estimator's ``classes_``).
    input_shape : tuple of int, optional
        One example's shape as stored, e.g. (3, 32, 32): :func:`load`'s Predictor then
        takes images of that shape and, for three axes (C, H, W), channels-last (H, W, C) ones.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TypeError
        For an ``obj`` of another kind.
    ValueError
        For ``classes`` or ``offset``/``scale`` that do not fit the network.
    """
    from safetensors.numpy import save as safetensors_bytes

    from fastmlp.atomic import atomic_path, json_text

    tensors, meta = model_record(obj, offset=offset, scale=scale, preprocessing=preprocessing, classes=classes,
                                 input_shape=input_shape)
    sizes = meta["architecture"]["sizes"]
    _check_fits(meta, {name: value.shape for name, value in tensors.items()}, sizes, "obj")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(safetensors_bytes(tensors, metadata={"fastmlp": json_text(meta)}))
    return path


def save_trained(model, dataset, path: str | os.PathLike, *, classes=None) -> Path:
    """:func:`save` ``model`` with the preprocessing and example shape of the DataSet it was trained on.

    Parameters
    ----------
    model : fastmlp.MLP
    dataset : fastmlp.data.DataSet
        The training split: its ``preprocessing`` (offset, scale, kind) and the shape of its
        stored examples (``raw_images.shape[1:]``) go into the file.
    path : path
    classes : sequence (C,), optional
        Class names; default the DataSet's ``class_names`` when it has them, else 0..C-1.
    """
    if classes is None:
        classes = getattr(dataset, "class_names", None)
    return save(model, path, preprocessing=dataset.preprocessing, classes=classes,
                input_shape=dataset.raw_images.shape[1:])


# --------------------------------------------------------------------------- checks of a file
def _check_json_depth(text: str, what: str) -> None:
    """ValueError when ``text`` nests brackets deeper than :data:`MAX_JSON_DEPTH` (before ``json.loads`` recurses)."""
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub('""', text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"{what}: its JSON nests deeper than {MAX_JSON_DEPTH} levels")


def _parse_json(text: str, what: str) -> Any:
    _check_json_depth(text, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{what}: its header is not valid JSON ({exc})") from None


def _check_tensor_table(header: Any, body_bytes: int, what: str) -> dict[str, tuple]:
    """``{name: shape}`` of a safetensors header, each entry's dtype, shape and byte range checked."""
    if not isinstance(header, dict):
        raise ValueError(f"{what}: its header is not a JSON object")
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in TENSOR_DTYPES:
            raise ValueError(f"{what}: tensor {name!r:.80}: expected dtype F32 or F64, got {entry!r:.200}")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if (not isinstance(shape, list) or len(shape) > 2 or not all(_is_count(d) for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets)):
            raise ValueError(f"{what}: tensor {name!r:.80}: a shape of at most 2 sizes and two byte offsets "
                             f"expected, got {entry!r:.200}")
        begin, end = offsets
        size = int(np.prod(shape, dtype=object)) * TENSOR_DTYPES[entry["dtype"]].itemsize
        if not begin <= end <= body_bytes or end - begin != size:
            raise ValueError(f"{what}: tensor {name!r:.80}: bytes {begin}..{end} for shape {shape} do not fit "
                             f"the {body_bytes} bytes of data the file holds")
        shapes[name] = tuple(shape)
    return shapes


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_header(data: bytes, what: str) -> tuple[dict, int]:
    """The parsed JSON header of safetensors bytes ``data`` and the length of its prefix (8 + header)."""
    if len(data) < 8:
        raise ValueError(f"{what}: truncated: {len(data)} bytes, not even a safetensors header length")
    length = int.from_bytes(data[:8], "little")
    if length > MAX_HEADER_BYTES or 8 + length > len(data):
        raise ValueError(f"{what}: not a safetensors model file (or truncated): its first 8 bytes give a header "
                         f"of {length} bytes, but the file has {len(data)} bytes and headers are at most "
                         f"{MAX_HEADER_BYTES}")
    try:
        text = data[8 : 8 + length].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what}: not a safetensors model file: its header is not UTF-8 text") from None
    return _parse_json(text, what), 8 + length


def _read_meta(header: dict, what: str) -> dict:
    """The fastmlp metadata of a safetensors header, its format checked."""
    meta_text = header.get("__metadata__", {}).get("fastmlp") if isinstance(header.get("__metadata__"), dict) else None
    if not isinstance(meta_text, str):
        raise ValueError(f"{what}: a safetensors file but not a fastmlp model file (no fastmlp metadata)")
    meta = _parse_json(meta_text, what)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{what}: not a fastmlp model file (format {meta.get('format') if isinstance(meta, dict) else None!r:.80})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{what}: model file format version {meta.get('format_version')!r:.40}; this fastmlp "
                         f"({_version()}) reads version {FORMAT_VERSION}")
    return meta


def _check_fits(meta: dict, shapes: dict[str, tuple], sizes: Any, what: str) -> None:
    """ValueError unless the tensors' shapes are those of the architecture ``sizes`` and the input."""
    if not isinstance(sizes, list) or len(sizes) < 2 or not all(_is_count(s) and s > 0 for s in sizes):
        raise ValueError(f"{what}: architecture sizes: expected a list of positive ints, got {sizes!r:.200}")
    expected = {}
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        expected[f"linear.{l}.weight"], expected[f"linear.{l}.bias"] = (n_out, n_in), (n_out,)
    for name in ("preprocessing.offset", "preprocessing.scale"):
        if name in shapes:
            expected[name] = (sizes[0],)
    if "preprocessing.scale" in shapes and "preprocessing.offset" not in shapes:
        raise ValueError(f"{what}: a preprocessing scale without its offset")
    if shapes != expected:
        wrong = sorted(set(shapes.items()) ^ set(expected.items()))[:4]
        raise ValueError(f"{what}: tensors do not match the architecture {sizes} (differing: {wrong})")
    classes = meta.get("classes")
    if not isinstance(classes, list) or len(classes) != sizes[-1]:
        raise ValueError(f"{what}: classes: expected a list of {sizes[-1]} labels, got {classes!r:.200}")
    shape = meta.get("input", {}).get("shape") if isinstance(meta.get("input"), dict) else None
    if shape is not None and (not isinstance(shape, list) or not 1 <= len(shape) <= 4
                              or not all(_is_count(d) for d in shape)
                              or int(np.prod(shape, dtype=object)) != sizes[0]):
        raise ValueError(f"{what}: input shape {shape!r:.80} does not hold the {sizes[0]} inputs")


# --------------------------------------------------------------------------- loading
def _build(meta: dict, tensors: dict[str, np.ndarray], what: str) -> Predictor:
    from fastmlp.mlp import MLP

    arch = meta["architecture"] if isinstance(meta.get("architecture"), dict) else {}
    sizes = arch.get("sizes")
    _check_fits(meta, {name: t.shape for name, t in tensors.items()}, sizes, what)
    activation, out_activation = arch.get("activation", "relu"), arch.get("out_activation", "softmax")
    if out_activation != "softmax":
        raise ValueError(f"{what}: output activation {out_activation!r:.40}: this fastmlp predicts with softmax only")
    options = {} if activation == "relu" else {"activation": activation}
    try:
        dtype = np.dtype(arch.get("dtype"))
        model = MLP(sizes[0], sizes[1:-1], sizes[-1], dtype=dtype, **options)
        kind = np.dtype(meta.get("classes_dtype"))
        if kind.kind not in CLASS_KINDS:
            raise ValueError(f"class labels of dtype {kind} are not read")
        # A string width comes from the labels themselves, never from the header's dtype (it could be huge).
        classes = np.asarray(meta["classes"], dtype=str if kind.kind == "U" else kind)
        if classes.ndim != 1:
            raise ValueError(f"classes: expected a list of labels, got shape {classes.shape}")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: cannot rebuild the model it describes: {exc}") from None
    for l, lin in enumerate(model.linears):
        lin.params["weight"][...] = tensors[f"linear.{l}.weight"]
        lin.params["bias"][...] = tensors[f"linear.{l}.bias"]
    offset, scale = (tensors.get(f"preprocessing.{k}") for k in ("offset", "scale"))
    spec = meta.get("input") or {}
    info = {key: meta.get(key) for key in ("fastmlp_version", "format_version", "source")}
    return Predictor(model, classes, offset=None if offset is None else offset.astype(dtype),
                     scale=None if scale is None else scale.astype(dtype), preprocessing=spec.get("preprocessing"),
                     input_shape=None if spec.get("shape") is None else tuple(spec["shape"]), info=info)


def predictor_of(obj) -> Predictor:
    """``obj`` as a :class:`Predictor`: itself, the model file it names (a path), or what :func:`save` would write of it."""
    if isinstance(obj, Predictor):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load(obj)
    tensors, meta = model_record(obj)
    return _build(meta, tensors, f"obj ({type(obj).__name__})")


def model_path(path: str | os.PathLike) -> Path:
    """``path``, or the model file in it when ``path`` is a folder (a run folder)."""
    path = Path(path)
    return path / MODEL_FILE_NAME if path.is_dir() else path


def load(path: str | os.PathLike) -> Predictor:
    """Read a model file written by :func:`save` (or a run folder's ``model.safetensors``).

    Returns
    -------
    Predictor
        ``predict``/``predict_proba`` of raw inputs, ``classes_``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Naming the file, for a truncated, foreign, oversized or malformed one (checked
        before safetensors reads it, so that nothing large is allocated from its header).
    """
    from safetensors.numpy import load as safetensors_load

    path = model_path(path)
    what = f"model file {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{what}: {size} bytes, more than the {MAX_FILE_BYTES} a model file may have")
    data = path.read_bytes()
    header, prefix = _read_header(data, what)
    _check_tensor_table(header, len(data) - prefix, what)
    meta = _read_meta(header, what)
    try:
        tensors = safetensors_load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError for what it refuses
        raise ValueError(f"{what}: safetensors cannot read it: {exc}") from None
    return _build(meta, tensors, what)
