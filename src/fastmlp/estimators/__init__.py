"""scikit-learn drop-ins over the fastmlp core: :class:`MLPClassifier` and :class:`MLPRegressor`.

This package needs scikit-learn (the ``sklearn`` extra); ``import fastmlp``
does not import it: ``fastmlp.MLPClassifier`` loads it on first use.
"""
from fastmlp.estimators.classifier import MLPClassifier
from fastmlp.estimators.regressor import MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
