"""Training the fastmlp MLP: what ``fastmlp.train`` and the search share.

No command line here (that is :mod:`fastmlp.train`, over :mod:`fastmlp.cli`): this
module turns a run's flags into a trained network and its outputs.

- :data:`DEFAULTS`, the flags of a run (the course's values) and :func:`checked_flags`;
- the model/optimizer factory :func:`build_model_and_optimizer`, the seeds
  :func:`derive_seeds`, the update :func:`training_step`;
- :class:`MLPHooks`, fastmlp's parts of the training loop (:mod:`fastmlp.loop`);
- :func:`train`, a whole run (or its continuation from a checkpoint).
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from fastmlp import loop
from fastmlp.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from fastmlp.data import dataset_metrics
from fastmlp.hyperparams import check_all, check_sizes
from fastmlp.optim import check_optimizer
from fastmlp.runlog import RunLog, check_finite
from fastmlp.schedules import LearningRateSchedule

__all__ = [
    "DEFAULTS",
    "MLPHooks",
    "blas_threads",
    "build_model_and_optimizer",
    "checked_flags",
    "derive_seeds",
    "load_data",
    "train",
    "training_step",
]

#: The flags of a run, with the course's defaults: one hidden layer of 100 units,
#: weights from N(0, 1e-4^2), plain SGD at 2e-3, batches of 200, 1500 steps, an
#: evaluation every 100. ``python -m fastmlp.train`` shows them; ``train()`` fills a
#: Namespace built by hand with them. Evaluations go 2,500 images at a time, faster
#: than 1,000 for a little more memory (docs/notes/benchmarks-diary-2026-12-02.md).
DEFAULTS: dict[str, Any] = {
    "dnn_hidden_units": [100], "learning_rate": 2e-3, "max_steps": 1500, "batch_size": 200,
    "eval_freq": 100, "data_dir": None, "dataset": "cifar10",
    "optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 0.0, "init": "normal",
    "lr_schedule": "constant", "warmup_steps": 0,
    "preprocessing": "mean_image", "augment": False, "validation_size": 0, "dtype": "float32",
    "seed": 42, "out_dir": None, "resume": None, "overwrite": False, "quiet": False, "dry_run": False, "plot": False,
    "eval_batch_size": 2500, "threads": None,
}
# A flag's entry in the constraint table when its name differs (the course's flag name).
_TABLE_NAME = {"dnn_hidden_units": "hidden_units"}

# --resume: flags fixing the shapes of the saved arrays (a change is refused), and
# flags whose change makes the result differ from an uninterrupted run (a warning).
ARCHITECTURE_FLAGS = ("dnn_hidden_units", "dtype", "optimizer", "dataset")
TRAJECTORY_FLAGS = ("learning_rate", "batch_size", "momentum", "nesterov", "weight_decay", "lr_schedule",
                    "warmup_steps", "preprocessing", "augment", "seed", "validation_size")


# --------------------------------------------------------------------------- flags and seeds
def checked_flags(args: argparse.Namespace | Mapping[str, Any]) -> argparse.Namespace:
    """A checked copy of ``args`` with every flag of :data:`DEFAULTS` (missing ones get the default).

    ``train`` may be handed a Namespace built by hand (the search does), so the
    command line's checks (the table :data:`fastmlp.hyperparams.CONSTRAINTS`) are
    applied again here.

    Raises
    ------
    TypeError, ValueError
        Naming the flag (``--batch_size: expected an integer > 0, got -1``); ValueError
        for an unknown flag.
    """
    given = dict(args) if isinstance(args, Mapping) else dict(vars(args))
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown flag(s) {unknown}; see `python -m fastmlp.train --help`")
    values = check_all({**DEFAULTS, **given}, _TABLE_NAME, label=lambda flag: f"--{flag}")
    check_sizes(values, _TABLE_NAME, label=lambda flag: f"--{flag}")
    check_optimizer(values["optimizer"], values["momentum"], values["nesterov"], label=lambda flag: f"--{flag}")
    for flag in ("quiet", "dry_run", "plot", "overwrite"):
        values[flag] = bool(values[flag])
    for flag in ("data_dir", "out_dir", "resume"):
        if values[flag] is not None:
            values[flag] = str(values[flag])
    return argparse.Namespace(**values)


def derive_seeds(seed: int) -> tuple[int, int]:
    """Independent seeds for the weights and for the data order from one ``--seed``."""
    model_seed, data_seed = np.random.SeedSequence(seed).generate_state(2)
    return int(model_seed), int(data_seed)


@contextlib.contextmanager
def blas_threads(threads: int | None) -> Iterator[None]:
    """Limit every BLAS/OpenMP pool of the process, fastmlp's kernels included, for the block."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        yield


