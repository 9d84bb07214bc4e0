"""With their defaults, fastmlp's estimators score as scikit-learn's on its bundled data sets (issue 20).

For each data set, raw and standardized: the mean test score over three seeds
(accuracy, or R^2 for regression) is at least scikit-learn's minus 0.02.
"""
from __future__ import annotations

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn import datasets, neural_network  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import fastmlp  # noqa: E402

SEEDS = (0, 1, 2)
MARGIN = 0.02


def _synthetic_regression():
    return datasets.make_regression(n_samples=400, n_features=12, n_informative=8, noise=10.0, random_state=0)


DATA = {
    "digits": ("MLPClassifier", lambda: datasets.load_digits(return_X_y=True)),
    "iris": ("MLPClassifier", lambda: datasets.load_iris(return_X_y=True)),
    "wine": ("MLPClassifier", lambda: datasets.load_wine(return_X_y=True)),
    "breast_cancer": ("MLPClassifier", lambda: datasets.load_breast_cancer(return_X_y=True)),
    "diabetes": ("MLPRegressor", lambda: datasets.load_diabetes(return_X_y=True)),
    "synthetic_regression": ("MLPRegressor", _synthetic_regression),
}


def _mean_score(module, name: str, X_train, X_test, y_train, y_test, standardize: bool) -> float:
    scores = []
    for seed in SEEDS:
        estimator = getattr(module, name)(random_state=seed)
        model = make_pipeline(StandardScaler(), estimator) if standardize else estimator
        scores.append(model.fit(X_train, y_train).score(X_test, y_test))
    return float(np.mean(scores))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("standardize", [False, True], ids=["raw", "standardized"])
@pytest.mark.parametrize("data", sorted(DATA))
def test_default_scores_match_scikit_learn(data, standardize):
    name, load = DATA[data]
    X, y = load()
    stratify = y if name == "MLPClassifier" else None
    split = train_test_split(X, y, test_size=0.25, random_state=0, stratify=stratify)
    ours = _mean_score(fastmlp, name, *split, standardize)
    theirs = _mean_score(neural_network, name, *split, standardize)
    assert ours >= theirs - MARGIN, f"{data}: fastmlp {ours:.4f}, scikit-learn {theirs:.4f}"


@pytest.mark.slow
def test_the_comparison_bench_runs(tmp_path, capsys, monkeypatch):
    """benches/sklearn_compare.py at its smallest: both children fit, score alike and name their BLAS kernels."""
    import importlib.util
    import json
    from pathlib import Path

    benches = Path(__file__).resolve().parents[1] / "benches"
    monkeypatch.syspath_prepend(str(benches))  # the bench imports its helpers (_native.py) by plain name
    path = benches / "sklearn_compare.py"
    spec = importlib.util.spec_from_file_location("sklearn_compare", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "compare.json"
    assert bench.main(["--rounds", "1", "--epochs", "2", "--settle", "0", "--threads", "1", "--data", "diabetes",
                       "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| diabetes | 1 |" in printed
    (result,) = json.loads(out.read_text())["results"]
    assert result["fastmlp_score"] == pytest.approx(result["sklearn_score"], abs=1e-6)
    assert result["speedup"] > 0
    assert 0 < result["limit_seconds"] < result["fastmlp_seconds"]  # the GEMMs at the dgemm rate: a lower bound
    # 64 -> 64 -> 10: forward and weight gradients 2 (64*64 + 64*10) each, input gradient of the output layer 64*10
    assert bench.fit_gemm_flops([64, 64, 10], 3, 5) == 2 * 3 * 5 * (2 * (64 * 64 + 64 * 10) + 64 * 10)
    for library in ("fastmlp", "sklearn"):
        openblas = [k for k in result[f"{library}_kernels"] if k["api"] == "openblas"]
        assert openblas and all(k["architecture"] for k in openblas), result[f"{library}_kernels"]
        assert f"{library}'s BLAS kernels (threadpoolctl): " in printed
        assert all(f"({k['api']}) {k['architecture']}" in printed for k in openblas)
