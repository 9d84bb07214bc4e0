"""The scikit-learn style estimator on scikit-learn's bundled digits, saved and loaded as a model file.

    python examples/estimator_digits.py [--max_iter 60] [--out digits.safetensors]

Needs scikit-learn (for the data only); nothing is downloaded.
"""
import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

import fastmlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_iter", type=int, default=60, help="epochs (default 60)")
    parser.add_argument("--out", default=None, help="model file to write (default: a temporary one)")
    args = parser.parse_args()

    X, y = load_digits(return_X_y=True)  # 1,797 images of 8x8 pixels, values 0..16
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.25, random_state=0)
    clf = fastmlp.MLPClassifier(hidden_layer_sizes=(64,), learning_rate_init=1e-3, batch_size=64,
                                max_iter=args.max_iter, random_state=0)
    with warnings.catch_warnings():  # a short run stops at max_iter on purpose
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X_train, y_train)
    print(f"test accuracy {clf.score(X_test, y_test):.4f}")

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "digits.safetensors"
    loaded = fastmlp.load(fastmlp.save(clf, out))  # safetensors: loading runs no code, unlike a pickle
    same = np.array_equal(loaded.predict(X_test), clf.predict(X_test))
    print(f"saved to {out}; the loaded model predicts the same labels: {same}")


if __name__ == "__main__":
    main()
