"""What the trainers' command lines share: flag types, ``--resume``'s flags, exit codes, the summary.

A trainer's command-line module (``fastmlp.train``, and the torch trainers through
``torch_models.cli``) declares its flags and calls :func:`run_main`, which

1. parses them, each value checked against the constraint table by
   :func:`flag_type`, so a bad value reads the same on every command line and in
   the library (a trainer's flags are generated from its run configuration,
   :func:`add_config_arguments`);
2. with ``--resume``, takes every flag not written on the command line (but the
   invocation's own, :data:`INVOCATION_FLAGS`) from the checkpoint;
3. claims the output folder for the run (:func:`fastmlp.rundir.claimed_run_dir`:
   locked while the run writes it; a folder holding another run is refused unless
   ``--resume`` or ``--overwrite``);
4. trains, SIGTERM and SIGHUP ending the run as Ctrl-C does, and maps the outcome
   to the exit status (:data:`fastmlp.exits.EXIT_STATUSES`), printing one ``error:`` line (or, when
   interrupted, the command that resumes) and never a traceback.

Library modules (the core, the estimator, the search space, torch models) do not
import this module.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from fastmlp import loop
from fastmlp.config import RunConfig
from fastmlp.exits import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_IO_ERROR, Stopped, interrupted_status
from fastmlp.hyperparams import CONSTRAINTS, Boolean, Constraint, from_text
from fastmlp.rundir import claimed_run_dir
from fastmlp.runlog import DivergenceError, default_out_dir

__all__ = [
    "HelpFormatter",
    "INVOCATION_FLAGS",
    "LIBRARY_LOGGERS",
    "add_config_arguments",
    "add_overwrite_argument",
    "config_from_args",
    "describe_os_error",
    "explicit_flags",
    "flag_actions",
    "flag_type",
    "library_messages_on_console",
    "merge_resume_flags",
    "printable",
    "run_main",
    "signals_stop_the_run",
    "summary_line",
]


#: Flags that describe this invocation rather than the run: ``--resume`` never takes
#: them from the checkpoint (every other flag not given again is). ``--data_dir`` is
#: the run's (the same images); give it again to read them from another folder.
INVOCATION_FLAGS = ("resume", "out_dir", "overwrite", "dry_run", "quiet", "plot", "threads", "device")


def flag_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``{dest: action}`` of ``parser``'s flags (argparse lists them only in a private attribute)."""
    return {action.dest: action for action in parser._actions}


def explicit_flags(probe: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """Names of the flags actually given in ``argv`` to ``probe`` (a fresh parser, modified here)."""
    # (set_defaults would not do: argparse would run SUPPRESS through the flags' type checks)
    for action in flag_actions(probe).values():
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def merge_resume_flags(args: argparse.Namespace, saved: Mapping[str, Any], explicit: set[str]) -> None:
    """Set each flag of ``args`` not in ``explicit`` (nor an invocation flag) to the checkpoint's value."""
    for name, value in saved.items():
        if name in vars(args) and name not in explicit and name not in INVOCATION_FLAGS:
            setattr(args, name, value)


def summary_line(metrics: Mapping[str, Any]) -> str:
    """``test accuracy 0.4567 (best 0.4600), ... after 1500 steps, 61.2 s; outputs in runs/...``."""
    parts = []
    for split in ("test", "validation"):
        if f"{split}_accuracy" in metrics:
            best = metrics.get(f"best_{split}_accuracy")
            parts.append(f"{split} accuracy {metrics[f'{split}_accuracy']:.4f}"
                         + (f" (best {best:.4f})" if best is not None else ""))
    done = f"after {metrics['steps']} steps, {metrics['wall_seconds']:.1f} s"
    if metrics.get("seconds_per_step") is not None:
        done += f" ({metrics['seconds_per_step'] * 1e3:.1f} ms per training step)"
    where = f"; outputs in {metrics['out_dir']}" if metrics.get("out_dir") else ""
    return ", ".join([*parts, done]) + where


def _raise_stopped(signum: int, frame: Any) -> None:
    stop = KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)
    if not loop.hold_until_update_ends(stop):  # else raised when the running update ends
        raise stop


