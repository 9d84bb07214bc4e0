"""The torch trainers' run configurations: every setting of a run, typed and checked once.

:class:`TorchMLPConfig` (``python -m torch_models.train_mlp``) and :class:`ConvNetConfig`
(``python -m torch_models.train_convnet``) are :class:`fastmlp.config.RunConfig`\\ s: a
frozen dataclass whose fields are entries of the constraint table
(:data:`fastmlp.hyperparams.CONSTRAINTS`), so a bad value is refused when the
configuration is made, with the same message as fastmlp's trainer gives. A setting that
both families have carries fastmlp's name (``hidden_units``, whose flag is the course's
``--dnn_hidden_units``); ``device``, ``deterministic``, ``dropout``, ``batchnorm``,
``label_smoothing``, ``amp``, ``channels_last`` and ``compile`` are torch's own. The
command lines are generated from these classes (:mod:`torch_models.cli`); the library
(:mod:`torch_models.mlp_run`, :mod:`torch_models.convnet_run`, :mod:`torch_models.trainer`)
reads the fields and never a flag.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from fastmlp.config import RunConfig, setting
from fastmlp.hyperparams import Boolean, check_sizes
from fastmlp.loop import DRY_RUN_EVAL_EXAMPLES, DRY_RUN_EVAL_FREQ, DRY_RUN_STEPS
from fastmlp.optim import check_optimizer

__all__ = ["ConvNetConfig", "TORCH_OPTIMIZERS", "TorchMLPConfig", "TorchRunConfig", "check_torch_optimizer"]

#: The optimizers the torch trainers build (:func:`torch_models.optimizers.make_optimizer`).
TORCH_OPTIMIZERS = ("sgd", "momentum", "adam")

_SWITCH = Boolean()


class _SwitchOrAuto(Boolean):
    """A ``--x/--no-x`` switch whose default, None, leaves the choice to the trainer."""

    def describe(self) -> str:
        return "None or a bool"

    def check(self, value: Any) -> bool | None:
        return None if value is None else super().check(value)


def check_torch_optimizer(name: str, momentum: float, nesterov: bool, *, label: Callable[[str], str] = str) -> None:
    """fastmlp's optimizer rules (:func:`fastmlp.optim.check_optimizer`), and one the torch trainers build.

    Raises
    ------
    ValueError
        ``"optimizer: expected one of ('sgd', 'momentum', 'adam'), got 'rmsprop'"``, or the Nesterov rule's message.
    """
    check_optimizer(name, momentum, nesterov, label=label)
    if name not in TORCH_OPTIMIZERS:  # an optimizer fastmlp has and torch_models does not
        raise ValueError(f"{label('optimizer')}: expected one of {TORCH_OPTIMIZERS} (the torch trainers' "
                         f"optimizers), got {name!r}")


@dataclasses.dataclass(frozen=True)
class TorchRunConfig(RunConfig):
    """The settings both torch trainers share, with the course MLP's defaults (``fastmlp.train``'s).

    Raises
    ------
    TypeError, ValueError
        On construction, for a bad value (``"batch_size: expected an integer > 0, got 0"``;
        named by flag when made from a command line), a Nesterov momentum without momentum,
        or a batch this machine cannot hold.
    """

    learning_rate: float = setting(2e-3, check="learning_rate", help="(peak) learning rate")
    max_steps: int = setting(1500, check="max_steps", help="number of optimisation steps")
    batch_size: int = setting(200, check="batch_size",
                              help="global mini-batch size (split across ranks under torchrun)")
    eval_freq: int = setting(100, check="eval_freq",
                             help="evaluate on the whole test (and validation) set and checkpoint every N steps")
    eval_batch_size: int = setting(2500, check="eval_batch_size",
                                   help="batch size for evaluation (larger: fewer passes, more memory)")
    dataset: str = setting("cifar10", check="dataset", group="data",
                           help="the data set (fastmlp.data.registry); npz: --data_dir names the file")
    data_dir: str | None = setting(None, path=True, group="data",
                                   help="folder holding the data set, or the .npz file (default: $FASTMLP_DATA, "
                                        "else ~/.cache/fastmlp)")
    validation_size: int = setting(0, check="validation_size", group="data",
                                   help="training images held out (from the end of the training set) for "
                                        "validation")
    preprocessing: str = setting("mean_image", check="preprocessing", group="data",
                                 help="mean_image: subtract the mean training image (the course's, 0..255 scale); "
                                      "standardize: per-channel mean/std (0..1 scale)")
    augment: bool = setting(False, check="augment", group="data",
                            help="random crop (zero padding 4) and horizontal flip of training images, done by "
                                 "fastmlp.data.DataSet")
    seed: int = setting(42, check="seed", help="seed of the model init, batch order and dropout/augmentation")
    out_dir: str | None = setting(None, path=True,
                                  help="output folder (default: runs/<timestamp>, or the --resume run's folder)")
    resume: str | None = setting(None, path=True, metavar="PATH",
                                 help="continue from a checkpoint.pt file or a run folder holding one; flags not "
                                      "given are taken from it")
    overwrite: bool = setting(False, check=_SWITCH,
                              help="replace the run already in --out_dir (its checkpoint, curves and metrics are "
                                   "deleted); without it such a folder is refused")
    device: str = setting("auto", check="device", help="auto = cuda when available, else cpu")
    threads: int | None = setting(None, check="threads", help="CPU threads for torch (default: torch's own choice)")
    deterministic: bool = setting(
        False, check=_SWITCH,
        help="CUDA: deterministic cuDNN/cuBLAS algorithms (torch raises on an op that has none), so --resume "
             "repeats an uninterrupted run bit for bit on the same GPU; costs some speed. Without it "
             "cudnn.benchmark picks the fastest convolutions per process. The CPU is deterministic either way")
    quiet: bool = setting(False, check=_SWITCH, help="no progress bar or summary")
    plot: bool = setting(False, check=_SWITCH,
                         help="also draw curves.png at the end (or later: python -m fastmlp.plot <out_dir>)")
    dry_run: bool = setting(False, check=_SWITCH,
                            help=f"print the plan, then train {DRY_RUN_STEPS} steps, evaluating every "
                                 f"{DRY_RUN_EVAL_FREQ} on {DRY_RUN_EVAL_EXAMPLES} examples per split; the "
                                 "learning-rate schedule keeps the full --max_steps horizon (outputs default to "
                                 "runs/dryrun-<timestamp>)")
    optimizer: str = setting("sgd", check="optimizer", group="optimisation",
                             help="sgd: plain SGD (the course's MLP); momentum: SGD with --momentum; adam")
    momentum: float = setting(0.9, check="momentum", group="optimisation",
                              help="momentum of --optimizer momentum")
    nesterov: bool = setting(False, check="nesterov", group="optimisation",
                             help="Nesterov momentum (with --optimizer momentum)")
    weight_decay: float = setting(0.0, check="weight_decay", group="optimisation",
                                  help="L2 weight decay of the Linear weights only (not biases or BatchNorm "
                                       "parameters), as fastmlp does")
    lr_schedule: str = setting("constant", check="lr_schedule", group="optimisation",
                               help="learning rate of each step (fastmlp.schedules, peak --learning_rate): cosine: "
                                    "decay to 0 over --max_steps; step: x0.1 at 50%% and 75%% of the steps; "
                                    "onecycle: PyTorch's OneCycleLR (up over 30%% of the steps, or --warmup_steps, "
                                    "then down)")
    warmup_steps: int = setting(0, check="warmup_steps", group="optimisation",
                                help="linear learning-rate warm-up over this many steps (onecycle: the length of "
                                     "its rise)")

    def check_together(self, values: dict[str, Any], label: Callable[[str], str]) -> None:
        """The optimizer with Nesterov momentum, and sizes this machine can hold."""
        check_torch_optimizer(values["optimizer"], values["momentum"], values["nesterov"], label=label)
        check_sizes(values, label=label)


@dataclasses.dataclass(frozen=True)
class TorchMLPConfig(TorchRunConfig):
    """``python -m torch_models.train_mlp``'s settings: the shared ones and the MLP's (course defaults).

    ``hidden_units`` is the tuple of hidden widths (the flag ``--dnn_hidden_units``,
    ``"512,256"``); ``init`` is the table entry ``torch_init``: fastmlp's initialisations
    or PyTorch's own (``"torch"``).
    """

    hidden_units: tuple[int, ...] = setting("100", check="hidden_units", flag="dnn_hidden_units", group="model",
                                            help="comma-separated hidden layer sizes; empty = logistic regression")
    init: str = setting("normal", check="torch_init", group="model",
                        help="Linear weights: normal = the course's N(0, 1e-4^2), kaiming = He normal, xavier = "
                             "Glorot normal (zero biases for these); torch = PyTorch's default init")
    dropout: float = setting(0.0, check="dropout", group="model", help="dropout after each hidden ReLU")
    batchnorm: str = setting("none", check="batchnorm", group="model",
                             help="BatchNorm before each hidden Linear: torch.nn.BatchNorm1d or the custom one")


@dataclasses.dataclass(frozen=True)
class ConvNetConfig(TorchRunConfig):
    """``python -m torch_models.train_convnet``'s settings: the shared ones (the course's Adam defaults) and its own.

    ``channels_last`` None: on whenever ``amp`` applies an autocast dtype, else off.
    """

    learning_rate: float = setting(1e-4, check="learning_rate", help="(peak) learning rate")
    max_steps: int = setting(5000, check="max_steps", help="number of optimisation steps")
    batch_size: int = setting(32, check="batch_size", help="global mini-batch size (split across ranks under torchrun)")
    eval_freq: int = setting(500, check="eval_freq",
                             help="evaluate on the whole test (and validation) set and checkpoint every N steps")
    eval_batch_size: int = setting(1000, check="eval_batch_size",
                                   help="batch size for evaluation (larger: fewer passes, more memory)")
    augment: bool = setting(False, check="augment", group="data",
                            help="random crop (padding 4) + horizontal flip per training image, on the device")
    optimizer: str = setting("adam", check="optimizer", group="optimisation",
                             help="sgd: plain SGD (the course's MLP); momentum: SGD with --momentum; adam")
    momentum: float = setting(0.9, check="momentum", group="optimisation",
                              help="momentum of --optimizer momentum (--lr_schedule onecycle cycles it 0.85-0.95)")
    weight_decay: float = setting(0.0, check="weight_decay", group="optimisation",
                                  help="L2 weight decay of the convolution and Linear kernels only (not biases or "
                                       "BatchNorm parameters), as fastmlp does")
    label_smoothing: float = setting(0.0, check="label_smoothing", group="optimisation",
                                     help="label smoothing of the training loss (the evaluation loss is the plain "
                                          "cross-entropy)")
    amp: bool = setting(
        False, check=_SWITCH, group="speed",
        help="mixed precision: bfloat16 autocast where the device computes bf16 natively (a CPU with "
             "AVX512-BF16/AMX, where steps run up to ~2x faster; an Ampere or newer GPU), float16 with a gradient "
             "scaler on older GPUs, float32 with a warning on CPUs without bf16. Cost: convolutions and matmuls "
             "round to 8 (bf16) or 11 (fp16) significant bits; weights, optimizer state and loss stay float32")
    channels_last: bool | None = setting(
        None, check=_SwitchOrAuto(), group="speed",
        help="NHWC memory format: faster convolutions on CPUs and on tensor cores, the same arithmetic in another "
             "order. Default (None): on whenever --amp applies an autocast dtype, else off (so the plain command "
             "stays the course's run)")
    compile: bool = setting(False, check=_SWITCH, group="speed",
                            help="torch.compile the model once (training and evaluation): faster steps after a "
                                 "compilation of up to minutes (timed apart, as compile_seconds)")
