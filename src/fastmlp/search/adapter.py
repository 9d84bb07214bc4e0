"""How a search runs a trainer: the flags of one configuration, the data, the command line.

The search drives a trainer through its Python API, ``train(args, data=..., on_eval=...)``
(:mod:`fastmlp.train` for ``--model numpy``, :mod:`torch_models.train_mlp` for ``--model
torch``). :class:`TrainerAdapter` holds that trainer's module and the flags fixed for the
whole search (``--trainer_flags``), and turns a configuration drawn from the space, with
the search's :class:`~fastmlp.search.settings.SearchSettings`, into the trainer's
settings (:meth:`TrainerAdapter.run_flags`) and those into the trainer's Namespace; it
also loads the data the trials share and writes the command that reproduces a run by
hand. Only ``__init__`` (``self.base``), :meth:`~TrainerAdapter.namespace` and
:meth:`~TrainerAdapter.command` know the trainer's Namespace.

Trials never see the test set: their data holds the training and validation splits
only, and the trainers evaluate the splits they are given.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shlex
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fastmlp.cli import flag_actions
from fastmlp.hyperparams import format_hidden_units
from fastmlp.search.errors import SearchError
from fastmlp.search.settings import MODELS, SearchSettings
from fastmlp.search.storage import one_line
from fastmlp.training import derive_seeds

__all__ = ["DEFAULT_INIT", "SEARCH_OWNED_FLAGS", "TrainerAdapter", "threads_per_worker"]

#: The weight init of every trial unless --trainer_flags names one: PyTorch's own
#: (what the reports' searches used) for the torch MLP, He (kaiming) for fastmlp's.
DEFAULT_INIT = {"torch": "torch", "numpy": "kaiming"}
#: Trainer flags the search sets itself; --trainer_flags may not give them.
SEARCH_OWNED_FLAGS = frozenset({
    "dnn_hidden_units", "learning_rate", "batch_size", "max_steps", "optimizer", "weight_decay",
    "dropout", "seed", "validation_size", "out_dir", "resume", "data_dir", "eval_freq", "quiet",
    "dry_run", "threads", "device",
})
# Flags of a trial that results.md's command leaves out, or always shows.
_NOT_IN_COMMAND = ("out_dir", "quiet", "resume", "dry_run")
_ALWAYS_IN_COMMAND = ("dnn_hidden_units", "learning_rate", "batch_size", "max_steps", "optimizer")


def threads_per_worker(settings: SearchSettings) -> int | None:
    """``--threads``; else the cores shared out between ``--n_workers`` workers; else None (the libraries' choice)."""
    if settings.threads is not None:
        return settings.threads
    if settings.n_workers > 1:
        return max(1, (os.cpu_count() or 1) // settings.n_workers)
    return None


def _raise_search_error(message: str) -> None:
    raise SearchError(f"--trainer_flags: {message}")


class TrainerAdapter:
    """The trainer module of ``--model``, with the flags ``--trainer_flags`` fixes for every trial.

    Parameters
    ----------
    model : {"numpy", "torch"}
        Which MLP (see :data:`MODELS`).
    trainer_flags : str
        Extra flags, shell-quoted; none of :data:`SEARCH_OWNED_FLAGS`.

    Raises
    ------
    SearchError
        For a flag the search owns, or one the trainer's parser refuses.
    """

    def __init__(self, model: str, trainer_flags: str):
        self.model = model
        self.module_name = MODELS[model]
        self.module = importlib.import_module(self.module_name)
        try:
            self.base_argv = shlex.split(trainer_flags or "")
        except ValueError as exc:
            raise SearchError(f"--trainer_flags: {exc}") from None
        given = {token[2:].split("=", 1)[0] for token in self.base_argv if token.startswith("--")}
        owned = sorted(given & SEARCH_OWNED_FLAGS)
        if owned:
            raise SearchError(f"--trainer_flags may not set {', '.join('--' + f for f in owned)}: the "
                              "search sets them (use the search's own flags or --grid)")
        if "init" not in given:
            # The reports' searches (Adam at lr 2e-5) used PyTorch's default init; with the
            # course's N(0, 1e-4^2) weights such a small step size does not learn at all.
            self.base_argv = ["--init", DEFAULT_INIT[model], *self.base_argv]
        parser = self.module.build_parser()
        parser.error = _raise_search_error  # a usage error of these flags is the search's error
        self.base = parser.parse_args(self.base_argv)
        actions = flag_actions(self.module.build_parser())
        self.optimizers = tuple(actions["optimizer"].choices)
        self.optimizer_note = f"with --model {model}"
        if getattr(self.base, "nesterov", False):
            # Both trainers refuse --nesterov with any optimizer but SGD with momentum.
            self.optimizers = tuple(o for o in self.optimizers if o == "momentum")
            self.optimizer_note = "with --trainer_flags --nesterov"
        self.has_dropout = "dropout" in actions
        self.has_device = "device" in actions
        self.threads_flag = "threads"  # every trainer's

    def check_optimizers(self, choices) -> None:
        """Refuse a grid or space whose optimizers this trainer, with its fixed flags, cannot run."""
        unavailable = [name for name in choices if name not in self.optimizers]
        if unavailable:
            raise SearchError(f"optimizer(s) {unavailable} of the grid/space are not available "
                              f"{self.optimizer_note} (choices: {list(self.optimizers)}); narrow the "
                              "optimizers with --grid or --space")

    def run_flags(self, config: Mapping[str, Any], settings: SearchSettings, *, out_dir: Path,
                  eval_freq: int | None = None, final: bool = False) -> dict[str, Any]:
        """The trainer's settings (by flag name) that the search sets for one run of ``config``.

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
            "dnn_hidden_units": format_hidden_units(config["hidden_units"]),
            "learning_rate": float(config["learning_rate"]), "batch_size": int(config["batch_size"]),
            "max_steps": max_steps, "optimizer": str(config["optimizer"]),
            "weight_decay": float(config["weight_decay"]),
            "eval_freq": min(int(eval_freq or settings.eval_freq), max_steps),
            "seed": settings.seed, "validation_size": settings.validation_size, "data_dir": settings.data_dir,
            "dataset": settings.dataset, "out_dir": str(out_dir), "resume": None, "dry_run": False,
            "quiet": settings.quiet if final else True,
            self.threads_flag: settings.threads if final else threads_per_worker(settings),
        }
        if self.has_dropout:
            flags["dropout"] = float(config.get("dropout", 0.0))
        if self.has_device:
            flags["device"] = settings.device
        return flags

    def namespace(self, flags: Mapping[str, Any]) -> argparse.Namespace:
        """The trainer's Namespace: the fixed flags (``--trainer_flags``) with ``flags`` (:meth:`run_flags`) set."""
        return argparse.Namespace(**{**vars(self.base), **flags})

    def command(self, ns: argparse.Namespace) -> str:
        """The shell command running ``ns`` by hand (for results.md)."""
        defaults = vars(self.module.build_parser().parse_args([]))
        parts = ["python", "-m", self.module_name]
        for name, value in vars(ns).items():
            if name in (*_NOT_IN_COMMAND, self.threads_flag) or value is None:
                continue
            if value == defaults.get(name) and name not in _ALWAYS_IN_COMMAND:
                continue
            if isinstance(value, bool):  # a switch that differs from its default: --x, or --no-x
                parts.append(f"--{name}" if value else f"--no-{name}")
                continue
            if isinstance(value, (list, tuple)):
                value = format_hidden_units(value)
            parts += [f"--{name}", shlex.quote(str(value))]
        return " ".join(parts)

    def trial_data(self, settings: SearchSettings) -> dict:
        """The splits every trial trains and is scored on: ``train`` and ``validation``, no test set.

        Loaded as the trainer would load them for ``--seed`` (same preprocessing, dtype,
        augmentation and batch-order seed), so a trial reproduces a run of the trainer's
        command line on the same training split.
        """
        from fastmlp.data import DATASETS, load_dataset

        dtype = np.float64 if getattr(self.base, "dtype", "float32") == "float64" else np.float32
        data_seed = settings.seed
        if self.model == "numpy":  # fastmlp.train seeds the batch order with a seed derived from --seed
            data_seed = derive_seeds(settings.seed)[1]
        try:
            data = load_dataset(settings.dataset, settings.data_dir, one_hot=False,
                                validation_size=settings.validation_size,
                                preprocessing=getattr(self.base, "preprocessing", "mean_image"),
                                flatten=True, dtype=dtype, augment=bool(getattr(self.base, "augment", False)),
                                seed=data_seed)
        except (ValueError, TypeError, OSError) as exc:
            raise SearchError(f"cannot load {DATASETS[settings.dataset].title} (--dataset {settings.dataset}, "
                              f"--data_dir {settings.data_dir!r}, --validation_size {settings.validation_size}): "
                              f"{one_line(exc)}") from None
        return {"train": data["train"], "validation": data["validation"]}
