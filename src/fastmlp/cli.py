"""What the trainers' command lines share: flag types, ``--resume``'s flags, exit codes, the summary.

A trainer's command-line module (``fastmlp.train``, and the torch trainers through
``torch_models.cli``) declares its flags and calls :func:`run_main`, which

1. parses them, each value checked against the constraint table by
   :func:`fastmlp.hyperparams.flag_type`, so a bad value reads the same on every
   command line and in the library;
2. with ``--resume``, takes every flag not written on the command line (but the
   invocation's own, :data:`INVOCATION_FLAGS`) from the checkpoint;
3. trains, and maps the outcome to the exit status: 0 done (a one-line summary),
   1 diverged, 2 bad input (flags, checkpoint, data; one ``error:`` line), 130
   interrupted by Ctrl-C (with the command that resumes).

Library modules (the core, the estimator, the search space, torch models) do not
import this module.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from fastmlp.runlog import DivergenceError, default_out_dir

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DIVERGED",
    "EXIT_INTERRUPTED",
    "EXIT_IO_ERROR",
    "EXIT_SIGHUP",
    "EXIT_SIGTERM",
    "INVOCATION_FLAGS",
    "explicit_flags",
    "flag_actions",
    "merge_resume_flags",
    "run_main",
    "summary_line",
]

EXIT_DIVERGED = 1
EXIT_BAD_INPUT = 2
EXIT_IO_ERROR = 74  # EX_IOERR of sysexits.h: the disk, not the flags, is at fault
EXIT_SIGHUP = 129  # 128 + SIGHUP, as shells report a hung-up terminal
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
EXIT_SIGTERM = 143  # 128 + SIGTERM, as shells report a kill

#: Flags that describe this invocation rather than the run: ``--resume`` never takes
#: them from the checkpoint (every other flag not given again is). ``--data_dir`` is
#: the run's (the same images); give it again to read them from another folder.
INVOCATION_FLAGS = ("resume", "out_dir", "dry_run", "quiet", "plot", "threads", "num_threads", "device")


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


def run_main(argv: list[str] | None, *, build_parser: Callable[[], argparse.ArgumentParser],
             train: Callable[[argparse.Namespace], Mapping[str, Any]],
             saved_flags: Callable[[str], Mapping[str, Any]], checkpoint_dir: Callable[[str], Path],
             is_main: bool = True) -> int:
    """Parse ``argv``, merge ``--resume``'s flags, train, print, return the exit status.

    Parameters
    ----------
    argv : list of str or None
        The arguments (``None``: ``sys.argv[1:]``).
    build_parser : callable
        The trainer's parser (called twice: once more to see which flags were given).
    train : callable
        ``train(args) -> metrics``.
    saved_flags : callable
        ``saved_flags(resume_path) -> flags`` of the checkpoint (FileNotFoundError or
        ValueError when it cannot be read: a usage error, exit 2).
    checkpoint_dir : callable
        ``checkpoint_dir(resume_path) -> folder``, named by the Ctrl-C message.
    is_main : bool
        False on the distributed ranks other than 0: they print nothing.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is not None:
        try:
            saved = saved_flags(args.resume)
        except (FileNotFoundError, ValueError) as exc:
            parser.error(str(exc))
        merge_resume_flags(args, saved, explicit_flags(build_parser(), argv))
    made_out_dir = None
    if args.out_dir is None and args.resume is None:
        # Chosen (and created) here rather than in train() so that the Ctrl-C message can name it.
        made_out_dir = default_out_dir(prefix="dryrun-" if args.dry_run else "")
        args.out_dir = str(made_out_dir)
    say = (lambda text: print(text, file=sys.stderr)) if is_main else (lambda text: None)
    try:
        metrics = train(args)
    except KeyboardInterrupt:
        where = args.out_dir or str(checkpoint_dir(args.resume))
        say(f"\ninterrupted; continue from the last evaluation with: {parser.prog} --resume {where}")
        return EXIT_INTERRUPTED
    except DivergenceError as exc:
        say(f"error: {exc}")
        return EXIT_DIVERGED
    except (FileNotFoundError, ValueError, TypeError) as exc:
        say(f"error: {exc}")
        if made_out_dir is not None:
            with contextlib.suppress(OSError):  # a run refused before it wrote anything leaves no folder
                made_out_dir.rmdir()
        return EXIT_BAD_INPUT
    if is_main and not args.quiet:
        print(summary_line(metrics))
    return 0
