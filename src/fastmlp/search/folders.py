"""A trial's folder, ``<out_dir>/trials/<study name>/trial_NNNN``: claimed, recorded, its checkpoints deleted.

A worker claims the folder exclusively before training (``-1``... when taken: two
studies given one ``--out_dir`` never share one) and writes in it ``trial_info.json``,
the record that proves the folder is this study's trial. A finished trial's checkpoint
is deleted; so are the checkpoints that killed workers left, when a worker finishes, but
only in folders whose record this study's worker wrote: the storage names the folders,
and whoever can write the storage must not be able to make a worker delete elsewhere.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from pathlib import Path

from fastmlp.atomic import atomic_write_json, make_new_dir
from fastmlp.hyperparams import format_hidden_units
from fastmlp.reading import read_regular_file
from fastmlp.search.settings import SearchSettings

__all__ = ["claim_trial_folder", "remove_checkpoints", "remove_left_checkpoints", "trial_dir"]

# Trainer outputs a finished trial does not keep (the model file too: the retrained best writes the one kept).
_CHECKPOINTS = ("checkpoint.npz", "checkpoint.pt", "model.safetensors")
# What a worker writes into a trial's folder before training: the proof that the folder is this study's.
_TRIAL_INFO = "trial_info.json"
_TRIAL_INFO_LIMIT = 64 * 1024


def trial_dir(settings: SearchSettings, number: int) -> Path:
    """``<out_dir>/trials/<study name>/trial_NNNN``, where a trial's curves and metrics go.

    The study's name is kept to letters, digits, ``.``, ``-`` and ``_`` (others become
    ``_``). The trial claims the folder with :func:`fastmlp.atomic.make_new_dir`, which adds
    ``-1``, ``-2``... when another study of the same name already took it.
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", settings.study_name).strip("._") or "study"
    return Path(settings.out_dir) / "trials" / name / f"trial_{number:04d}"


def _own_trial_folder(settings: SearchSettings, trial) -> Path | None:
    """The folder ``trial`` recorded as its ``trial_dir``, if a worker of this study made it here; else None.

    The storage may be shared with (or written by) anyone, so its word is checked: the
    path, symbolic links resolved, must be a ``trial_NNNN`` folder (this trial's number)
    directly inside this study's trials folder, and hold the ``trial_info.json`` a worker
    of this study wrote for this trial before training (its study name, trial number and
    the random token also stored with the trial).
    """
    recorded = trial.user_attrs.get("trial_dir")
    if not isinstance(recorded, str):
        return None
    root = os.path.realpath(trial_dir(settings, 0).parent)
    folder = Path(os.path.realpath(recorded))
    if str(folder.parent) != root or not re.fullmatch(rf"trial_{trial.number:04d}(-[0-9]+)?", folder.name):
        return None
    info = _read_small_json(folder / _TRIAL_INFO)
    expected = {"study_name": settings.study_name, "trial_number": trial.number,
                "trial_token": trial.user_attrs.get("trial_token")}
    if not isinstance(info, dict) or any(info.get(key) != value for key, value in expected.items()):
        return None
    return folder


def _read_small_json(path: Path):
    """The JSON in ``path`` if it is a regular file of at most 64 KiB that parses; else None."""
    try:
        return json.loads(read_regular_file(path, limit=_TRIAL_INFO_LIMIT, what="trial record"))
    except (OSError, ValueError, RecursionError):
        return None


def remove_left_checkpoints(study, settings: SearchSettings) -> int:
    """Delete the checkpoints left in the folders of trials no longer running (their workers were killed).

    Returns how many were deleted. Only folders that this study's workers made here are
    touched (:func:`_own_trial_folder`): those of other machines, and any path the
    storage names elsewhere, are skipped.
    """
    from optuna.trial import TrialState

    removed = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        folder = _own_trial_folder(settings, trial)
        if folder is not None:
            removed += remove_checkpoints(folder)
    return removed


def remove_checkpoints(folder: Path) -> int:
    """Delete the trainer's checkpoints and model file in ``folder``; returns how many there were."""
    removed = 0
    for name in _CHECKPOINTS:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
            removed += 1
    return removed


def claim_trial_folder(settings: SearchSettings, trial, config: dict) -> Path:
    """Create the trial's folder and its record (``trial_info.json``), and note the folder in the storage."""
    out_dir = make_new_dir(trial_dir(settings, trial.number))
    # The token ties the folder to this trial: the storage alone cannot make a worker
    # delete anything in a folder (see _own_trial_folder).
    token = secrets.token_hex(16)
    atomic_write_json(out_dir / _TRIAL_INFO, {
        "study_name": settings.study_name, "trial_number": trial.number, "trial_token": token, "config": config,
        "note": "trained on the training split and evaluated on the validation split only; "
                "the test set is never used in a trial",
    })
    trial.set_user_attr("hidden_units", format_hidden_units(config["hidden_units"]))
    trial.set_user_attr("steps", int(config["max_steps"]))
    trial.set_user_attr("trial_dir", str(out_dir))
    trial.set_user_attr("trial_token", token)
    return out_dir
