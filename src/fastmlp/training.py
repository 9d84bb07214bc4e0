"""Training the fastmlp MLP: what ``fastmlp.train`` and the search share.

No command line here (that is :mod:`fastmlp.train`, over :mod:`fastmlp.cli`): this
module turns a run's configuration (:class:`fastmlp.run_config.MLPRunConfig`) into a
trained network and its outputs.

- the model/optimizer factory :func:`build_model_and_optimizer`, the seeds
  :func:`derive_seeds`, the update :func:`training_step`;
- :class:`MLPHooks`, fastmlp's parts of the training loop (:mod:`fastmlp.loop`);
- :func:`train`, a whole run (or its continuation from a checkpoint).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from fastmlp import loop
from fastmlp.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from fastmlp.data import dataset_metrics
from fastmlp.run_config import MLPRunConfig
from fastmlp.runlog import RunLog, check_finite
from fastmlp.schedules import LearningRateSchedule

__all__ = [
    "MLPHooks",
    "blas_threads",
    "build_model_and_optimizer",
    "derive_seeds",
    "load_data",
    "train",
    "training_step",
]

# Resuming: settings fixing the shapes of the saved arrays (a change is refused), and
# settings whose change makes the result differ from an uninterrupted run (a warning).
ARCHITECTURE = ("hidden_units", "dtype", "optimizer", "dataset")
TRAJECTORY = ("learning_rate", "batch_size", "momentum", "nesterov", "weight_decay", "lr_schedule",
              "warmup_steps", "preprocessing", "augment", "seed", "validation_size")


# --------------------------------------------------------------------------- seeds and threads
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
def build_model_and_optimizer(config: MLPRunConfig, n_inputs: int, n_classes: int, *, seed: int | None = None):
    """A fresh :class:`fastmlp.MLP` and its optimizer (``fastmlp.optim.make_optimizer``), as ``config`` says.

    Returns
    -------
    model : fastmlp.MLP
        ``n_inputs`` -> ``config.hidden_units`` (ReLU) -> ``n_classes`` (softmax), its
        weights drawn with ``seed``.
    optimizer : fastmlp.optim optimizer
        Built on ``model`` with base rate ``learning_rate``; :func:`training_step`
        passes each update's rate from the schedule.
    """
    from fastmlp import optim
    from fastmlp.mlp import MLP

    model = MLP(n_inputs, list(config.hidden_units), n_classes, dtype=np.dtype(config.dtype), seed=seed,
                init=config.init)
    opt = optim.make_optimizer(config.optimizer, model, config.learning_rate, weight_decay=config.weight_decay,
                               momentum=config.momentum, nesterov=config.nesterov)
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
    def build(cls, config: MLPRunConfig, data: Mapping[str, Any], plan: loop.Plan, *, model_seed: int,
              checkpoint_path: Path) -> "MLPHooks":
        """The MLP, optimizer and schedule of ``config``, over ``data`` (see :func:`train`)."""
        train_set = data["train"]
        if np.dtype(train_set.dtype) != np.dtype(config.dtype):
            raise ValueError(f"data: the pre-loaded images are {train_set.dtype}, but dtype is "
                             f"{config.dtype}; load them with load_dataset(..., dtype=np.{config.dtype})")
        splits = loop.evaluation_splits(data)
        eval_sets = {split: _eval_batches(ds, config.eval_batch_size, plan.eval_limit) for split, ds in splits.items()}
        n_inputs = int(np.prod(train_set.raw_images.shape[1:]))
        n_classes = _n_classes(train_set.labels, *(ds.labels for ds in splits.values()))
        model, optimizer = build_model_and_optimizer(config, n_inputs, n_classes, seed=model_seed)
        # The full max_steps, also in a dry run (fastmlp.loop's convention for every trainer).
        schedule = LearningRateSchedule(config.learning_rate, config.max_steps, config.lr_schedule,
                                        warmup_steps=config.warmup_steps)
        return cls(model, optimizer, schedule, train_set, eval_sets, batch_size=config.batch_size,
                   eval_batch_size=config.eval_batch_size, checkpoint_path=checkpoint_path)

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

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        """Put back the model, optimizer, batch order and NumPy RNG of a :func:`load_checkpoint` result.

        The optimizer takes its buffers and counters from the checkpoint and keeps the
        settings it was built with (the run's configuration, which a resumed run took
        from the checkpoint unless told otherwise); nothing is set on it afterwards.

        Raises
        ------
        ValueError
            Naming the checkpoint, when its state does not fit this run (another
            network's weights, another data set's batch order...).
        """
        try:
            self._restore(checkpoint)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise ValueError(f"cannot resume from {str(checkpoint['path'])!r}: its state does not fit this "
                             f"run: {message}") from None

    def _restore(self, checkpoint: Mapping[str, Any]) -> None:
        self.model.check_network_settings(checkpoint["meta"].get("network", {}))
        self.model.load_state_dict(checkpoint["model"])
        settings = {key: value for key, value in self.optimizer.state_dict().items() if key in MLPRunConfig.names()}
        self.optimizer.load_state_dict({**checkpoint["optim"], **settings})
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
def load_data(config: MLPRunConfig, seed: int) -> dict:
    """The ``config.dataset`` as ``config`` asks: ``train``, ``test`` and (``validation_size``) ``validation``."""
    from fastmlp.data import load_dataset

    return load_dataset(config.dataset, config.data_dir, one_hot=False, validation_size=config.validation_size,
                        preprocessing=config.preprocessing, flatten=True, dtype=np.dtype(config.dtype),
                        augment=config.augment, seed=seed)


def _checkpoint_to_resume(config: MLPRunConfig, checkpoint: Mapping[str, Any] | None,
                          label: Callable[[str], str]) -> Mapping[str, Any] | None:
    """``checkpoint``, else the one ``config.resume`` names (read here); checked against ``config``."""
    if checkpoint is None and config.resume is None:
        return None
    if checkpoint is None:
        checkpoint = load_checkpoint(config.resume)
    # recorded by the command line's names, as every version wrote them
    saved = config.settings_of(checkpoint["meta"].get("flags", {}))
    loop.check_resumable(saved, config.as_dict(), str(checkpoint["path"]), architecture=ARCHITECTURE,
                         trajectory=TRAJECTORY, label=label)
    return checkpoint


def train(config: MLPRunConfig, *, data: Mapping[str, Any] | None = None,
          on_eval: Callable[[int, dict], None] | None = None,
          checkpoint: Mapping[str, Any] | None = None, label: Callable[[str], str] = str) -> dict[str, Any]:
    """Run a whole training (or continue one, ``config.resume``) and write its outputs.

    Parameters
    ----------
    config : MLPRunConfig
        The run's settings (checked when it was made).
    data : dict, optional
        Pre-loaded ``fastmlp.data.load_dataset(..., one_hot=False, flatten=True,
        dtype=config.dtype)`` DataSets: ``"train"``, and the splits to evaluate,
        ``"validation"`` and/or ``"test"`` (each one present and not None is
        evaluated); the data settings (``data_dir``, ``preprocessing``, ``augment``,
        ``validation_size``) are then ignored. The training DataSet's batch
        position is advanced during the run and put back at the end, so reusing
        ``data`` gives every run the same batch order. Default: ``config.dataset``
        loaded as ``config`` says (test set, and validation with ``validation_size``).
    on_eval : callable, optional
        ``on_eval(step, metrics)`` after every evaluation, once its row is in
        ``curves.csv`` and the checkpoint is written; ``metrics`` holds ``step``,
        ``train_loss``, ``train_accuracy``, ``learning_rate`` and ``<split>_loss``,
        ``<split>_accuracy`` for every evaluated split. An exception it raises
        stops the run and propagates.
    checkpoint : dict, optional
        The :func:`fastmlp.checkpoint.load_checkpoint` result to continue from, when
        the caller has read it already (the command line, which merged its settings
        into ``config``); default: the one ``config.resume`` names, if any. Its
        recorded settings are compared with ``config``: a different network, dtype,
        optimizer or data set is refused, other changes are warned about.
    label : callable
        What those messages call a setting, from its name (default: the name; a
        command line: its flag, ``--dnn_hidden_units``).

    Returns
    -------
    dict
        What ``metrics.json`` holds: ``flags`` (the settings, by the command line's
        names), ``fastmlp_version``, the last evaluation's ``test_*``/``validation_*``,
        ``best_test_accuracy`` / ``best_validation_accuracy``, ``steps``,
        ``wall_seconds``, ``out_dir``, ``dry_run``.

    Raises
    ------
    fastmlp.runlog.DivergenceError
        On a NaN or infinite training loss (the last checkpoint is kept).
    TypeError
        When ``config`` is not an :class:`MLPRunConfig`.
    ValueError, FileNotFoundError
        On an incompatible or missing checkpoint, missing data.
    """
    started = time.perf_counter()
    if not isinstance(config, MLPRunConfig):
        raise TypeError(f"config: expected an MLPRunConfig, got {type(config).__name__}")
    checkpoint = _checkpoint_to_resume(config, checkpoint, label)
    out_dir = loop.choose_out_dir(config.out_dir, checkpoint and checkpoint["path"], dry_run=config.dry_run)
    plan = loop.Plan.from_flags(config.max_steps, config.eval_freq, dry_run=config.dry_run)
    model_seed, data_seed = derive_seeds(config.seed)
    with blas_threads(config.threads):
        data = load_data(config, data_seed) if data is None else data
        hooks = MLPHooks.build(config, data, plan, model_seed=model_seed, checkpoint_path=out_dir / CHECKPOINT_NAME)
        flags = {**config.as_flags(), "max_steps": plan.max_steps, "eval_freq": plan.eval_freq,
                 "out_dir": str(out_dir)}
        progress = loop.Progress(RunLog(out_dir, flags, plot=config.plot), started=started, show=not config.quiet)
        with hooks.borrowing_train_set():
            if checkpoint is not None:
                meta = checkpoint["meta"]
                loop.resume(progress, step=int(meta["step"]), rows=meta.get("rows", []),
                            wall_seconds=meta.get("wall_seconds", 0.0), max_steps=plan.max_steps)
                hooks.restore(checkpoint)
            loop.run(hooks, plan, progress, on_eval=on_eval)
        _save_model_file(hooks.model, data["train"], out_dir)
        return loop.finish(progress, out_dir=str(out_dir), dry_run=config.dry_run,
                           **dataset_metrics(config.dataset, data["train"]))


def _save_model_file(model, train_set, out_dir: Path) -> None:
    """The run's ``model.safetensors`` (:mod:`fastmlp.modelfile`), with the training set's class names."""
    from fastmlp.modelfile import MODEL_FILE_NAME, save_trained

    save_trained(model, train_set, out_dir / MODEL_FILE_NAME)