# --------------------------------------------------------------------------- model, optimizer, step
def build_model_and_optimizer(n_inputs: int, hidden_units: list[int], n_classes: int, *, dtype=np.float32,
                              init: str = "normal", seed: int | None = None, optimizer: str = "sgd",
                              learning_rate: float = 2e-3, momentum: float = 0.9, weight_decay: float = 0.0,
                              nesterov: bool = False):
    """A fresh :class:`fastmlp.MLP` and its optimizer (``fastmlp.optim.make_optimizer``).

    Returns
    -------
    model : fastmlp.MLP
        ``n_inputs`` -> ``hidden_units`` (ReLU) -> ``n_classes`` (softmax).
    optimizer : fastmlp.optim optimizer
        Built on ``model`` with base rate ``learning_rate``; :func:`training_step`
        passes each update's rate from the schedule.
    """
    from fastmlp import optim
    from fastmlp.mlp import MLP

    model = MLP(n_inputs, list(hidden_units), n_classes, dtype=dtype, seed=seed, init=init)
    opt = optim.make_optimizer(optimizer, model, learning_rate, weight_decay=weight_decay, momentum=momentum,
                               nesterov=nesterov)
    return model, opt


def training_step(model, optimizer, x: np.ndarray, y: np.ndarray, step: int, lr: float):
    """Make update number ``step`` (1-based) on the batch (x, y) at rate ``lr``; return its ``StepResult``.

    ``model.train_step`` (loss and right answers before the update) updates the
    parameters of ``model`` and the optimizer's state in place.
    ``x`` is (batch, n_inputs), or a :class:`fastmlp.images.ImageBatch` of uint8 rows,
    ``y`` int class indices (batch,).

    Raises
    ------
    fastmlp.runlog.DivergenceError
        If the loss is NaN or infinite (the core then leaves the parameters as
        they were; the caller keeps its last good checkpoint).
    """
    result = model.train_step(x, y, optimizer, lr=lr)
    check_finite(result.loss, step)
    return result


