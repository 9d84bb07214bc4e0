"""Train the fastmlp MLP on CIFAR-10: ``python -m fastmlp.train``.

The defaults are the course's: one hidden layer of 100 units, weights from
N(0, 1e-4^2), plain SGD with learning rate 2e-3, batches of 200, 1500 steps,
an evaluation on the whole test set every 100 steps. With them the network
reaches about 0.45-0.46 test accuracy. Every run writes, into ``--out_dir``
(default ``runs/<timestamp>``): ``metrics.json`` (flags, final and best
accuracy, steps, wall time, library version), ``curves.csv``, ``curves.png``
and ``checkpoint.npz`` (rewritten at every evaluation; ``--resume`` continues
from it to exactly the result of an uninterrupted run).

Examples
--------
The course run, then a logistic regression, then a quick check of the set-up::

    python -m fastmlp.train --data_dir ../shared/data
    python -m fastmlp.train --dnn_hidden_units "" --learning_rate 1e-3
    python -m fastmlp.train --dry_run

Continue an interrupted run (flags not given again are taken from the
checkpoint; ``--max_steps`` may be raised to train longer)::

    python -m fastmlp.train --resume runs/20250101-120000

Recipe: >= 0.55 test accuracy within 5000 steps
-----------------------------------------------
Wider and deeper, He (kaiming) initialisation, Nesterov momentum with a short
warm-up and a cosine decay to zero, weight decay, per-channel standardisation
and random crops/flips::

    python -m fastmlp.train --dnn_hidden_units 1024,512 --init kaiming \\
        --optimizer momentum --momentum 0.9 --nesterov --learning_rate 0.05 \\
        --weight_decay 5e-4 --lr_schedule cosine --warmup_steps 200 \\
        --preprocessing standardize --augment --batch_size 256 \\
        --max_steps 5000 --eval_freq 500 --seed 0

Measured on ../shared/data (BENCHMARKS.md): 0.585 test accuracy after 5000
steps (best 0.587), 204 s on the 2-core machine; the same flags on the
PyTorch MLP (``python -m torch_models.train_mlp``) gave 0.591.

Python API (the trainer contract shared with ``torch_models``)
---------------------------------------------------------------
``build_parser()``, ``main(argv=None) -> int`` and
``train(args, *, data=None, on_eval=None) -> dict``: ``data`` is a pre-loaded
``fastmlp.data.get_cifar10(one_hot=False, flatten=True, ...)`` dict (reused
across the trials of a search), ``on_eval(step, metrics)`` is called after
every evaluation and may raise (e.g. ``optuna.TrialPruned``) to stop the run.
The pieces shared with :class:`fastmlp.MLPClassifier` are
:func:`parse_hidden_units`, :func:`build_model_and_optimizer` and
:func:`training_step`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from fastmlp import runlog
from fastmlp.atomic import atomic_savez
from fastmlp.data import PREPROCESSINGS
from fastmlp.hyperparams import FloatDType, check, flag_type, parse_hidden_units
from fastmlp.modules import INITS
from fastmlp.optim import OPTIMIZERS
from fastmlp.schedules import SCHEDULES, LearningRateSchedule

__all__ = [
    "CHECKPOINT_NAME",
    "build_model_and_optimizer",
    "build_parser",
    "derive_seeds",
    "explicit_flags",
    "load_checkpoint",
    "main",
    "parse_hidden_units",
    "resolve_checkpoint_path",
    "save_checkpoint",
    "train",
    "training_step",
]

DTYPES = {"float32": np.float32, "float64": np.float64}

CHECKPOINT_NAME = "checkpoint.npz"
CHECKPOINT_FORMAT = 1

# --dry_run: enough steps to exercise every code path (an evaluation in the
# middle and one at the end), evaluated on a slice of each split.
DRY_RUN_STEPS = 4
DRY_RUN_EVAL_FREQ = 2
DRY_RUN_EVAL_EXAMPLES = 500

# Flags that fix the shapes of the saved arrays: a checkpoint cannot be loaded
# under different values.
_ARCHITECTURE_FLAGS = ("dnn_hidden_units", "dtype", "optimizer")
# Flags whose change makes a resumed run differ from an uninterrupted one.
_TRAJECTORY_FLAGS = (
    "learning_rate", "batch_size", "momentum", "nesterov", "weight_decay", "lr_schedule", "warmup_steps",
    "preprocessing", "augment", "seed", "validation_size",
)
# Flags that describe this invocation rather than the run: never taken from a checkpoint.
_INVOCATION_FLAGS = ("resume", "out_dir", "dry_run", "quiet", "threads")


# --------------------------------------------------------------------------- flags
# A flag's entry in the constraint table (fastmlp.hyperparams) when its name differs.
_TABLE_NAME = {"dnn_hidden_units": "hidden_units"}
# Flags the table checks: those whose (table) name has an entry.
_CHECKED = ("dnn_hidden_units", "learning_rate", "max_steps", "batch_size", "eval_freq", "momentum", "nesterov",
            "weight_decay", "warmup_steps", "validation_size", "eval_batch_size", "threads", "seed", "augment",
            "optimizer", "init", "lr_schedule", "preprocessing", "dtype")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m fastmlp.train`` (defaults shown in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m fastmlp.train",
        description="Train the fastmlp MLP on CIFAR-10 (course defaults; see the module docstring "
                    "for a recipe meant to reach >= 0.55 test accuracy).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def typed(name: str) -> Callable[[str], Any]:
        return flag_type(_TABLE_NAME.get(name, name))

    course = parser.add_argument_group("course flags")
    course.add_argument("--dnn_hidden_units", type=typed("dnn_hidden_units"), default="100",
                        help="comma-separated hidden layer sizes; '' for logistic regression")
    course.add_argument("--learning_rate", type=typed("learning_rate"), default=2e-3, help="peak learning rate")
    course.add_argument("--max_steps", type=typed("max_steps"), default=1500, help="number of parameter updates")
    course.add_argument("--batch_size", type=typed("batch_size"), default=200, help="training batch size")
    course.add_argument("--eval_freq", type=typed("eval_freq"), default=100,
                        help="evaluate (and checkpoint) every this many steps, and after the last one")
    course.add_argument("--data_dir", default=None,
                        help="folder holding cifar-10-python.tar.gz or cifar-10-batches-py/ "
                             "(default: $FASTMLP_DATA, else ~/.cache/fastmlp)")

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--optimizer", type=typed("optimizer"), choices=OPTIMIZERS, default="sgd",
                     help="sgd: plain SGD (the course); momentum: SGD with --momentum; adam")
    opt.add_argument("--momentum", type=typed("momentum"), default=0.9, help="momentum of --optimizer momentum")
    opt.add_argument("--nesterov", action="store_true", help="Nesterov momentum (with --optimizer momentum)")
    opt.add_argument("--weight_decay", type=typed("weight_decay"), default=0.0, help="L2 weight decay")
    opt.add_argument("--init", type=typed("init"), choices=INITS, default="normal",
                     help="weight init; normal = the course's N(0, 1e-4^2)")
    opt.add_argument("--lr_schedule", type=typed("lr_schedule"), choices=SCHEDULES, default="constant",
                     help="cosine: decay to 0 over --max_steps; step: x0.1 at 50%% and 75%% of the steps; "
                          "onecycle: PyTorch's OneCycleLR (up over 30%% of the steps, or --warmup_steps, then down)")
    opt.add_argument("--warmup_steps", type=typed("warmup_steps"), default=0,
                     help="linear learning-rate warm-up over this many steps")

    data = parser.add_argument_group("data")
    data.add_argument("--preprocessing", type=typed("preprocessing"), choices=PREPROCESSINGS, default="mean_image",
                      help="mean_image: subtract the mean training image (course); "
                           "standardize: per-channel mean/std")
    data.add_argument("--augment", action="store_true", help="random crops (pad 4) and horizontal flips")
    data.add_argument("--validation_size", type=typed("validation_size"), default=0,
                      help="training images held out (from the end) as a validation set")
    data.add_argument("--dtype", type=typed("dtype"), choices=FloatDType.NAMES, default="float32",
                      help="floating-point precision")

    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=typed("seed"), default=42, help="seed of the weights and of the batch order")
    run.add_argument("--out_dir", default=None,
                     help="output folder (default: runs/<timestamp>, or the checkpoint's folder with --resume)")
    run.add_argument("--resume", default=None, metavar="PATH",
                     help="continue from a checkpoint.npz or a run folder; flags not given are taken from it")
    run.add_argument("--quiet", action="store_true", help="no progress bar or evaluation lines")
    run.add_argument("--dry_run", action="store_true",
                     help=f"{DRY_RUN_STEPS} steps and evaluations on {DRY_RUN_EVAL_EXAMPLES} examples, "
                          "to check the set-up (outputs go to runs/dryrun-<timestamp>)")
    run.add_argument("--eval_batch_size", type=typed("eval_batch_size"), default=1000,
                     help="batch size of the evaluations (memory only; results do not depend on it)")
    run.add_argument("--threads", type=typed("threads"), default=None,
                     help="BLAS threads (through threadpoolctl; default: BLAS's own choice)")
    return parser


def _defaults() -> dict[str, Any]:
    return vars(build_parser().parse_args([]))


def normalize_args(args: argparse.Namespace | Mapping[str, Any]) -> argparse.Namespace:
    """A checked copy of ``args`` with every flag present (missing ones get the defaults).

    ``train`` may be handed a Namespace built by hand, so the argparse checks (the
    constraint table, :mod:`fastmlp.hyperparams`) are applied again here.

    Raises
    ------
    TypeError, ValueError
        Naming the flag: TypeError for a value of the wrong type, ValueError for one
        out of range or not among the choices (and for an unknown flag).
    """
    given = dict(args) if isinstance(args, Mapping) else dict(vars(args))
    unknown = sorted(set(given) - set(_defaults()))
    if unknown:
        raise ValueError(f"unknown flag(s) {unknown}; see `python -m fastmlp.train --help`")
    values = {**_defaults(), **given}
    for name in _CHECKED:
        values[name] = check(_TABLE_NAME.get(name, name), values[name], label=f"--{name}")
    for name in ("quiet", "dry_run"):
        values[name] = bool(values[name])
    for name in ("data_dir", "out_dir", "resume"):
        if values[name] is not None:
            values[name] = str(values[name])
    return argparse.Namespace(**values)


# ----------------------------------------------------- pieces shared with the estimator
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
        Holds a reference to ``model``; ``optimizer.lr`` is reset every step
        by :func:`training_step`.
    """
    from fastmlp import optim
    from fastmlp.mlp import MLP

    model = MLP(n_inputs, list(hidden_units), n_classes, dtype=dtype, seed=seed, init=init)
    opt = optim.make_optimizer(optimizer, model, learning_rate, weight_decay=weight_decay, momentum=momentum,
                               nesterov=nesterov)
    return model, opt