@contextlib.contextmanager
def signals_stop_the_run() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Stopped` in the main thread, Ctrl-C
    KeyboardInterrupt as usual; one that arrives during an update is raised when the update
    has ended (:func:`fastmlp.loop.hold_until_update_ends`).

    A signal the process ignores (``nohup`` ignores SIGHUP), or whose handler is not
    Python's default, is left alone; off the main thread (where Python cannot set
    handlers) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        current = signal.getsignal(signum)
        if current is not signal.SIG_IGN and (signum != signal.SIGINT or current is signal.default_int_handler):
            previous[signum] = signal.signal(signum, _raise_stopped)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every command line's ``--help``: each flag's default, said once.

    argparse's formatter appends ``(default: None)`` even to a help that says what
    None means (``--data_dir``: ``$FASTMLP_DATA``, else ``~/.cache/fastmlp``); a help
    that already names its default is left as it is.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        if "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


#: The loggers of the libraries' notes and warnings (each module logs to ``logging.getLogger(__name__)``).
LIBRARY_LOGGERS = ("fastmlp", "torch_models")


class _ConsoleHandler(logging.Handler):
    """Library records as the command lines print them: notes on stdout, ``warning: ...`` on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                print(f"warning: {text}", file=sys.stderr, flush=True)
                return
            bars = sys.modules.get("tqdm.auto")
            if bars is not None:  # a progress bar may be on screen: tqdm writes the line above it
                bars.tqdm.write(text, file=sys.stdout)
            else:
                print(text, file=sys.stdout, flush=True)
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler reports, never raises
            self.handleError(record)


@contextlib.contextmanager
def library_messages_on_console(enabled: bool = True) -> Iterator[None]:
    """Within the block, print the libraries' INFO and WARNING records (:data:`LIBRARY_LOGGERS`).

    A command line owns its console: the records go to :class:`_ConsoleHandler` only,
    not on to the root logger. A logger whose level was set (by a program calling
    ``main``) keeps it. ``enabled=False`` (the ranks other than 0) changes nothing.
    """
    if not enabled:
        yield
        return
    handler = _ConsoleHandler()
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, (level, propagate) in zip(loggers, saved):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


def flag_type(constraint: str | Constraint) -> Callable[[str], Any]:
    """An argparse ``type=`` that reads a flag's text and checks it against the table.

    ``constraint`` is a name of :data:`fastmlp.hyperparams.CONSTRAINTS` or a
    :class:`~fastmlp.hyperparams.Constraint` (a command line's own flags); the text is
    read by :func:`fastmlp.hyperparams.from_text`. The message of a bad value is the
    table's (argparse puts ``argument --<flag>:`` before it).
    """
    read = from_text(constraint)

    def convert(text: str) -> Any:
        try:
            return read(text)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = read.__name__
    return convert


def add_config_arguments(parser: argparse.ArgumentParser, config: type[RunConfig], *,
                         skip: tuple[str, ...] = (), groups: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Declare a flag for every setting of the :class:`~fastmlp.config.RunConfig` subclass ``config``.

    Each flag is ``--<flag>``, stored under the setting's name, with the setting's
    default (as the command line writes it) and help, its text read and
    checked by the setting's constraint (:func:`flag_type`); a boolean setting is a
    switch, ``--x``/``--no-x``. Settings are listed under their group's heading
    (``groups`` maps a group to its title; default: the group's name).

    Parameters
    ----------
    skip : tuple of str
        Settings (field names) the command line does not offer.

    Returns
    -------
    dict
        ``{group: argparse argument group}``, for the command line's own flags.
    """
    headings: dict[str, Any] = {}
    for spec in dataclasses.fields(config):
        if spec.name in skip:
            continue
        group = spec.metadata.get("group", "run")
        if group not in headings:
            headings[group] = parser.add_argument_group((groups or {}).get(group, group))
        flag = config.flag(spec.name)
        headings[group].add_argument(f"--{flag}", dest=spec.name, **_flag_options(spec, flag))
    return headings


def _flag_options(spec: dataclasses.Field, flag: str) -> dict[str, Any]:
    """``add_argument``'s keywords for the setting ``spec``."""
    rule = spec.metadata.get("check")
    rule = CONSTRAINTS[rule] if isinstance(rule, str) else rule
    options: dict[str, Any] = {"default": spec.default, "help": spec.metadata.get("help") or None}
    if isinstance(rule, Boolean):
        return {**options, "action": argparse.BooleanOptionalAction}
    if rule is not None:
        # argparse reads a text default with type=, so the value stays canonical
        options.update(type=flag_type(rule), default=rule.to_text(spec.default))
        if rule.choices is not None:
            options["choices"] = rule.choices
    if "choices" not in options:
        options["metavar"] = spec.metadata.get("metavar") or flag.upper()
    return options


def config_from_args(config: type[RunConfig], args: argparse.Namespace | Mapping[str, Any]) -> RunConfig:
    """The ``config`` of parsed flags ``args`` (by field name, as :func:`add_config_arguments`
    stores them, or by flag name, which wins: :meth:`~fastmlp.config.RunConfig.settings_of`).

    Names ``config`` does not declare (the invocation's own flags, ``--overwrite``) are
    left out; a setting not given keeps its default; a bad value's message names its
    flag (``--dnn_hidden_units: ...``).
    """
    given = dict(args) if isinstance(args, Mapping) else vars(args)
    return config.create(config.settings_of(given), label=lambda name: f"--{config.flag(name)}")


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--overwrite``, which lets a run replace the run already in its ``--out_dir``."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --out_dir (its checkpoint, curves and metrics are "
                             "deleted); without it such a folder is refused")


def printable(text: str) -> str:
    """``text`` as stderr/stdout can write it: bytes of a non-UTF-8 file name become ``\\xff`` escapes."""
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    with contextlib.suppress(UnicodeEncodeError):
        # a lone surrogate stands for an undecodable byte of a file name (os.fsdecode's surrogateescape)
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.encode(encoding, "backslashreplace").decode(encoding)


def describe_os_error(exc: OSError) -> str:
    """``'<path>': <the OS's reason>`` (both paths of a rename), or the exception's text."""
    reason = exc.strerror or str(exc)
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(repr(p) for p in paths)}: {reason}" if paths else reason


def _check_resumed_data_dir(args: argparse.Namespace, explicit: set[str]) -> None:
    """``--resume`` never reads (nor downloads into) a data folder that is gone: ask for ``--data_dir``."""
    data_dir = getattr(args, "data_dir", None)
    if "data_dir" in explicit or data_dir is None or Path(data_dir).exists():
        return
    raise ValueError(f"--resume: the checkpoint's data folder {data_dir!r} does not exist (any more); pass "
                     "--data_dir with the folder that holds CIFAR-10 now (nothing is downloaded into a "
                     "folder a checkpoint names)")


def _merge_resume(args: argparse.Namespace, argv: list[str] | None,
                  build_parser: Callable[[], argparse.ArgumentParser],
                  saved_flags: Callable[[Any], Mapping[str, Any]],
                  read_checkpoint: Callable[[str], Any]) -> Any:
    """Take the flags not given from ``--resume``'s checkpoint; return what ``read_checkpoint`` read.

    Raises FileNotFoundError or ValueError when the checkpoint is unusable.
    """
    checkpoint = read_checkpoint(args.resume)
    explicit = explicit_flags(build_parser(), argv)
    merge_resume_flags(args, saved_flags(checkpoint), explicit)
    _check_resumed_data_dir(args, explicit)
    return checkpoint


def _run_folder(args: argparse.Namespace, checkpoint_dir: Callable[[str], Path]) -> Path | None:
    """The folder the run writes: ``--out_dir``, else the resumed checkpoint's folder (None: not chosen yet)."""
    if args.out_dir is not None:
        return Path(args.out_dir)
    return Path(checkpoint_dir(args.resume)) if args.resume is not None else None


def _train_in_folder(args: argparse.Namespace, train: Callable[[argparse.Namespace], Mapping[str, Any]],
                     folder: Path, *, resuming: bool, is_main: bool) -> Mapping[str, Any]:
    """``train(args)`` with ``folder`` claimed (rank 0 only) and SIGTERM/SIGHUP stopping the run.

    ``resuming``: the run continues the one in ``folder`` (else the folder must be free).
    """
    claim = (claimed_run_dir(folder, resuming=resuming, overwrite=getattr(args, "overwrite", False))
             if is_main else contextlib.nullcontext())
    with signals_stop_the_run(), claim, library_messages_on_console(is_main):
        return train(args)


def run_main(argv: list[str] | None, *, build_parser: Callable[[], argparse.ArgumentParser],
             train: Callable[..., Mapping[str, Any]], read_checkpoint: Callable[[str], Any],
             saved_flags: Callable[[Any], Mapping[str, Any]], checkpoint_dir: Callable[[str], Path],
             is_main: bool = True) -> int:
    """Parse ``argv``, merge ``--resume``'s flags, claim the folder, train, print, return the exit status.

    Parameters
    ----------
    argv : list of str or None
        The arguments (``None``: ``sys.argv[1:]``).
    build_parser : callable
        The trainer's parser (called twice: once more to see which flags were given).
    train : callable
        ``train(args, checkpoint) -> metrics``, ``checkpoint`` what ``read_checkpoint``
        read (None when not resuming).
    read_checkpoint : callable
        ``read_checkpoint(resume_path) -> checkpoint`` (FileNotFoundError or ValueError
        when it cannot be read: a usage error, exit 2). The checkpoint is read once,
        here, its flags merged once, and the trainer handed both.
    saved_flags : callable
        ``saved_flags(checkpoint)``: the settings the checkpoint recorded, by the parser's names.
    checkpoint_dir : callable
        ``checkpoint_dir(resume_path) -> folder``, named by the Ctrl-C message.
    is_main : bool
        False on the distributed ranks other than 0: they print nothing and claim no folder.

    Returns
    -------
    int
        One of :data:`fastmlp.exits.EXIT_STATUSES`.
    """
    parser = build_parser()
    args = parser.parse_args(argv)  # a malformed flag exits 2 through argparse, with the usage
    say = (lambda text: print(printable(text), file=sys.stderr)) if is_main else (lambda text: None)
    checkpoint = None
    if args.resume is not None:
        try:
            checkpoint = _merge_resume(args, argv, build_parser, saved_flags, read_checkpoint)
        except (FileNotFoundError, ValueError) as exc:
            # a usage error as argparse's (SystemExit 2), but one line: the usage would bury it
            parser.exit(EXIT_BAD_INPUT, printable(f"{parser.prog}: error: {exc}\n"))
    new_folder = None  # the run's folder, when this run made it
    try:
        if args.out_dir is None and args.resume is None:
            # Chosen (and created) here rather than in train() so that the Ctrl-C message can name it.
            new_folder = default_out_dir(prefix="dryrun-" if args.dry_run else "")
            args.out_dir = str(new_folder)
        folder = _run_folder(args, checkpoint_dir)
        if new_folder is None and not folder.exists():
            new_folder = folder
        # --resume continues the run in the checkpoint's own folder; another folder must be free
        resuming = args.resume is not None and folder.resolve() == Path(checkpoint_dir(args.resume)).resolve()
        metrics = _train_in_folder(args, lambda merged: train(merged, checkpoint), folder, resuming=resuming,
                                   is_main=is_main)
    except KeyboardInterrupt as exc:
        how = f" by {exc.args[0]}" if isinstance(exc, Stopped) else ""
        where = _run_folder(args, checkpoint_dir)
        say(f"\ninterrupted{how}" + (f"; continue from the last evaluation with: {parser.prog} --resume {where}"
                                      if where is not None else " before the run began"))
        return interrupted_status(exc)
    except DivergenceError as exc:
        say(f"error: {exc}")
        return EXIT_DIVERGED
    except (FileNotFoundError, ValueError, TypeError, MemoryError) as exc:
        say(f"error: {_bad_input_text(exc)}")
        if new_folder is not None:
            with contextlib.suppress(OSError):  # a run refused before it wrote anything leaves no folder
                new_folder.rmdir()
        return EXIT_BAD_INPUT
    except OSError as exc:
        say(f"error: {describe_os_error(exc)}")
        return EXIT_IO_ERROR
    if is_main and not args.quiet:
        print(printable(summary_line(metrics)))
    return 0


def _bad_input_text(exc: Exception) -> str:
    """The ``error:`` line of a run refused for its input (the OS's own FileNotFoundError names its path)."""
    if isinstance(exc, MemoryError):
        return (f"not enough memory for this run{f' ({exc})' if str(exc) else ''}; try a smaller "
                "--batch_size, --eval_batch_size or network")
    if isinstance(exc, OSError) and exc.errno is not None:
        return describe_os_error(exc)
    return str(exc)
