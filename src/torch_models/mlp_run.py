"""One run of the PyTorch MLP (:class:`torch_models.mlp.MLP`) from its configuration: :func:`train`.

What ``python -m torch_models.train_mlp`` runs, and what a program (the search) calls
with a :class:`torch_models.config.TorchMLPConfig`: load the data, build the model
(initialised as fastmlp initialises) and its optimizer, train on :func:`torch_models.trainer.fit`,
then save the network as a fastmlp model file.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from fastmlp.data import example_shape
from fastmlp.hyperparams import TORCH_INITS
from torch_models.config import TorchMLPConfig
from torch_models.distributed import distributed_context
from torch_models.hooks import TrainerSpec
from torch_models.optimizers import optimizer_for
from torch_models.trainer import fit

__all__ = ["ARCHITECTURE", "COURSE_INIT_STD", "TRAJECTORY", "initialize_parameters", "train"]

#: Standard deviation of the course's weight initialisation (``init="normal"``, fastmlp's default).
COURSE_INIT_STD = 1e-4
# On resuming: settings fixing the saved tensors' shapes (and the optimizer's state layout), and
# settings whose change alters the result. The schedule is a pure function of the step, so
# lr_schedule can change on resume (the result then differs from an uninterrupted run).
ARCHITECTURE = ("hidden_units", "batchnorm", "optimizer", "dataset")
TRAJECTORY = ("learning_rate", "batch_size", "momentum", "nesterov", "weight_decay", "lr_schedule",
              "warmup_steps", "init", "dropout", "preprocessing", "augment", "seed", "validation_size")


@torch.no_grad()
def initialize_parameters(model: nn.Module, init: str) -> None:
    """Re-initialise every ``nn.Linear`` of ``model`` in place as fastmlp does (``torch``: leave it).

    ``normal``: weights from N(0, ``COURSE_INIT_STD``^2) (the course's); ``kaiming``: He normal,
    N(0, 2 / fan_in); ``xavier``: Glorot normal, N(0, 2 / (fan_in + fan_out)). Biases are set
    to zero. Other layers (BatchNorm) keep their own initialisation. Draws from torch's
    global generator.

    Raises
    ------
    ValueError
        If ``init`` is not one of :data:`fastmlp.hyperparams.TORCH_INITS`.
    """
    if init not in TORCH_INITS:
        raise ValueError(f"init: expected one of {TORCH_INITS}, got {init!r}")
    if init == "torch":
        return
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        if init == "normal":
            nn.init.normal_(module.weight, mean=0.0, std=COURSE_INIT_STD)
        elif init == "kaiming":
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        else:
            nn.init.xavier_normal_(module.weight)
        nn.init.zeros_(module.bias)


def train(config: TorchMLPConfig, *, data: Mapping[str, Any] | None = None,
          on_eval: Callable[[int, dict], None] | None = None,
          checkpoint: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the training ``config`` describes; return its metrics (what ``metrics.json`` holds).

    Parameters
    ----------
    config : torch_models.config.TorchMLPConfig
        The run's settings (checked when it was made).
    data : dict, optional
        A pre-loaded ``fastmlp.data.load_dataset(...)`` result (any ``flatten``/``one_hot``);
        when given, ``data_dir``, ``validation_size`` and ``preprocessing`` are the
        caller's (``augment`` still applies: batches are drawn from a private DataSet
        over the same arrays). Not modified.
    on_eval : callable, optional
        ``on_eval(step, metrics)`` after each evaluation (``train_loss``, ``train_accuracy``,
        ``learning_rate``, ``test_loss``, ``test_accuracy`` and ``validation_*`` when there
        is a validation set); an exception it raises (e.g. ``optuna.TrialPruned``)
        propagates out of ``train``.
    checkpoint : mapping, optional
        The checkpoint ``config.resume`` names, already read (by the command line); else
        it is read when ``config.resume`` is set.

    Returns
    -------
    dict
        ``test_accuracy``, ``test_loss``, ``best_test_accuracy``, ``validation_*`` when
        present, ``steps``, ``wall_seconds``, ``seconds_per_step``, ``flags``...

    Raises
    ------
    fastmlp.runlog.DivergenceError
        On a NaN/inf training or evaluation loss, or NaN/inf weights after an update (the last
        good checkpoint is kept).
    ValueError, FileNotFoundError
        For an unusable ``config.resume`` or data.
    """
    built: list[nn.Module] = []  # the module fit() trains (a DDP or compiled wrapper shares its parameters)
    with distributed_context(config.device, config.threads, deterministic=config.deterministic) as ctx:
        if data is None:
            from fastmlp.data import load_dataset

            data = load_dataset(config.dataset, config.data_dir, one_hot=False, flatten=True,
                                validation_size=config.validation_size, preprocessing=config.preprocessing,
                                augment=config.augment, seed=config.seed)
        spec = _spec(config, *example_shape(data), built=built)
        metrics = fit(config, spec, ctx=ctx, data=data, on_eval=on_eval, checkpoint=checkpoint)
        if ctx.is_main:
            _save_model_file(built[-1], data["train"], Path(metrics["out_dir"]))
        return metrics


def _spec(config: TorchMLPConfig, shape: tuple[int, ...], n_classes: int, *, built: list) -> TrainerSpec:
    """The MLP trainer's parts for ``config`` over examples of ``shape`` in ``n_classes`` classes;
    every model it builds is appended to ``built``."""
    n_inputs = math.prod(shape)
    batchnorm = None if config.batchnorm == "none" else config.batchnorm

    def build_model() -> nn.Module:
        from torch_models.mlp import MLP

        model = MLP(n_inputs, list(config.hidden_units), n_classes, dropout=config.dropout, batchnorm=batchnorm)
        initialize_parameters(model, config.init)
        built.append(model)
        return model

    return TrainerSpec(
        name="train_mlp", input_shape=(n_inputs,), build_model=build_model,
        build_optimizer=lambda model: optimizer_for(model, config),
        dataset_augment=config.augment, min_local_batch=1 if batchnorm is None else 2,
        architecture=ARCHITECTURE, trajectory=TRAJECTORY,
        plan_notes=(f"hidden units {list(config.hidden_units) or '[] (logistic regression)'}, init {config.init}, "
                    f"dropout {config.dropout}, batchnorm {config.batchnorm}",
                    f"{config.optimizer} (momentum {config.momentum}, nesterov {config.nesterov}), weight decay "
                    f"{config.weight_decay} on weights only",
                    f"preprocessing {config.preprocessing}, augment {config.augment}"))


def _save_model_file(model: nn.Module, train_set, out_dir: Path) -> None:
    """The run's ``model.safetensors`` (:mod:`fastmlp.modelfile`): the network in its eval-mode form
    (batch normalisation folded, dropout dropped), with the training split's preprocessing and class names."""
    from fastmlp.interop import from_torch
    from fastmlp.modelfile import MODEL_FILE_NAME, save_trained

    save_trained(from_torch(model, for_inference=True), train_set, out_dir / MODEL_FILE_NAME)