# --------------------------------------------------------------------------- the loop's hooks
class MLPHooks:
    """fastmlp's parts of the training loop (:class:`fastmlp.loop.Hooks`).

    Parameters
    ----------
    model, optimizer, schedule
        From :func:`build_model_and_optimizer`; ``schedule(step)`` sets each update's rate.
    train_set : fastmlp.data.DataSet
        Flattened training images (n, n_inputs) and int labels; batches come from it.
    eval_sets : dict
        ``{split: batches}``: ``batches()`` yields that split's (x (b, n_inputs), y (b,))
        evaluation batches, converted one at a time (uint8 pixels stay uint8 in memory).
    batch_size, eval_batch_size : int
        Examples per update; per evaluation chunk (memory only).
    checkpoint_path : path
        Where :meth:`save_checkpoint` writes.
    """

    def __init__(self, model, optimizer, schedule, train_set, eval_sets: Mapping[str, tuple], *,
                 batch_size: int, eval_batch_size: int, checkpoint_path: Path):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.train_set = train_set
        self.eval_sets = dict(eval_sets)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.checkpoint_path = Path(checkpoint_path)
        self._last_batch, self._last_correct, self._last_lr = 0, 0, float("nan")
        n_inputs = model.n_inputs
        # every step's batch lands here (when the model does not convert uint8 rows itself)
        self._batch = None if train_set.serves_image_batches else np.empty((batch_size, n_inputs), dtype=model.dtype)

    @classmethod
    def build(cls, args: argparse.Namespace, data: Mapping[str, Any], plan: loop.Plan, *, model_seed: int,
              checkpoint_path: Path) -> "MLPHooks":
        """The MLP, optimizer and schedule of checked flags ``args``, over ``data`` (see :func:`train`)."""
        train_set = data["train"]
        if np.dtype(train_set.dtype) != np.dtype(args.dtype):
            raise ValueError(f"data: the pre-loaded images are {train_set.dtype}, but --dtype is "
                             f"{args.dtype}; load them with load_dataset(..., dtype=np.{args.dtype})")
        splits = loop.evaluation_splits(data)
        eval_sets = {split: _eval_batches(ds, args.eval_batch_size, plan.eval_limit) for split, ds in splits.items()}
        n_inputs = int(np.prod(train_set.raw_images.shape[1:]))
        n_classes = _n_classes(train_set.labels, *(ds.labels for ds in splits.values()))
        model, optimizer = build_model_and_optimizer(
            n_inputs, args.dnn_hidden_units, n_classes, dtype=np.dtype(args.dtype), init=args.init,
            seed=model_seed, optimizer=args.optimizer, learning_rate=args.learning_rate,
            momentum=args.momentum, weight_decay=args.weight_decay, nesterov=args.nesterov)
        # The full --max_steps, also in a --dry_run (fastmlp.loop's convention for every trainer).
        schedule = LearningRateSchedule(args.learning_rate, args.max_steps, args.lr_schedule,
                                        warmup_steps=args.warmup_steps)
        return cls(model, optimizer, schedule, train_set, eval_sets, batch_size=args.batch_size,
                   eval_batch_size=args.eval_batch_size, checkpoint_path=checkpoint_path)

    def step(self, step: int) -> float:
        if self.train_set.serves_image_batches:  # the first layer converts the uint8 rows itself
            x, y = self.train_set.next_image_batch(self.batch_size)
        else:
            x, y = self.train_set.next_batch(self.batch_size, out=self._batch)
            x = x.reshape(len(x), -1)
        self._last_batch, self._last_lr = len(y), self.schedule(step)
        result = training_step(self.model, self.optimizer, x, y, step, self._last_lr)
        self._last_correct = result.correct
        return result.loss

    def batch_metrics(self) -> dict[str, float]:
        # The core counted the batch's right answers before the update, as its loss.
        return {"train_accuracy": self._last_correct / self._last_batch, "learning_rate": self._last_lr}

    def evaluate(self) -> dict[str, float]:
        metrics = {}
        for split, batches in self.eval_sets.items():
            metrics[f"{split}_loss"], metrics[f"{split}_accuracy"] = self.model.evaluate_batches(batches())
        return metrics

    def parameters_finite(self) -> bool:
        return all(np.isfinite(module.params[key]).all() for _, module, key in self.model.named_parameters())

    def save_checkpoint(self, step: int, record: Mapping[str, Any]) -> None:
        save_checkpoint(self.checkpoint_path, model=self.model, optimizer=self.optimizer, step=step,
                        data_state=self.train_set.get_state(), meta=record)

    def restore(self, checkpoint: Mapping[str, Any], args: argparse.Namespace) -> None:
        """Put back the model, optimizer, batch order and NumPy RNG of a :func:`load_checkpoint` result.

        Raises
        ------
        ValueError
            Naming the checkpoint, when its state does not fit this run (another
            network's weights, another data set's batch order...).
        """
        try:
            self._restore(checkpoint, args)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise ValueError(f"cannot resume from {str(checkpoint['path'])!r}: its state does not fit this "
                             f"run: {message}") from None

    def _restore(self, checkpoint: Mapping[str, Any], args: argparse.Namespace) -> None:
        self.model.check_network_settings(checkpoint["meta"].get("network", {}))
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optim"])
        # The checkpoint carries the old hyper-parameters: this run's flags win
        # (the learning rate is set from the schedule at every step).
        self.optimizer.weight_decay = args.weight_decay
        if args.optimizer == "momentum":
            self.optimizer.momentum = args.momentum
            self.optimizer.nesterov = args.nesterov
        self.train_set.set_state(checkpoint["data_state"])
        np.random.set_state(checkpoint["numpy_rng"])

    @contextlib.contextmanager
    def borrowing_train_set(self) -> Iterator[None]:
        """Hand the training DataSet back with the batch position it came with (a caller's data is reused)."""
        state = self.train_set.get_state()
        try:
            yield
        finally:
            self.train_set.set_state(state)


def _eval_batches(dataset, batch_size: int, limit: int | None) -> Callable[[], Iterator]:
    """A split's evaluation batches, made afresh at every evaluation (uint8 rows when it stores pixels)."""
    if dataset.preprocessing is not None:  # the first layer converts each chunk inside its GEMM
        return lambda: dataset.image_batches(batch_size, limit=limit)
    return lambda: dataset.batches(batch_size, flatten=True, limit=limit)


def _n_classes(*label_arrays: np.ndarray) -> int:
    n = 0
    for y in label_arrays:
        n = max(n, y.shape[1] if y.ndim == 2 else int(y.max()) + 1)
    return n


# --------------------------------------------------------------------------- a whole run
def load_data(args: argparse.Namespace, seed: int) -> dict:
    """The ``--dataset`` as checked flags ``args`` ask: ``train``, ``test`` and (``--validation_size``) ``validation``."""
    from fastmlp.data import load_dataset

    return load_dataset(args.dataset, args.data_dir, one_hot=False, validation_size=args.validation_size,
                        preprocessing=args.preprocessing, flatten=True, dtype=np.dtype(args.dtype),
                        augment=args.augment, seed=seed)


