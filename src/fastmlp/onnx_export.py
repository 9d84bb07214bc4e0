"""``fastmlp.export_onnx``: a model as an ONNX graph from raw input rows to probabilities or values.

The graph is built with the ``onnx`` package's helper functions (no PyTorch):

    x (N, D) uint8 or float  --Cast-->  model dtype  --Sub offset, Div scale-->
    [Gemm (transB) -> activation] per hidden layer  -->  Gemm  -->  output head

with the activation Relu, Tanh, Sigmoid or Identity, and the head by what the model
predicts: Softmax (multiclass) or Sigmoid (multilabel) to ``probabilities`` (N, C);
for a binary model (one logistic output) Sigmoid then (1 - p, p) to
``probabilities`` (N, 2), as scikit-learn's ``predict_proba``; for a regressor the
``values`` (N, K), K the number of outputs (1 included), through Exp for the Poisson loss's output.

The preprocessing the model was trained with is part of the graph: a runtime
feeds it the stored pixels (for CIFAR-10, uint8 rows of 3,072 values in CIFAR's
channel-first order). The class labels, what it predicts (``target``), the
preprocessing's name and the input's shape are in the model's ``metadata_props``
(``classes`` as JSON, null for a regressor).

Needs the ``onnx`` extra (``pip install 'fastmlp[onnx]'``: onnx, and onnxruntime to run it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["INPUT_NAME", "INPUT_TYPES", "OPSET", "OUTPUT_NAME", "VALUES_NAME", "export_onnx"]

INPUT_NAME = "x"
OUTPUT_NAME = "probabilities"
#: The output of a regressor's graph.
VALUES_NAME = "values"
#: The ONNX operator of each hidden activation and logistic output.
ACTIVATION_OPS = {"relu": "Relu", "tanh": "Tanh", "logistic": "Sigmoid", "identity": "Identity"}
#: The ONNX operator set the graph is written for (every operator used exists since opset 13).
OPSET = 17
#: Accepted ``input_type`` values of :func:`export_onnx`.
INPUT_TYPES = ("uint8", "float32", "float64")


def _nodes(predictor, helper, numpy_helper) -> tuple[list, list]:
    """The graph's nodes and initializers (constant tensors), input to output."""
    dtype = predictor.dtype
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    nodes = [helper.make_node("Cast", [INPUT_NAME], ["x_float"], to=elem)]
    inits, h = [], "x_float"
    for name, value in (("offset", predictor.offset), ("scale", predictor.scale)):
        if value is not None:
            inits.append(numpy_helper.from_array(np.asarray(value, dtype)[None, :], name))
            op = "Sub" if name == "offset" else "Div"
            nodes.append(helper.make_node(op, [h, name], [f"x_{op.lower()}"]))
            h = f"x_{op.lower()}"
    last = len(predictor.model.linears) - 1
    for l, lin in enumerate(predictor.model.linears):
        inits.append(numpy_helper.from_array(lin.params["weight"].astype(dtype), f"linear_{l}_weight"))
        inits.append(numpy_helper.from_array(lin.params["bias"].astype(dtype), f"linear_{l}_bias"))
        nodes.append(helper.make_node("Gemm", [h, f"linear_{l}_weight", f"linear_{l}_bias"], [f"linear_{l}"],
                                      transB=1))
        h = f"linear_{l}"
        if l < last:
            nodes.append(helper.make_node(ACTIVATION_OPS[predictor.model.activation], [h], [f"hidden_{l}"]))
            h = f"hidden_{l}"
    return nodes + _head(predictor, h, inits, numpy_helper, helper), inits


def _head(predictor, logits: str, inits: list, numpy_helper, helper) -> list:
    """The nodes from the last layer's ``logits`` to the graph's output, by the predictor's target."""
    target = predictor.target
    if target == "regression":
        return [helper.make_node("Exp" if predictor.out_activation_ == "exp" else "Identity", [logits], [VALUES_NAME])]
    if target == "multiclass":
        return [helper.make_node("Softmax", [logits], [OUTPUT_NAME], axis=1)]
    if target == "multilabel":
        return [helper.make_node("Sigmoid", [logits], [OUTPUT_NAME])]
    inits.append(numpy_helper.from_array(np.ones((1, 1), predictor.dtype), "one"))
    return [helper.make_node("Sigmoid", [logits], ["p"]),  # binary: the columns (1 - p, p)
            helper.make_node("Sub", ["one", "p"], ["one_minus_p"]),
            helper.make_node("Concat", ["one_minus_p", "p"], [OUTPUT_NAME], axis=1)]


def export_onnx(model_or_file, path: str | os.PathLike, *, input_type: str | None = None) -> Path:
    """Write ``model_or_file`` as an ONNX model to ``path`` (atomically), preprocessing included.

    Parameters
    ----------
    model_or_file : path, fastmlp.Predictor, fastmlp.MLP, fitted MLPClassifier or MLPRegressor
        A model file (:func:`fastmlp.save`, or a run folder) or a model.
    path : path
        The ``.onnx`` file to write.
    input_type : {"uint8", "float32", "float64"}, optional
        The element type of the graph's input ``x`` (N, D). Default: uint8 when the
        model preprocesses its inputs (stored pixels), else the model's dtype.

    Returns
    -------
    Path
        ``path``. The graph's output, in the model's dtype: ``probabilities`` (N, C),
        columns in the order of the labels in ``metadata_props["classes"]`` (two for a
        binary model); for a regressor ``values`` (N, K).

    Raises
    ------
    ValueError
        For an unknown ``input_type``, or a model file that cannot be read.
    ImportError
        Without the ``onnx`` package, saying which extra installs it.
    """
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ImportError("export_onnx needs the onnx package: pip install 'fastmlp[onnx]'") from None
    from fastmlp.atomic import atomic_path
    from fastmlp.modelfile import predictor_of

    predictor = predictor_of(model_or_file)
    if input_type is None:
        input_type = "uint8" if predictor.offset is not None else predictor.dtype.name
    if input_type not in INPUT_TYPES:
        raise ValueError(f"input_type: expected one of {INPUT_TYPES}, got {input_type!r}")
    nodes, inits = _nodes(predictor, helper, numpy_helper)
    graph = helper.make_graph(
        nodes, "fastmlp_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, helper.np_dtype_to_tensor_dtype(np.dtype(input_type)),
                                       ["N", predictor.n_features_in_])],
        [_output_info(predictor, helper)], initializer=inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fastmlp")
    helper.set_model_props(onnx_model, {
        "classes": json.dumps(None if predictor.classes_ is None else predictor.classes_.tolist()),
        "target": predictor.target,
        "preprocessing": str(predictor.preprocessing),
        "input_shape": json.dumps(None if predictor.input_shape is None else list(predictor.input_shape)),
    })
    onnx.checker.check_model(onnx_model)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(onnx_model.SerializeToString())
    return path


def _output_info(predictor, helper):
    """The graph output's name, element type and shape."""
    elem = helper.np_dtype_to_tensor_dtype(predictor.dtype)
    if predictor.target == "regression":
        return helper.make_tensor_value_info(VALUES_NAME, elem, ["N", predictor.n_outputs_])
    return helper.make_tensor_value_info(OUTPUT_NAME, elem, ["N", len(predictor.classes_)])
