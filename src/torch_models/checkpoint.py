"""``checkpoint.pt``: the whole state of a torch trainer's run, as data only.

Why a module of its own: ``--resume`` reads a file that may come from anywhere, and
unpickling arbitrary objects runs arbitrary code. So a checkpoint holds tensors and
plain Python values (dict, list, tuple, str, int, float, bool, None) and nothing else:
:func:`save_checkpoint` refuses any other object before writing, and
:func:`load_checkpoint` reads with ``torch.load(weights_only=True)``, whose unpickler
builds nothing else, then checks the format tag and the entries before any of it is
used. A foreign, truncated or corrupt file, or one holding other objects, is a
``ValueError`` that names ``--resume`` (the command lines print it as one line and
exit with status 2).

Entries (format ``torch_models.checkpoint/2``)
----------------------------------------------
``format``, ``trainer`` (``train_mlp``/``train_convnet``), ``step``, ``flags``,
``precision`` (what ``--amp`` applied), ``model``, ``optimizer``, ``scheduler`` (the
update count and the schedule's horizon), ``grad_scaler``, ``train_data`` (the batch
order: ``DataSet.get_state()`` with its permutation as an int64 tensor), ``rng``
(:mod:`torch_models.rng`: ``per_rank`` torch/CUDA states, ``numpy``, ``python``),
``curves`` (the rows of ``curves.csv``), ``wall_seconds``, ``train_seconds``,
``timed_steps``, ``compile_seconds`` and ``world_size``.

Format 1, written before this one, stored NumPy objects: it is refused, unread.

Before any of it is used, a loaded checkpoint must nest at most
:data:`MAX_DEPTH` deep, hold finite tensors, curve rows that
:func:`fastmlp.runlog.check_curve_rows` accepts and optimizer hyper-parameters within
:data:`fastmlp.hyperparams.CONSTRAINTS`; else it is a corrupt checkpoint (ValueError).
"""
from __future__ import annotations

import collections
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from fastmlp.atomic import atomic_path
from fastmlp.checkpoint import OPTIMIZER_TABLE_NAMES
from fastmlp.hyperparams import check_all
from fastmlp.runlog import check_curve_rows, resolve_checkpoint

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "load_checkpoint", "resolve_checkpoint_path", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "torch_models.checkpoint/2"

# The entries every checkpoint has, and their types (the others are optional).
_REQUIRED = {"trainer": str, "step": int, "flags": dict, "precision": dict, "model": dict, "optimizer": dict,
             "scheduler": dict, "train_data": dict, "rng": dict, "curves": list, "wall_seconds": float}
_SCALARS = (bool, int, float, str, type(None))
_MAPPINGS = (dict, collections.OrderedDict)
_SEQUENCES = (list, tuple)
#: How deep a checkpoint's entries may nest (what save_checkpoint writes nests 6 deep).
MAX_DEPTH = 32


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/checkpoint.pt`` when ``path`` is a run folder.

    Raises
    ------
    FileNotFoundError
        Naming ``--resume``, when neither exists.
    """
    return resolve_checkpoint(path, CHECKPOINT_NAME)


def _check_plain(value: Any, where: str) -> None:
    """Raise ``TypeError`` naming the entry of ``value`` that is not a tensor or plain data."""
    if isinstance(value, torch.Tensor) or type(value) in _SCALARS:
        return
    if type(value) in _MAPPINGS:
        for key, item in value.items():
            if type(key) not in _SCALARS:
                raise TypeError(f"checkpoint entry {where} has a key of type {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in _SEQUENCES:
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint entry {where} is a {type(value).__module__}.{type(value).__name__}: a "
                    "checkpoint stores only tensors and plain Python values (torch.load(weights_only=True) "
                    "reads nothing else)")


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """``torch.save(state)`` to ``path`` atomically (a crash leaves the previous file intact).

    Raises
    ------
    TypeError
        Naming the entry, when ``state`` holds anything but tensors and plain Python values.
    """
    state = dict(state)
    _check_plain(state, "")
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def _children(value: Any) -> Any:
    if isinstance(value, Mapping):
        return value.values()
    return value if isinstance(value, _SEQUENCES) else ()


def _check_depth(state: Any) -> None:
    """Refuse entries nested deeper than :data:`MAX_DEPTH` (walked without recursion)."""
    stack = [(state, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"its entries nest more than {MAX_DEPTH} deep")
        stack.extend((child, depth + 1) for child in _children(value))


def _check_values(state: Mapping[str, Any]) -> None:
    """Finite tensors in the model and optimizer, their hyper-parameters within the table, sound curves."""
    for entry in ("model", "optimizer"):
        stack = [state[entry]]
        while stack:
            value = stack.pop()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                raise ValueError(f"its {entry} state holds NaN or infinite values")
            stack.extend(_children(value))
    for group in state["optimizer"].get("param_groups", []):
        hyper = {key: value.item() if isinstance(value, torch.Tensor) else value for key, value in group.items()
                 if key != "params"}
        if isinstance(hyper.get("betas"), _SEQUENCES) and len(hyper["betas"]) == 2:
            hyper["beta1"], hyper["beta2"] = hyper.pop("betas")
        check_all(hyper, OPTIMIZER_TABLE_NAMES, label=lambda name: f"optimizer {name!r}")
    check_curve_rows(state["curves"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``path``: the file or its run folder), on the CPU.

    Runs no code from the file: only tensors and plain values are built.

    Returns
    -------
    dict
        The entries listed in the module docstring.

    Raises
    ------
    FileNotFoundError
        Naming ``--resume``, when there is no such file or run folder.
    ValueError
        Naming ``--resume``, for a file that is not a checkpoint of this format: not a
        torch archive (truncated, corrupt, another kind of file), holding objects other
        than tensors and plain data (refused unread), another format tag, or missing entries.
    """
    path = resolve_checkpoint_path(path)
    where = f"--resume: {str(path)!r}"
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{where} is not a torch checkpoint: not a torch archive (a truncated or corrupt "
                         "file, or another kind of file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever a damaged archive raises, the user gets one line
        # The restricted unpickler names the global (class or function) it refused to load.
        if isinstance(exc, pickle.UnpicklingError) and "global" in str(exc).lower():
            raise ValueError(f"{where} holds Python objects other than tensors and plain data, so it is not read "
                             "(loading them could run code). This is not a checkpoint of this version "
                             f"(format {CHECKPOINT_FORMAT!r}); checkpoints of torch_models format 1 hold NumPy "
                             "objects too: continue such a run with the version that wrote it, or train "
                             "again") from None
        raise ValueError(f"{where} cannot be read as a torch checkpoint ({_first_line(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = (f"a {type(state).__name__}" if not isinstance(state, dict) else
                 "no format tag" if "format" not in state else f"format {state['format']!r}")
        raise ValueError(f"{where} is not a torch_models checkpoint of format {CHECKPOINT_FORMAT!r} "
                         f"(it holds {found})")
    for key, kind in _REQUIRED.items():
        if not isinstance(state.get(key), kind):
            raise ValueError(f"{where}: its entry {key!r} is missing or not a {kind.__name__} (a damaged checkpoint)")
    try:
        _check_depth(state)
        _check_values(state)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where} is a corrupt checkpoint: {exc}") from None
    return state
