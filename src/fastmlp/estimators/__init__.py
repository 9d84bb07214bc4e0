"""scikit-learn drop-ins over the fastmlp core: :class:`MLPClassifier` and :class:`MLPRegressor`.

This package needs scikit-learn (the ``sklearn`` extra); ``import fastmlp``
does not import it: ``fastmlp.MLPClassifier`` loads it on first use.
"""
try:
    import sklearn  # noqa: F401
except ImportError as exc:  # say which extra brings it, not only the missing module's name
    raise ImportError("fastmlp's MLPClassifier and MLPRegressor need scikit-learn >= 1.6: "
                      "pip install 'fastmlp[sklearn]'") from exc

from fastmlp.estimators.classifier import MLPClassifier
from fastmlp.estimators.regressor import MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