def training_step(model, optimizer, x: np.ndarray, y: np.ndarray, step: int,
                  schedule: LearningRateSchedule) -> float:
    """Make update number ``step`` (1-based) on the batch (x, y); return its loss before the update.

    Sets ``optimizer.lr`` from ``schedule``, then ``model.train_step``:
    updates the parameters of ``model`` and the optimizer's state in place.
    ``x`` is (batch, n_inputs), ``y`` int class indices (batch,).

    Raises
    ------
    fastmlp.runlog.DivergenceError
        If the loss is NaN or infinite (the core then leaves the parameters as
        they were; the caller keeps its last good checkpoint).
    """
    optimizer.lr = schedule(step)
    return runlog.check_finite(model.train_step(x, y, optimizer), step)


# ------------------------------------------------------------------ checkpoints
def resolve_checkpoint_path(path: str | Path) -> Path:
    """``path`` itself if it is a file, ``path/checkpoint.npz`` if it is a run folder (FileNotFoundError if neither)."""
    return runlog.resolve_checkpoint(path, CHECKPOINT_NAME)


def _split_state(state: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    """Move the arrays of a nested state dict into ``arrays`` (keys ``prefix/a/b``); return the JSON-able rest."""
    if isinstance(state, Mapping):
        return {str(k): _split_state(v, f"{prefix}/{k}", arrays) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        arrays[prefix] = state
        return {"__array__": prefix}
    if isinstance(state, np.generic):
        return state.item()
    if isinstance(state, (list, tuple)):
        return [_split_state(v, f"{prefix}/{i}", arrays) for i, v in enumerate(state)]
    return state


def _join_state(state: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """Inverse of :func:`_split_state`."""
    if isinstance(state, dict):
        if set(state) == {"__array__"}:
            return arrays[state["__array__"]]
        return {k: _join_state(v, arrays) for k, v in state.items()}
    if isinstance(state, list):
        return [_join_state(v, arrays) for v in state]
    return state


def _numpy_scalar_to_python(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint's JSON meta")


def save_checkpoint(path: str | Path, *, model, optimizer, step: int, data_state: Mapping[str, Any],
                    meta: Mapping[str, Any]) -> None:
    """Write the full training state to ``path`` (``.npz``) atomically.

    Keys: ``model/<name>`` (``model.state_dict()``), ``optim/<name>``
    (``optimizer.state_dict()``), ``data/...`` (arrays of the training
    DataSet's ``get_state()``), ``rng/keys`` (NumPy's global MT19937 state)
    and ``meta``: a 0-d string array holding JSON (``step``, ``meta`` and the
    non-array parts of the data and RNG states).
    """
    arrays: dict[str, np.ndarray] = {}
    arrays.update({f"model/{k}": v for k, v in model.state_dict().items()})
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    data_json = _split_state(dict(data_state), "data", arrays)
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    arrays["rng/keys"] = keys
    full_meta = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "data_state": data_json,
        "numpy_rng": {"name": name, "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached_gaussian)},
        **meta,
    }
    arrays["meta"] = np.array(json.dumps(full_meta, default=_numpy_scalar_to_python))
    atomic_savez(path, **arrays)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    dict
        ``meta`` (dict: ``step``, ``flags``, ``rows``, ...), ``model`` and
        ``optim`` (dicts of arrays, for ``load_state_dict``), ``data_state``
        (for ``DataSet.set_state``), ``numpy_rng`` (for ``np.random.set_state``).

    Raises
    ------
    FileNotFoundError, ValueError
        If ``path`` is missing or is not a fastmlp checkpoint.
    """
    path = resolve_checkpoint_path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{str(path)!r} is not a readable .npz checkpoint: {exc}") from None
    if "meta" not in arrays:
        raise ValueError(f"{str(path)!r} is not a fastmlp checkpoint (no 'meta' entry)")
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r}: checkpoint format {meta.get('format')!r} is not {CHECKPOINT_FORMAT}")
    rng = meta.pop("numpy_rng")
    return {
        "path": path,
        "meta": meta,
        "model": {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")},
        "optim": {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")},
        "data_state": _join_state(meta.pop("data_state"), arrays),
        "numpy_rng": (rng["name"], arrays["rng/keys"], rng["pos"], rng["has_gauss"], rng["cached_gaussian"]),
    }


def _check_resumable(args: argparse.Namespace, saved_flags: Mapping[str, Any], path: Path) -> None:
    for name in _ARCHITECTURE_FLAGS:
        if name in saved_flags and saved_flags[name] != getattr(args, name):
            raise ValueError(
                f"cannot resume from {str(path)!r}: it was trained with --{name} {saved_flags[name]!r}, "
                f"this run asks for {getattr(args, name)!r}"
            )
    trajectory = _TRAJECTORY_FLAGS
    if args.lr_schedule != "constant":  # the decay is spread over --max_steps
        trajectory += ("max_steps",)
    changed = [f"--{n} {saved_flags[n]!r} -> {getattr(args, n)!r}" for n in trajectory
               if n in saved_flags and saved_flags[n] != getattr(args, n)]
    if changed:
        warnings.warn(
            "resuming with changed flags (" + ", ".join(changed) + "): the result will differ from an "
            "uninterrupted run", stacklevel=3,
        )


# -------------------------------------------------------------------- training
@contextlib.contextmanager
def _blas_threads(threads: int | None):
    """Limit BLAS/OpenMP threads for the duration of the block (needs threadpoolctl)."""
    if threads is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        warnings.warn("--threads needs the threadpoolctl package; set OMP_NUM_THREADS before starting "
                      "Python instead. Running with BLAS's default thread count.", stacklevel=3)
        yield
        return
    with threadpool_limits(limits=threads):
        yield


def derive_seeds(seed: int) -> tuple[int, int]:
    """Independent seeds for the weights and for the data order from one ``--seed``."""
    model_seed, data_seed = np.random.SeedSequence(seed).generate_state(2)
    return int(model_seed), int(data_seed)


def _as_2d(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def _eval_arrays(dataset, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    x, y = dataset.as_arrays(flatten=True)
    x = _as_2d(x)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


def _n_classes(*label_arrays: np.ndarray) -> int:
    n = 0
    for y in label_arrays:
        n = max(n, y.shape[1] if y.ndim == 2 else int(y.max()) + 1)
    return n


def train(args: argparse.Namespace, *, data: Mapping[str, Any] | None = None,
          on_eval: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Run a whole training (or continue one with ``args.resume``) and write its outputs.

    Parameters
    ----------
    args : argparse.Namespace
        Flags as from ``build_parser().parse_args()``; missing ones take their
        defaults, every value is checked again.
    data : dict, optional
        A pre-loaded ``fastmlp.data.get_cifar10(..., one_hot=False,
        flatten=True, dtype=<--dtype>)`` dict (``"train"``, ``"validation"``,
        ``"test"``); the data flags (``--data_dir``, ``--preprocessing``,
        ``--augment``, ``--validation_size``) are then ignored. The training
        DataSet's batch position is advanced during the run and put back at
        the end, so reusing ``data`` gives every run the same batch order.
    on_eval : callable, optional
        ``on_eval(step, metrics)`` after every evaluation, once its row is in
        ``curves.csv`` and the checkpoint is written; ``metrics`` holds
        ``step``, ``train_loss``, ``train_accuracy``, ``test_loss``,
        ``test_accuracy``, ``validation_*`` (with a validation set) and
        ``learning_rate``. An exception it raises stops the run and propagates.

    Returns
    -------
    dict
        What ``metrics.json`` holds: ``flags``, ``fastmlp_version``,
        ``test_accuracy``, ``test_loss``, ``best_test_accuracy``,
        ``validation_*`` with a validation set, ``steps``, ``wall_seconds``,
        ``out_dir``.

    Raises
    ------
    fastmlp.runlog.DivergenceError
        On a NaN or infinite training loss (the last checkpoint is kept).
    TypeError, ValueError, FileNotFoundError
        On bad flags, an incompatible or missing checkpoint, missing data.
    """
    start_time = time.perf_counter()
    args = normalize_args(args)
    dtype = DTYPES[args.dtype]

    checkpoint = None
    if args.resume is not None:
        checkpoint = load_checkpoint(args.resume)
        _check_resumable(args, checkpoint["meta"].get("flags", {}), checkpoint["path"])
    if args.out_dir is not None:
        out_dir = Path(args.out_dir)
    elif checkpoint is not None:
        out_dir = checkpoint["path"].parent
    else:
        out_dir = runlog.default_out_dir(prefix="dryrun-" if args.dry_run else "")
    max_steps = min(args.max_steps, DRY_RUN_STEPS) if args.dry_run else args.max_steps
    eval_freq = DRY_RUN_EVAL_FREQ if args.dry_run else args.eval_freq
    eval_limit = DRY_RUN_EVAL_EXAMPLES if args.dry_run else None
    model_seed, data_seed = derive_seeds(args.seed)

    with _blas_threads(args.threads):
        if data is None:
            from fastmlp.data import get_cifar10

            data = get_cifar10(args.data_dir, one_hot=False, validation_size=args.validation_size,
                               preprocessing=args.preprocessing, flatten=True, dtype=dtype,
                               augment=args.augment, seed=data_seed)
        train_set = data["train"]
        if np.dtype(train_set.images.dtype) != np.dtype(dtype):
            raise ValueError(f"data: the pre-loaded images are {train_set.images.dtype}, but --dtype is "
                             f"{args.dtype}; load them with get_cifar10(dtype=np.{args.dtype})")
        eval_sets = {"test": _eval_arrays(data["test"], eval_limit)}
        if data.get("validation") is not None:
            eval_sets["validation"] = _eval_arrays(data["validation"], eval_limit)
        n_inputs = int(np.prod(train_set.images.shape[1:]))
        n_classes = _n_classes(train_set.labels, *(y for _, y in eval_sets.values()))

        model, optimizer = build_model_and_optimizer(
            n_inputs, args.dnn_hidden_units, n_classes, dtype=dtype, init=args.init, seed=model_seed,
            optimizer=args.optimizer, learning_rate=args.learning_rate, momentum=args.momentum,
            weight_decay=args.weight_decay, nesterov=args.nesterov)
        schedule = LearningRateSchedule(args.learning_rate, max_steps, args.lr_schedule,
                                        warmup_steps=args.warmup_steps)
        flags = {**vars(args), "max_steps": max_steps, "eval_freq": eval_freq, "out_dir": str(out_dir)}
        log = runlog.RunLog(out_dir, flags)

        # The caller's DataSet is put back on the way out (see ``data`` above).
        initial_data_state = train_set.get_state()
        step, wall_before = 0, 0.0
        if checkpoint is not None:
            step = int(checkpoint["meta"]["step"])
            if step > max_steps:
                raise ValueError(f"cannot resume: the checkpoint is at step {step}, past --max_steps {max_steps}")
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optim"])
            # The checkpoint carries the old hyper-parameters: this run's flags win
            # (the learning rate is set from the schedule at every step).
            optimizer.weight_decay = args.weight_decay
            if args.optimizer == "momentum":
                optimizer.momentum = args.momentum
            train_set.set_state(checkpoint["data_state"])
            np.random.set_state(checkpoint["numpy_rng"])
            log.restore(checkpoint["meta"].get("rows", []), up_to_step=step)
            wall_before = float(checkpoint["meta"].get("wall_seconds", 0.0))

        def evaluate(step: int, batch_metrics: dict[str, float]) -> dict[str, float]:
            row = dict(batch_metrics)
            for split, (x, y) in eval_sets.items():
                row[f"{split}_loss"], row[f"{split}_accuracy"] = model.evaluate(x, y, batch_size=args.eval_batch_size)
            row = {k: float(v) for k, v in row.items()}
            log.record(step, **row)
            wall = wall_before + time.perf_counter() - start_time
            save_checkpoint(out_dir / CHECKPOINT_NAME, model=model, optimizer=optimizer, step=step,
                            data_state=train_set.get_state(),
                            meta={"flags": flags, "rows": log.rows, "wall_seconds": wall})
            return {"step": step, **row}

        bar = runlog.progress_bar(max_steps, initial=step, disable=args.quiet)
        try:
            if step == 0:  # the untrained model: chance level, the start of the curves
                report = evaluate(0, {})
                if on_eval is not None:
                    on_eval(0, report)
            recent_losses: list[float] = []
            while step < max_steps:
                step += 1
                at_eval = step % eval_freq == 0 or step == max_steps
                x, y = train_set.next_batch(args.batch_size)
                loss = training_step(model, optimizer, _as_2d(x), y, step, schedule)
                bar.update(1)
                recent_losses.append(loss)
                if len(recent_losses) == 20:
                    bar.set_postfix(loss=f"{sum(recent_losses) / 20:.4f}", refresh=False)
                    recent_losses.clear()
                if at_eval:
                    # The core counted the batch's right answers before the update, as its loss.
                    batch_accuracy = model.last_batch_correct / len(x)
                    report = evaluate(step, {"train_loss": loss, "train_accuracy": batch_accuracy,
                                             "learning_rate": optimizer.lr})
                    if not args.quiet:
                        bar.write(_format_report(report))
                    if on_eval is not None:
                        on_eval(step, report)
        finally:
            bar.close()
            train_set.set_state(initial_data_state)

        last = log.rows[-1]
        final = {k: last[k] for k in ("test_loss", "test_accuracy", "validation_loss", "validation_accuracy")
                 if k in last}
        wall_seconds = wall_before + time.perf_counter() - start_time
        metrics = log.finish(**final, steps=step, wall_seconds=wall_seconds, out_dir=str(out_dir),
                             dry_run=args.dry_run)
    return metrics


def _format_report(report: Mapping[str, float]) -> str:
    parts = [f"step {int(report['step']):6d}"]
    for split in ("train", "validation", "test"):
        if f"{split}_accuracy" in report:
            parts.append(f"{split} loss {report[f'{split}_loss']:.4f} acc {report[f'{split}_accuracy']:.4f}")
    return "  ".join(parts)


# -------------------------------------------------------------------- command line
def explicit_flags(probe: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """Names of the flags actually given in ``argv`` to ``probe`` (a fresh parser, modified here).

    Shared with the torch trainers, whose ``--resume`` also takes the flags not given
    from the checkpoint.
    """
    # (set_defaults would not do: argparse would run SUPPRESS through the flags' type checks)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fastmlp.train``; returns the exit status.

    0 on success, 1 when training diverged (message on stderr), 2 on bad
    flags, a missing or incompatible checkpoint, or missing data, 130 on
    Ctrl-C (the message says how to resume).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is not None:
        try:
            saved = load_checkpoint(args.resume)["meta"].get("flags", {})
        except (FileNotFoundError, ValueError) as exc:
            parser.error(str(exc))
        explicit = explicit_flags(build_parser(), argv)
        for name, value in saved.items():
            if name in vars(args) and name not in explicit and name not in _INVOCATION_FLAGS:
                setattr(args, name, value)
    if args.out_dir is None and args.resume is None:
        # Chosen here rather than in train() so that messages below can name it.
        args.out_dir = str(runlog.default_out_dir(prefix="dryrun-" if args.dry_run else ""))
    try:
        metrics = train(args)
    except KeyboardInterrupt:
        where = args.out_dir or str(resolve_checkpoint_path(args.resume).parent)
        print(f"\ninterrupted; continue from the last evaluation with: python -m fastmlp.train --resume {where}",
              file=sys.stderr)
        return 130
    except runlog.DivergenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"test accuracy {metrics['test_accuracy']:.4f} (best {metrics['best_test_accuracy']:.4f}) "
              f"after {metrics['steps']} steps, {metrics['wall_seconds']:.1f} s; outputs in {metrics['out_dir']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
