"""How a search runs a trainer: the settings of one configuration, the data, the command line.

The search drives a trainer through its library API, ``train(config, data=...,
on_eval=...)`` over the trainer's typed configuration (:data:`TRAINERS`:
:class:`fastmlp.run_config.MLPRunConfig` with :func:`fastmlp.training.train` for
``--model numpy``, :class:`torch_models.config.TorchMLPConfig` with
:func:`torch_models.mlp_run.train` for ``--model torch``). :class:`TrainerAdapter` holds
that trainer's configuration with the settings fixed for the whole search
(``--trainer_flags``, parsed by the search's command line), and turns a configuration
drawn from the space, with the search's :class:`~fastmlp.search.settings.SearchSettings`,
into each run's configuration; it also loads the data the trials share and writes the
command that reproduces a run by hand.

Trials never see the test set: their data holds the training and validation splits
only, and the trainers evaluate the splits they are given.
"""
from __future__ import annotations

import importlib
import os
import shlex
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from fastmlp.config import RunConfig
from fastmlp.hyperparams import format_hidden_units
from fastmlp.search.errors import SearchError
from fastmlp.search.settings import MODELS, SearchSettings
from fastmlp.search.storage import one_line
from fastmlp.training import derive_seeds

__all__ = ["DEFAULT_INIT", "SEARCH_OWNED", "TRAINERS", "Trainer", "TrainerAdapter", "threads_per_worker"]


class Trainer(NamedTuple):
    """Where a ``--model``'s trainer lives: ``"module:name"`` of its configuration class,
    its whole-run function and the optimizers it builds."""

    config: str
    train: str
    optimizers: str


#: --model -> its trainer's library entry points (the command line of each is :data:`MODELS`).
TRAINERS = {
    "numpy": Trainer("fastmlp.run_config:MLPRunConfig", "fastmlp.training:train", "fastmlp.optim:OPTIMIZERS"),
    "torch": Trainer("torch_models.config:TorchMLPConfig", "torch_models.mlp_run:train",
                     "torch_models.config:TORCH_OPTIMIZERS"),
}
#: The weight init of every trial unless --trainer_flags names one: PyTorch's own
#: (what the reports' searches used) for the torch MLP, He (kaiming) for fastmlp's.
DEFAULT_INIT = {"torch": "torch", "numpy": "kaiming"}
#: Settings (by the trainers' field names) the search sets itself; --trainer_flags may not give them.
SEARCH_OWNED = frozenset({
    "hidden_units", "learning_rate", "batch_size", "max_steps", "optimizer", "weight_decay",
    "dropout", "seed", "validation_size", "out_dir", "resume", "data_dir", "eval_freq", "quiet",
    "dry_run", "threads", "device", "dataset",
})
# Settings of a trial that results.md's command leaves out, or always shows.
_NOT_IN_COMMAND = ("out_dir", "quiet", "resume", "dry_run", "threads", "overwrite", "plot")
_ALWAYS_IN_COMMAND = ("hidden_units", "learning_rate", "batch_size", "max_steps", "optimizer")


