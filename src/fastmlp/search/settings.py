"""The search's own settings as one typed value, :class:`SearchSettings`, made once and read everywhere.

``python -m fastmlp.search`` generates its flags from the fields
(:func:`fastmlp.cli.add_config_arguments`) and turns what it parsed into a
:class:`SearchSettings` once; :func:`fastmlp.search.run_search` does the same with a
mapping. Every other module of the search reads the settings' fields, never a flag.

Each value is checked when the settings are made, with the constraint table's message
(:mod:`fastmlp.hyperparams`), then the combinations (:meth:`SearchSettings.check_together`);
the defaults that depend on other settings (the study's name, the output folder, the
trial budget, the pruner, the grace period) are filled in and ``--grid`` / ``--space``
are parsed (``grid_values``, ``space_values``), so a :class:`SearchSettings` is always
complete. A changed copy is :meth:`~fastmlp.config.RunConfig.replace`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

from fastmlp.config import RunConfig, setting
from fastmlp.data import DATASET_NAMES
from fastmlp.hyperparams import (
    CONSTRAINTS,
    DEVICES,
    NONNEGATIVE_INT,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    Boolean,
    Constraint,
    NoneOr,
    Options,
)
from fastmlp.search.errors import SearchError
from fastmlp.search.space import DEFAULT_GRID, parse_grid, parse_space, suggest_config
from fastmlp.search.storage import GRACE_PERIOD_FACTOR

__all__ = ["MODELS", "PRUNERS", "SAMPLERS", "SearchSettings"]

#: --model -> the trainer module driven for it.
MODELS = {"numpy": "fastmlp.train", "torch": "torch_models.train_mlp"}
SAMPLERS = ("grid", "evolution", "tpe", "random")
PRUNERS = ("median", "halving", "none")
# Trials per study when neither --n_trials nor a grid bounds it.
_DEFAULT_N_TRIALS = 20


class _Text(Constraint):
    """A string (a name, or shell-quoted flags)."""

    def describe(self) -> str:
        return "a string"

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(self.expected(value))
        return value


_TEXT = _Text()
_SEARCH = "what to search"
_BUDGET = "budget"
_DATA = "data"
_STUDY = "study and workers"
_RUN = "run"
_INVOCATION = "this invocation"


@dataclasses.dataclass(frozen=True)
class SearchSettings(RunConfig):
    """Everything one run (or worker) of ``python -m fastmlp.search`` is told; field names are the flags'.

    Made from a parsed command line (:func:`fastmlp.cli.config_from_args`), a mapping
    (``SearchSettings.create(values, by_flag=True)``: messages name ``--<flag>``) or
    directly (``SearchSettings(model="numpy", sampler="tpe")``). Settings left to
    ``None`` that have a derived default get it on construction; ``grid_values`` and
    ``space_values`` are derived from ``grid`` / ``space`` (never given).

    Raises
    ------
    TypeError, ValueError
        For a value of the wrong type or out of range (the constraint table's message).
    SearchError
        (a ValueError) for a bad combination, a bad ``--grid`` or ``--space``, an empty study name.
    """

    # -- what to search
    model: str = setting("torch", check=Options(tuple(MODELS)), group=_SEARCH,
                         help="numpy: fastmlp.train (fastmlp MLP); torch: torch_models.train_mlp")
    sampler: str = setting("grid", check=Options(SAMPLERS), group=_SEARCH,
                           help="grid: GridSampler over the reports' grid or --grid; evolution: NSGAIISampler "
                                "(genetic); tpe; random")
    grid: str | Mapping | None = setting(
        None, group=_SEARCH,
        help="grid axes as a JSON object or the path of a JSON file, e.g. '{\"batch_size\": [200, 600], "
             "\"max_steps\": [2000]}'; named axes replace the reports' ones, others keep them. Axes: "
             f"{', '.join(DEFAULT_GRID)}")
    space: str | Mapping | None = setting(
        None, group=_SEARCH,
        help="narrow the space of --sampler evolution/tpe/random: ranges as a JSON object or the path of a "
             "JSON file, e.g. '{\"units\": [128, 1024], \"batch_size\": [64, 512], \"max_steps\": [2000, "
             "5000, 500]}'; named keys replace the default ranges. Keys: n_layers, units, learning_rate, "
             "batch_size, max_steps, optimizer, weight_decay, dropout")
    pruner: str | None = setting(None, check=NoneOr(Options(PRUNERS)), group=_SEARCH,
                                 help="median, halving or none: stop hopeless trials on their validation "
                                      "curve (when unset: none for the grid, so that every grid point gets "
                                      "its full result; median otherwise)")
    population_size: int = setting(20, check=POSITIVE_INT, group=_SEARCH,
                                   help="NSGA-II population (trials per generation) for --sampler evolution")
    trainer_flags: str = setting(
        "", check=_TEXT, group=_SEARCH,
        help="extra flags for every trial's trainer, fixed during the search (not the searched ones); write "
             "it with '=' as the value starts with '--', e.g. --trainer_flags='--init kaiming "
             "--preprocessing standardize'. Without --init here, trials use --init torch (torch model) or "
             "kaiming (numpy model)")
    # -- budget
    n_trials: int | None = setting(None, check=NoneOr(POSITIVE_INT), group=_BUDGET,
                                   help="TOTAL finished (complete or pruned) trials the study should reach, "
                                        "counted over every run and worker (when unset: the whole grid; "
                                        f"{_DEFAULT_N_TRIALS} for other samplers)")
    timeout: float | None = setting(None, check=NoneOr(POSITIVE_NUMBER), group=_BUDGET,
                                    help="seconds after which this run starts no new trial")
    max_steps_cap: int | None = setting(None, check=NoneOr(CONSTRAINTS["max_steps"]), group=_BUDGET,
                                        help="train at most this many steps per trial (quick runs)")
    eval_freq: int = setting(250, check="eval_freq", group=_BUDGET,
                             help="validation evaluation (and pruning check) every this many steps")
    # -- data
    dataset: str = setting("cifar10", check="dataset", group=_DATA,
                           help=f"the data set, one of {', '.join(DATASET_NAMES)} (fastmlp.data.registry)")
    data_dir: str | None = setting(None, path=True, group=_DATA,
                                   help="folder holding the data set, or the .npz file (when unset: "
                                        "$FASTMLP_DATA, else ~/.cache/fastmlp)")
    validation_size: int = setting(5000, check=POSITIVE_INT, group=_DATA,
                                   help="training images held out to score the trials (the test set is "
                                        "never used)")
    # -- study and workers
    study_name: str | None = setting(None, check=NoneOr(_TEXT), group=_STUDY,
                                     help="when unset: <model>-<sampler>")
    storage: str | None = setting(None, path=True, group=_STUDY,
                                  help="journal file path, or an SQLAlchemy URL (postgresql://..., mysql://..., "
                                       "sqlite:///...) for workers on several machines (when unset: "
                                       "<out_dir>/study.journal)")
    n_workers: int = setting(1, check=POSITIVE_INT, group=_STUDY,
                             help="worker processes on this machine, all sharing the storage")
    worker_index: int = setting(0, check=NONNEGATIVE_INT, group=_STUDY,
                                help="distinct per hand-started worker: offsets the sampler's random seed")
    threads: int | None = setting(None, check="threads", group=_STUDY,
                                  help="CPU threads per worker (when unset: cores / n_workers with several "
                                       "workers, else the libraries' choice)")
    device: str = setting("auto", check="device", group=_STUDY,
                          help=f"device of the torch model, one of {', '.join(DEVICES)}")
    heartbeat_interval: int = setting(30, check=NONNEGATIVE_INT, group=_STUDY,
                                      help="seconds between heartbeats of a running trial (0: no heartbeat, a "
                                           "killed worker's trial then stays RUNNING)")
    grace_period: int | None = setting(None, check=NoneOr(POSITIVE_INT), group=_STUDY,
                                       help="seconds without heartbeat before a running trial is failed and "
                                            f"queued again (when unset: {GRACE_PERIOD_FACTOR} x "
                                            "heartbeat_interval)")
    max_retry: int = setting(2, check=NONNEGATIVE_INT, group=_STUDY,
                             help="times a trial killed with its worker (or interrupted) is queued again")
    # -- run
    seed: int = setting(42, check="seed", group=_RUN,
                        help="seed of every trial's training (and of the samplers)")
    out_dir: str | None = setting(None, path=True, group=_RUN, help="when unset: runs/search/<study_name>")
    skip_final: bool = setting(False, check=Boolean(), group=_INVOCATION,
                               help="do not retrain and test the best configuration at the end of this run")
    dry_run: bool = setting(False, check=Boolean(), group=_INVOCATION,
                            help="check the flags and the storage, print the plan, train nothing")
    quiet: bool = setting(False, check=Boolean(), group=_INVOCATION, help="no progress bars or per-trial lines")
    # -- derived from grid / space on construction, never given
    grid_values: dict[str, list] | None = dataclasses.field(default=None, init=False)
    space_values: dict[str, Any] | None = dataclasses.field(default=None, init=False)

    #: The settings that describe one invocation only: switches without a ``--no-`` form.
    INVOCATION_SWITCHES = ("skip_final", "dry_run", "quiet")
    #: Derived on construction: not settings anyone gives.
    DERIVED = ("grid_values", "space_values")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value in self._derived().items():
            object.__setattr__(self, name, value)

    @classmethod
    def given_names(cls) -> tuple[str, ...]:
        """The settings a caller may give (every field but :attr:`DERIVED`), in declaration order."""
        return tuple(name for name in cls.names() if name not in cls.DERIVED)

    def check_together(self, values: dict[str, Any], label: Callable[[str], str]) -> None:
        """Refuse the combinations that no single setting's check sees (:class:`SearchError`)."""
        sampler = values["sampler"]
        if values["grid"] is not None and sampler != "grid":
            raise SearchError(f"{label('grid')} is only used by {label('sampler')} grid (got "
                              f"{label('sampler')} {sampler})")
        if values["space"] is not None and sampler == "grid":
            raise SearchError(f"{label('space')} is used by {label('sampler')} evolution, tpe and random; the "
                              f"grid takes {label('grid')}")
        if values["model"] == "numpy" and values["device"] == "cuda":
            raise SearchError(f"{label('device')} cuda needs {label('model')} torch (the NumPy MLP runs on the "
                              "CPU)")
        beat, grace = values["heartbeat_interval"], values["grace_period"]
        if beat and grace is not None and grace <= beat:
            raise SearchError(f"{label('grace_period')} ({grace} s) must exceed {label('heartbeat_interval')} "
                              f"({beat} s), or live trials would be failed")
        if values["study_name"] is not None and not values["study_name"].strip():
            raise SearchError(f"{label('study_name')} must not be empty")

    def _derived(self) -> dict[str, Any]:
        """The defaults that depend on other settings, and the parsed grid or space."""
        grid = self.sampler == "grid"
        try:
            grid_values = parse_grid(self.grid, model=self.model) if grid else None
            space_values = None if grid else parse_space(self.space, model=self.model)
        except (TypeError, ValueError) as exc:
            raise SearchError(str(exc)) from None
        study_name = self.study_name if self.study_name is not None else f"{self.model}-{self.sampler}"
        grace_period = self.grace_period
        if grace_period is None and self.heartbeat_interval:
            grace_period = GRACE_PERIOD_FACTOR * self.heartbeat_interval
        return {
            "study_name": study_name,
            "out_dir": self.out_dir if self.out_dir is not None else str(Path("runs") / "search" / study_name),
            "n_trials": self.n_trials if self.n_trials is not None or grid else _DEFAULT_N_TRIALS,
            "pruner": self.pruner if self.pruner is not None else ("none" if grid else "median"),
            "grace_period": grace_period,
            "grid_values": grid_values,
            "space_values": space_values,
        }

    def suggest_config(self, trial) -> dict[str, Any]:
        """The configuration ``trial`` draws from the grid or the space (:func:`fastmlp.search.space.suggest_config`).

        ``trial``: an ``optuna.Trial``, or ``optuna.trial.FixedTrial(params)`` to rebuild a
        finished trial's configuration from its stored parameters.
        """
        return suggest_config(trial, model=self.model, grid=self.grid_values, space=self.space_values,
                              max_steps_cap=self.max_steps_cap)

    @property
    def searched(self) -> Mapping[str, Any]:
        """The grid (``--sampler grid``) or else the space: what the trials are drawn from."""
        return self.grid_values if self.grid_values is not None else self.space_values
