"""Export a model file to ONNX and run it with onnxruntime: the same probabilities as fastmlp.

    python examples/export_onnx.py runs/<run>/model.safetensors [--out model.onnx]

Needs the onnx extra (``pip install 'fastmlp[onnx]'``). The graph takes what the
model file's Predictor takes as rows: uint8 pixels (N, D) in the stored order
(CIFAR-10: channel-first), and includes the preprocessing.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime

import fastmlp
from fastmlp.modelfile import model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model file or a run folder")
    parser.add_argument("--out", default=None, help="the .onnx file (default: beside the model file)")
    args = parser.parse_args()

    model = fastmlp.load(args.model)
    out = Path(args.out) if args.out else model_path(args.model).with_suffix(".onnx")
    fastmlp.export_onnx(model, out)

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
    pixels = np.random.default_rng(0).integers(0, 256, size=(8, model.n_features_in_), dtype=np.uint8)
    (proba,) = session.run(["probabilities"], {"x": pixels})
    gap = np.abs(proba - model.predict_proba(pixels)).max()
    print(f"wrote {out}; onnxruntime vs fastmlp: largest difference {gap:.2e}")
    print("first input's class:", classes[int(proba[0].argmax())])


if __name__ == "__main__":
    main()
