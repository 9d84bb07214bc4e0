"""The parameter and attribute sections of the estimators' docstrings (one text for both classes)."""

__all__ = ["ATTRIBUTES", "PARAMETERS"]

PARAMETERS = """
    hidden_layer_sizes : array-like of int, or int, default (100,)
        Width of each hidden layer (an int: one layer).
    activation : {'relu', 'tanh', 'logistic', 'identity'}, default 'relu'
        Activation of the hidden layers.
    solver : {'adam', 'sgd'}, default 'adam'
        Adam, or SGD with ``momentum``. scikit-learn's ``'lbfgs'`` is refused.
    alpha : float >= 0, default 1e-4
        scikit-learn's L2 penalty: the loss gains ``alpha / (2 s) * sum ||W||^2``
        over every weight matrix (not the biases), ``s`` the batch's number of
        samples (or its sum of sample weights), so each weight's gradient gains
        ``alpha * W / s``.
    batch_size : int or 'auto', default 'auto'
        Samples per update; ``'auto'`` is ``min(200, n_samples)``, and a larger
        value is clipped to ``n_samples`` (with a warning).
    learning_rate : {'constant', 'invscaling', 'adaptive'}, default 'constant'
        The ``sgd`` solver's schedule (Adam ignores it): ``'invscaling'`` sets the
        rate to ``learning_rate_init / (t_ + 1) ** power_t`` after each epoch;
        ``'adaptive'`` divides it by 5 whenever ``n_iter_no_change`` epochs fail
        to improve by ``tol``, and stops once it is at most 1e-6.
    learning_rate_init : float > 0, default 1e-3
        The initial (Adam: the) step size.
    power_t : float >= 0, default 0.5
        Exponent of ``'invscaling'``.
    max_iter : int >= 1, default 200
        Maximum number of epochs (passes over the training data);
        ``ConvergenceWarning`` when reached.
    shuffle : bool, default True
        Visit the samples in a new random order every epoch.
    random_state : int, RandomState or None, default None
        Seeds the initial weights, the shuffling and the early-stopping split,
        drawn in scikit-learn's order: the same int gives the same initial
        weights and batches as scikit-learn's estimator.
    tol : float >= 0, default 1e-4
        An epoch improves when the training loss falls (or, with early stopping,
        the validation score rises) by at least ``tol`` over the best so far.
    verbose : bool, default False
        Print the loss after every epoch.
    warm_start : bool, default False
        ``fit`` continues from the current weights (a fresh optimizer state, as
        in scikit-learn) instead of starting anew.
    momentum : float in [0, 1), default 0.9
        Momentum of the ``sgd`` solver (1, which scikit-learn accepts, is refused).
    nesterovs_momentum : bool, default True
        Nesterov's momentum for the ``sgd`` solver (when ``momentum > 0``).
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the training data (stratified for
        single-label classification), stop when its score has not improved by
        ``tol`` for ``n_iter_no_change`` epochs, and keep the best weights.
    validation_fraction : float in [0, 1), default 0.1
        Share of the data held out by ``early_stopping``.
    beta_1, beta_2 : float in [0, 1), default 0.9, 0.999
        Adam's decay rates of the gradient's first and second moments.
    epsilon : float > 0, default 1e-8
        Adam's epsilon, added to ``sqrt(v)`` before the bias correction as in scikit-learn.
    n_iter_no_change : int >= 1 or np.inf, default 10
        Epochs without improvement (see ``tol``) before stopping.
    max_fun : int >= 1, default 15000
        Accepted for scikit-learn's signature; it only limits ``'lbfgs'``, which is not offered.
    dtype : {None, 'float32', 'float64', np.float32, np.float64}, default None
        fastmlp's own: the precision of the weights and the computations. None
        follows the input as scikit-learn does (float32 data trains in float32,
        anything else in float64); float32 is the faster choice for float64 data.
    n_threads : int >= 1 or None, default None
        fastmlp's own: the BLAS and kernel threads used by ``fit`` and the
        predictions (None: leave the process's setting as it is).
"""

ATTRIBUTES = """
    loss_ : float
        The last epoch's mean training loss (penalty included).
    best_loss_ : float or None
        The lowest ``loss_`` so far (None with early stopping).
    loss_curve_ : list of float
        ``loss_`` of every epoch.
    validation_scores_ : list of float or None
        The held-out score after every epoch (early stopping only).
    best_validation_score_ : float or None
        The best of ``validation_scores_`` (early stopping only).
    t_ : int
        Training samples seen (epochs times the training set's size).
    coefs_ : list of ndarray (n_in, n_out)
        Each layer's weights: transposed views of the core's ``(n_out, n_in)``
        weights (``fastmlp.MLP.linears[i].params["weight"]``), so writing into
        them changes the network.
    intercepts_ : list of ndarray (n_out,)
        Each layer's biases (the core's, live).
    n_features_in_ : int
        Number of features seen by the first ``fit``.
    feature_names_in_ : ndarray of str (n_features_in_,)
        Column names of a DataFrame given to ``fit``; the predictions check them
        as scikit-learn does.
    n_iter_ : int
        Epochs run by the last ``fit`` (1 after ``partial_fit``).
    n_layers_ : int
        Number of layers, input and output included.
    n_outputs_ : int
        Number of output units.
    out_activation_ : str
        The output's activation.
"""