def threads_per_worker(settings: SearchSettings) -> int | None:
    """``--threads``; else the cores shared out between ``--n_workers`` workers; else None (the libraries' choice)."""
    if settings.threads is not None:
        return settings.threads
    if settings.n_workers > 1:
        return max(1, (os.cpu_count() or 1) // settings.n_workers)
    return None


def _load(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


class TrainerAdapter:
    """The trainer of ``--model``, with the settings ``--trainer_flags`` fixes for every trial.

    Parameters
    ----------
    model : {"numpy", "torch"}
        Which MLP (see :data:`TRAINERS`).
    fixed : mapping
        The settings ``--trainer_flags`` gave, by the trainer configuration's field
        names (what the search's command line parsed); none of :data:`SEARCH_OWNED`.

    Raises
    ------
    SearchError
        For a setting the search owns, or one the trainer's configuration refuses.
    """

    def __init__(self, model: str, fixed: Mapping[str, Any] | None = None):
        self.model = model
        trainer = TRAINERS[model]
        self.config_class: type[RunConfig] = _load(trainer.config)
        self.train: Callable[..., dict] = _load(trainer.train)
        fixed = dict(fixed or {})
        owned = sorted(set(fixed) & SEARCH_OWNED)
        if owned:
            raise SearchError(f"--trainer_flags may not set {', '.join('--' + self.config_class.flag(f) for f in owned)}: "
                              "the search sets them (use the search's own flags or --grid)")
        # The reports' searches (Adam at lr 2e-5) used PyTorch's default init; with the
        # course's N(0, 1e-4^2) weights such a small step size does not learn at all.
        fixed.setdefault("init", DEFAULT_INIT[model])
        unknown = sorted(set(fixed) - set(self.config_class.names()))
        if unknown:
            raise SearchError(f"--trainer_flags: {', '.join('--' + name for name in unknown)} is no setting of the "
                              f"{model} trainer's runs")
        # Checked together with the searched settings, run by run: --nesterov alone is
        # valid for a grid of momentum optimizers.
        self.fixed = fixed
        self.defaults = self.config_class()
        self.optimizers = tuple(_load(trainer.optimizers))
        self.optimizer_note = f"with --model {model}"
        if self.setting("nesterov"):
            # Both trainers refuse --nesterov with any optimizer but SGD with momentum.
            self.optimizers = tuple(o for o in self.optimizers if o == "momentum")
            self.optimizer_note = "with --trainer_flags --nesterov"
        self.has_dropout = "dropout" in self.config_class.names()
        self.has_device = "device" in self.config_class.names()

    def check_optimizers(self, choices) -> None:
        """Refuse a grid or space whose optimizers this trainer, with its fixed flags, cannot run."""
        unavailable = [name for name in choices if name not in self.optimizers]
        if unavailable:
            raise SearchError(f"optimizer(s) {unavailable} of the grid/space are not available "
                              f"{self.optimizer_note} (choices: {list(self.optimizers)}); narrow the "
                              "optimizers with --grid or --space")

    def run_flags(self, config: Mapping[str, Any], settings: SearchSettings, *, out_dir: Path,
                  eval_freq: int | None = None, final: bool = False) -> dict[str, Any]:
        """The trainer's settings (by field name) that the search sets for one run of ``config``.

        Parameters
        ----------
        config : mapping
            A configuration of :mod:`fastmlp.search.space`.
        settings : SearchSettings
            The search's settings (seed, data, evaluation frequency, threads, device).
        out_dir : Path
            The run's folder.
        eval_freq : int, optional
            Evaluate every this many steps (default ``settings.eval_freq``; at most ``max_steps``).
        final : bool
            The retrain of the best configuration: progress shown unless ``--quiet``, and
            ``--threads`` as given (the workers are done: every core may be used);
            a trial is quiet (several workers' progress bars would interleave) and takes
            :func:`threads_per_worker`.
        """
        self.check_optimizers([config["optimizer"]])
        if config.get("dropout") and not self.has_dropout:
            raise SearchError(f"dropout is not available with --model {self.model}")
        max_steps = int(config["max_steps"])
        flags = {
            "hidden_units": list(config["hidden_units"]),
            "learning_rate": float(config["learning_rate"]), "batch_size": int(config["batch_size"]),
            "max_steps": max_steps, "optimizer": str(config["optimizer"]),
            "weight_decay": float(config["weight_decay"]),
            "eval_freq": min(int(eval_freq or settings.eval_freq), max_steps),
            "seed": settings.seed, "validation_size": settings.validation_size, "data_dir": settings.data_dir,
            "dataset": settings.dataset, "out_dir": str(out_dir), "resume": None, "dry_run": False,
            "quiet": settings.quiet if final else True,
            "threads": settings.threads if final else threads_per_worker(settings),
        }
        if self.has_dropout:
            flags["dropout"] = float(config.get("dropout", 0.0))
        if self.has_device:
            flags["device"] = settings.device
        return flags

    def setting(self, name: str) -> Any:
        """A fixed setting of every run: ``--trainer_flags``' value, else the trainer's default (None if it has none)."""
        return self.fixed.get(name, getattr(self.defaults, name, None))

    def run_config(self, flags: Mapping[str, Any]) -> RunConfig:
        """The trainer's configuration of one run: the fixed settings with ``flags`` (:meth:`run_flags`).

        Raises
        ------
        SearchError
            When the settings do not go together (the trainer's message).
        """
        try:
            return self.config_class.create({**self.fixed, **flags},
                                            label=lambda name: f"--{self.config_class.flag(name)}")
        except (TypeError, ValueError) as exc:
            raise SearchError(str(exc)) from None

    def command(self, config: RunConfig) -> str:
        """The shell command running ``config`` by hand (for results.md)."""
        parts = ["python", "-m", MODELS[self.model]]
        for name in config.names():
            value = getattr(config, name)
            if name in _NOT_IN_COMMAND or value is None:
                continue
            if value == getattr(self.defaults, name) and name not in _ALWAYS_IN_COMMAND:
                continue
            flag = config.flag(name)
            if isinstance(value, bool):  # a switch that differs from its default: --x, or --no-x
                parts.append(f"--{flag}" if value else f"--no-{flag}")
                continue
            if isinstance(value, (list, tuple)):
                value = format_hidden_units(value)
            parts += [f"--{flag}", shlex.quote(str(value))]
        return " ".join(parts)

    def trial_data(self, settings: SearchSettings) -> dict:
        """The splits every trial trains and is scored on: ``train`` and ``validation``, no test set.

        Loaded as the trainer would load them for ``--seed`` (same preprocessing, dtype,
        augmentation and batch-order seed), so a trial reproduces a run of the trainer's
        command line on the same training split.
        """
        from fastmlp.data import DATASETS, load_dataset

        dtype = np.float64 if self.setting("dtype") == "float64" else np.float32
        data_seed = settings.seed
        if self.model == "numpy":  # fastmlp.train seeds the batch order with a seed derived from --seed
            data_seed = derive_seeds(settings.seed)[1]
        try:
            data = load_dataset(settings.dataset, settings.data_dir, one_hot=False,
                                validation_size=settings.validation_size,
                                preprocessing=self.setting("preprocessing"),
                                flatten=True, dtype=dtype, augment=bool(self.setting("augment")),
                                seed=data_seed)
        except (ValueError, TypeError, OSError) as exc:
            raise SearchError(f"cannot load {DATASETS[settings.dataset].title} (--dataset {settings.dataset}, "
                              f"--data_dir {settings.data_dir!r}, --validation_size {settings.validation_size}): "
                              f"{one_line(exc)}") from None
        return {"train": data["train"], "validation": data["validation"]}
