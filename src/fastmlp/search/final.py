"""The best configuration, retrained once and tested once: the search's only use of the test set.

The retrain runs the best trial's configuration through the trainer's own data loading
(same training split, same ``--seed``: it reproduces the trial) and evaluates it on the
test set once, after the last step. The result is kept in ``final.json``, which a later
run reuses while the best trial stays the same.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from fastmlp.atomic import atomic_write_json
from fastmlp.hyperparams import format_hidden_units
from fastmlp.search.adapter import TrainerAdapter
from fastmlp.search.reports import describe, say
from fastmlp.search.settings import SearchSettings
from fastmlp.search.study import best_trial
from fastmlp.search.storage import optuna_module

__all__ = ["final_retrain"]


def _cached(path: Path, settings: SearchSettings, best, params: dict) -> dict | None:
    if not path.is_file():
        return None
    with contextlib.suppress(ValueError, OSError):
        cached = json.loads(path.read_text(encoding="utf-8"))
        if (cached.get("study_name") == settings.study_name and cached.get("trial_number") == best.number
                and cached.get("params") == params):
            return cached
    return None


def final_retrain(study, settings: SearchSettings, adapter: TrainerAdapter) -> dict | None:
    """Retrain the best trial's configuration and test it once; cached in ``final.json``.

    Returns
    -------
    dict or None
        What ``final.json`` holds (``trial_number``, ``config``, ``trial_validation_accuracy``,
        the retrain's ``validation_accuracy`` and ``test_accuracy``, ``command``...); None when
        no trial is complete.
    """
    optuna = optuna_module()
    best = best_trial(study)
    if best is None:
        return None
    path = Path(settings.out_dir) / "final.json"
    params = json.loads(json.dumps(best.params))
    cached = _cached(path, settings, best, params)
    if cached is not None:
        return cached
    config = settings.suggest_config(optuna.trial.FixedTrial(best.params))
    run_dir = Path(settings.out_dir) / "final"
    # One evaluation, after the last step: the test set is used once.
    run = adapter.run_config(adapter.run_flags(config, settings, out_dir=run_dir, eval_freq=int(config["max_steps"]),
                                               final=True))
    shown = {**config, "hidden_units": format_hidden_units(config["hidden_units"])}
    say(settings, f"retraining the best trial ({best.number}: {describe(shown)}, validation "
                  f"{best.value:.4f}) and testing it once")
    result = adapter.train(run)  # the trainer loads the data itself, test set included
    final = {
        "study_name": settings.study_name,
        "trial_number": best.number,
        "params": params,
        "config": config,
        "trial_validation_accuracy": best.value,
        "validation_accuracy": result.get("validation_accuracy"),
        "test_accuracy": result.get("test_accuracy"),
        "test_loss": result.get("test_loss"),
        "steps": result.get("steps"),
        "wall_seconds": result.get("wall_seconds"),
        "run_dir": str(run_dir),
        # written by the trainer at the end of the retrain (fastmlp.modelfile)
        "model_file": str(run_dir / "model.safetensors"),
        "command": adapter.command(run),
    }
    atomic_write_json(path, final)
    return final
