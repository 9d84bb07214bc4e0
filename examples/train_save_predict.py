"""Train an MLP on CIFAR-10, then load its model file and predict raw images with it.

    python examples/train_save_predict.py --data_dir ../shared/data [--max_steps 1500] [--out_dir runs/example]

The run writes ``model.safetensors`` beside its metrics; the loaded model needs
nothing else: it takes uint8 images as CIFAR-10 stores them, (N, 3, 32, 32) or
rows of 3,072, or channels-last (N, 32, 32, 3), and applies the run's preprocessing.
"""
import argparse

import numpy as np

import fastmlp
from fastmlp.data import load_cifar10
from fastmlp.run_config import MLPRunConfig
from fastmlp.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--max_steps", type=int, default=1500)
    parser.add_argument("--out_dir", default=None)
    args = parser.parse_args()

    metrics = train(MLPRunConfig(data_dir=args.data_dir, max_steps=args.max_steps, eval_freq=args.max_steps,
                                 init="kaiming", out_dir=args.out_dir, quiet=True))
    model = fastmlp.load(f"{metrics['out_dir']}/model.safetensors")
    print(model)

    raw = load_cifar10(args.data_dir)  # uint8 images, no preprocessing
    images, labels = raw["x_test"], np.asarray(raw["label_names"])[raw["y_test"]]
    accuracy = np.mean(model.predict(images.transpose(0, 2, 3, 1)) == labels)  # channels-last, as images usually are
    print(f"run's test accuracy {metrics['test_accuracy']:.4f}; the loaded model's {accuracy:.4f}")
    for label, proba in zip(labels[:3], model.predict_proba(images[:3])):
        best = proba.argmax()
        print(f"  true {label:<10} predicted {model.classes_[best]:<10} ({proba[best]:.2f})")


if __name__ == "__main__":
    main()