def _checkpoint_to_resume(args: argparse.Namespace) -> dict | None:
    if args.resume is None:
        return None
    checkpoint = load_checkpoint(args.resume)
    loop.check_resumable(checkpoint["meta"].get("flags", {}), vars(args), str(checkpoint["path"]),
                         architecture=ARCHITECTURE_FLAGS, trajectory=TRAJECTORY_FLAGS)
    return checkpoint


def train(args: argparse.Namespace | Mapping[str, Any], *, data: Mapping[str, Any] | None = None,
          on_eval: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Run a whole training (or continue one with ``args.resume``) and write its outputs.

    Parameters
    ----------
    args : argparse.Namespace or mapping
        Flags (:data:`DEFAULTS`), e.g. ``fastmlp.train.build_parser().parse_args()``;
        missing ones take their defaults, every value is checked again.
    data : dict, optional
        Pre-loaded ``fastmlp.data.load_dataset(..., one_hot=False, flatten=True,
        dtype=<--dtype>)`` DataSets: ``"train"``, and the splits to evaluate,
        ``"validation"`` and/or ``"test"`` (each one present and not None is
        evaluated); the data flags (``--data_dir``, ``--preprocessing``,
        ``--augment``, ``--validation_size``) are then ignored. The training
        DataSet's batch position is advanced during the run and put back at the
        end, so reusing ``data`` gives every run the same batch order. Default:
        the ``--dataset`` loaded as the flags say (test set, and validation with
        ``--validation_size``).
    on_eval : callable, optional
        ``on_eval(step, metrics)`` after every evaluation, once its row is in
        ``curves.csv`` and the checkpoint is written; ``metrics`` holds ``step``,
        ``train_loss``, ``train_accuracy``, ``learning_rate`` and ``<split>_loss``,
        ``<split>_accuracy`` for every evaluated split. An exception it raises
        stops the run and propagates.

    Returns
    -------
    dict
        What ``metrics.json`` holds: ``flags``, ``fastmlp_version``, the last
        evaluation's ``test_*``/``validation_*``, ``best_test_accuracy`` /
        ``best_validation_accuracy``, ``steps``, ``wall_seconds``, ``out_dir``, ``dry_run``.

    Raises
    ------
    fastmlp.runlog.DivergenceError
        On a NaN or infinite training loss (the last checkpoint is kept).
    TypeError, ValueError, FileNotFoundError
        On bad flags, an incompatible or missing checkpoint, missing data.
    """
    started = time.perf_counter()
    args = checked_flags(args)
    checkpoint = _checkpoint_to_resume(args)
    out_dir = loop.choose_out_dir(args.out_dir, checkpoint and checkpoint["path"], dry_run=args.dry_run)
    plan = loop.Plan.from_flags(args.max_steps, args.eval_freq, dry_run=args.dry_run)
    model_seed, data_seed = derive_seeds(args.seed)
    with blas_threads(args.threads):
        data = load_data(args, data_seed) if data is None else data
        hooks = MLPHooks.build(args, data, plan, model_seed=model_seed, checkpoint_path=out_dir / CHECKPOINT_NAME)
        flags = {**vars(args), "max_steps": plan.max_steps, "eval_freq": plan.eval_freq, "out_dir": str(out_dir)}
        progress = loop.Progress(RunLog(out_dir, flags, plot=args.plot), started=started, show=not args.quiet)
        with hooks.borrowing_train_set():
            if checkpoint is not None:
                meta = checkpoint["meta"]
                loop.resume(progress, step=int(meta["step"]), rows=meta.get("rows", []),
                            wall_seconds=meta.get("wall_seconds", 0.0), max_steps=plan.max_steps)
                hooks.restore(checkpoint, args)
            loop.run(hooks, plan, progress, on_eval=on_eval)
        _save_model_file(hooks.model, data["train"], out_dir)
        return loop.finish(progress, out_dir=str(out_dir), dry_run=args.dry_run,
                           **dataset_metrics(args.dataset, data["train"]))


def _save_model_file(model, train_set, out_dir: Path) -> None:
    """The run's ``model.safetensors`` (:mod:`fastmlp.modelfile`), with the training set's class names."""
    from fastmlp.modelfile import MODEL_FILE_NAME, save_trained

    save_trained(model, train_set, out_dir / MODEL_FILE_NAME)
