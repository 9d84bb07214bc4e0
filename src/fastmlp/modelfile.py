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
  e.g. [3, 32, 32], ``preprocessing``, its kind or null, and ``feature_names``, the
  estimator's ``feature_names_in_`` or null), ``classes`` and ``classes_dtype``, and
  ``source`` (what was saved).

The output head says what the model predicts: ``softmax``, one class of C
(``classes`` has C labels); ``logistic`` with one output, one of two classes (two
labels, scikit-learn's binary classifier); ``logistic`` with C outputs, a set of
the C labels (multilabel); ``identity``, C values (a regressor: ``classes`` null);
``exp``, their exponentials (a regressor fitted with scikit-learn's Poisson loss).

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

from fastmlp.predictor import TARGETS, Predictor

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_FILE_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "ACTIVATIONS",
    "MODEL_FILE_NAME",
    "OUTPUTS",
    "TARGETS",
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
#: The hidden activations and the output heads a model file may hold.
ACTIVATIONS = ("relu", "tanh", "logistic", "identity")
OUTPUTS = ("softmax", "logistic", "identity", "exp")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


# --------------------------------------------------------------------------- saving
def _mlp_network(model) -> dict[str, Any]:
    """The layers (weight (out, in), bias (out,)) and settings of a fastmlp MLP."""
    return {"layers": [(lin.params["weight"], lin.params["bias"]) for lin in model.linears], "source": "MLP",
            "activation": getattr(model, "activation", "relu"), "out_activation": getattr(model, "output", "softmax")}


def _estimator_network(estimator) -> dict[str, Any]:
    """The layers and settings of a fitted scikit-learn style MLP, read from its public fitted attributes.

    ``coefs_`` (in, out), ``intercepts_``, ``activation``, ``out_activation_``, and when it has them
    ``classes_`` and ``feature_names_in_`` (scikit-learn's own MLPs qualify too).
    """
    return {"layers": [(np.asarray(w).T, np.asarray(b)) for w, b in zip(estimator.coefs_, estimator.intercepts_)],
            "source": type(estimator).__name__, "activation": getattr(estimator, "activation", "relu"),
            "out_activation": getattr(estimator, "out_activation_", "softmax"),
            "classes": getattr(estimator, "classes_", None),
            "feature_names": getattr(estimator, "feature_names_in_", None)}


def _refuse_unfitted(estimator) -> None:
    """scikit-learn's NotFittedError (a ValueError and AttributeError) naming ``estimator``'s class."""
    try:
        from sklearn.exceptions import NotFittedError
    except ImportError:  # an estimator without scikit-learn installed
        NotFittedError = ValueError
    raise NotFittedError(f"obj: this {type(estimator).__name__} is not fitted yet: call fit before saving it")


def _network_of(obj) -> dict[str, Any]:
    from fastmlp.mlp import MLP

    if isinstance(obj, MLP):
        return _mlp_network(obj)
    # An unfitted scikit-learn estimator raises NotFittedError, an AttributeError: hasattr is False.
    if hasattr(obj, "coefs_"):
        return _estimator_network(obj)
    if callable(getattr(obj, "fit", None)):
        _refuse_unfitted(obj)
    raise TypeError(f"obj: expected a fastmlp MLP, a fitted MLPClassifier or MLPRegressor, or a Predictor, got "
                    f"{type(obj).__name__}")


def _labels(classes, out_activation: str, n_outputs: int) -> np.ndarray | None:
    """The labels a file stores: ``classes``, or by default 0..C-1 (0, 1 for one logistic output; none for identity)."""
    if classes is None and out_activation not in ("identity", "exp"):
        classes = np.arange(2 if out_activation == "logistic" and n_outputs == 1 else n_outputs)
    if classes is None:
        return None
    classes = np.asarray(classes)
    return classes.astype(str) if classes.dtype.kind == "O" else classes  # e.g. pandas strings


def model_record(obj, *, offset=None, scale=None, preprocessing: str | None = None, classes=None,
                 input_shape=None, feature_names=None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and the metadata :func:`save` writes for ``obj``, as a dict and a JSON-able dict.

    Parameters are those of :func:`save`; ``feature_names`` (D,) the estimator's
    ``feature_names_in_`` (default: ``obj``'s own).
    """
    if preprocessing is not None and not isinstance(preprocessing, str):  # a fastmlp.data.Preprocessing
        offset, scale, preprocessing = preprocessing.offset, preprocessing.scale, preprocessing.kind
    if isinstance(obj, Predictor):
        tensors, meta = model_record(obj.model, offset=obj.offset, scale=obj.scale, preprocessing=obj.preprocessing,
                                     classes=obj.classes_, input_shape=obj.input_shape,
                                     feature_names=obj.feature_names_in_)
        meta["architecture"]["out_activation"] = obj.out_activation_  # "exp" is not the network's own head
        return tensors, meta
    network = _network_of(obj)
    layers = network["layers"]
    dtype = np.dtype(layers[0][0].dtype)
    tensors = {}
    for l, (weight, bias) in enumerate(layers):
        tensors[f"linear.{l}.weight"] = np.ascontiguousarray(weight, dtype=dtype)
        tensors[f"linear.{l}.bias"] = np.ascontiguousarray(bias, dtype=dtype)
    sizes = [int(layers[0][0].shape[1])] + [int(w.shape[0]) for w, _ in layers]
    for name, value in (("preprocessing.offset", offset), ("preprocessing.scale", scale)):
        if value is not None:
            tensors[name] = np.ascontiguousarray(value, dtype=dtype).reshape(-1)
    head = network["out_activation"]
    classes = _labels(network.get("classes") if classes is None else classes, head, sizes[-1])
    if feature_names is None:
        feature_names = network.get("feature_names")
    meta = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "fastmlp_version": _version(),
        "source": network["source"],
        "architecture": {"sizes": sizes, "activation": network["activation"], "out_activation": head,
                         "dtype": dtype.name},
        "input": {"shape": None if input_shape is None else [int(d) for d in input_shape],
                  "preprocessing": preprocessing if offset is not None else None,
                  "feature_names": None if feature_names is None else [str(n) for n in feature_names]},
        "classes": None if classes is None else classes.tolist(),
        "classes_dtype": None if classes is None else classes.dtype.str,
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
    obj : fastmlp.MLP, fitted fastmlp.MLPClassifier or MLPRegressor, or Predictor
        An estimator is read through its public fitted attributes (``coefs_``,
        ``intercepts_``, ``activation``, ``out_activation_``, ``classes_``,
        ``feature_names_in_``), so scikit-learn's own MLPs save too; a Predictor keeps
        everything it holds.
    path : path
        The file to write (by convention ``*.safetensors``); its folder is created.
    offset, scale : array (D,), optional
        The input preprocessing x = (raw - offset) / scale (e.g. a
        ``fastmlp.data.Preprocessing``'s ``offset`` and ``scale``).
    preprocessing : str or fastmlp.data.Preprocessing, optional
        Its name (``"mean_image"``...); or a training DataSet's ``preprocessing``, which
        gives ``offset``, ``scale`` and the name at once.
    classes : array-like (C,), optional
        The label of each output (default 0..C-1, or the estimator's ``classes_``); the two
        classes of a single logistic output (default 0, 1); none for an identity output.
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
    sklearn.exceptions.NotFittedError
        For an estimator not fitted yet (a ValueError).
    ValueError
        For ``classes`` or ``offset``/``scale`` that do not fit the network, or an
        activation or output head the file cannot hold.
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
    _check_head(meta, sizes[-1], what)
    spec = meta.get("input") if isinstance(meta.get("input"), dict) else {}
    names = spec.get("feature_names")
    if names is not None and (not isinstance(names, list) or len(names) != sizes[0]
                              or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"{what}: feature names: expected a list of {sizes[0]} strings, got {names!r:.200}")
    shape = spec.get("shape")
    if shape is not None and (not isinstance(shape, list) or not 1 <= len(shape) <= 4
                              or not all(_is_count(d) for d in shape)
                              or int(np.prod(shape, dtype=object)) != sizes[0]):
        raise ValueError(f"{what}: input shape {shape!r:.80} does not hold the {sizes[0]} inputs")


def _check_head(meta: dict, n_outputs: int, what: str) -> None:
    """ValueError unless the activation and output head are known and ``classes`` holds the labels the head needs."""
    arch = meta["architecture"] if isinstance(meta.get("architecture"), dict) else {}
    activation, head = arch.get("activation", "relu"), arch.get("out_activation", "softmax")
    if activation not in ACTIVATIONS or head not in OUTPUTS:
        raise ValueError(f"{what}: activation {activation!r:.40} and output activation {head!r:.40}: expected "
                         f"an activation of {ACTIVATIONS} and an output of {OUTPUTS}")
    classes = meta.get("classes")
    if head in ("identity", "exp"):
        if classes is not None:
            raise ValueError(f"{what}: classes: a regressor (output {head!r}) has none, got {classes!r:.200}")
        return
    n_labels = 2 if head == "logistic" and n_outputs == 1 else n_outputs
    if not isinstance(classes, list) or len(classes) != n_labels:
        raise ValueError(f"{what}: classes: expected a list of {n_labels} labels for {n_outputs} {head} "
                         f"output(s), got {classes!r:.200}")


# --------------------------------------------------------------------------- loading
def _build(meta: dict, tensors: dict[str, np.ndarray], what: str) -> Predictor:
    from fastmlp.mlp import MLP

    arch = meta["architecture"] if isinstance(meta.get("architecture"), dict) else {}
    sizes = arch.get("sizes")
    _check_fits(meta, {name: t.shape for name, t in tensors.items()}, sizes, what)
    head = arch.get("out_activation", "softmax")
    try:
        dtype = np.dtype(arch.get("dtype"))
        model = MLP(sizes[0], sizes[1:-1], sizes[-1], dtype=dtype, activation=arch.get("activation", "relu"),
                    output="identity" if head == "exp" else head)
        classes = None if meta["classes"] is None else _read_classes(meta)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: cannot rebuild the model it describes: {exc}") from None
    for l, lin in enumerate(model.linears):
        lin.params["weight"][...] = tensors[f"linear.{l}.weight"]
        lin.params["bias"][...] = tensors[f"linear.{l}.bias"]
    offset, scale = (tensors.get(f"preprocessing.{k}") for k in ("offset", "scale"))
    spec = meta.get("input") or {}
    info = {key: meta.get(key) for key in ("fastmlp_version", "format_version", "source")}
    names = spec.get("feature_names")
    return Predictor(model, classes, offset=None if offset is None else offset.astype(dtype),
                     scale=None if scale is None else scale.astype(dtype), preprocessing=spec.get("preprocessing"),
                     input_shape=None if spec.get("shape") is None else tuple(spec["shape"]), info=info,
                     feature_names=None if names is None else np.asarray(names, dtype=object),
                     out_activation=head)


def _read_classes(meta: dict) -> np.ndarray:
    """The labels (C,) of a file's metadata, of its ``classes_dtype`` kind."""
    kind = np.dtype(meta.get("classes_dtype"))
    if kind.kind not in CLASS_KINDS:
        raise ValueError(f"class labels of dtype {kind} are not read")
    # A string width comes from the labels themselves, never from the header's dtype (it could be huge).
    classes = np.asarray(meta["classes"], dtype=str if kind.kind == "U" else kind)
    if classes.ndim != 1:
        raise ValueError(f"classes: expected a list of labels, got shape {classes.shape}")
    return classes


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
