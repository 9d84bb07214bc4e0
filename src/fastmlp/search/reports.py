"""What a search shows and writes: progress lines, ``trials.csv``, ``results.md``, the plots.

Every file is written atomically (:mod:`fastmlp.atomic`) into ``--out_dir``;
``results.md`` lays the trials out as the reports' Table 1, then the retrained best
configuration with its test accuracy.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from fastmlp.atomic import atomic_path, atomic_write_text
from fastmlp.hyperparams import format_hidden_units
from fastmlp.search.settings import MODELS, SearchSettings
from fastmlp.search.storage import one_line, optuna_module, quiet_optuna_warnings
from fastmlp.search.study import best_trial, counts

__all__ = ["describe", "fmt", "say", "warnings_as_lines", "write_outputs", "write_plots", "write_results_md",
           "write_trials_csv"]


def say(settings: SearchSettings, message: str) -> None:
    """A progress line on stderr, unless ``--quiet``."""
    if not settings.quiet:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def warnings_as_lines(prefix: str) -> Iterator[None]:
    """Within the block, each warning shown is one line on stderr, ``<prefix>: warning: <message>``.

    (Python's own format adds the file, line and source line of the code that warned.)
    """
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{prefix}: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def describe(config: Mapping[str, Any]) -> str:
    """``hidden [512,256] lr 0.001 batch 200 steps 2000 adam``: a configuration on one line."""
    text = (f"hidden [{config['hidden_units']}] lr {config['learning_rate']:.3g} batch {config['batch_size']} "
            f"steps {config['max_steps']} {config['optimizer']}")
    if config.get("weight_decay"):
        text += f" wd {config['weight_decay']:.2g}"
    if config.get("dropout"):
        text += f" dropout {config['dropout']:.2f}"
    return text


def fmt(value) -> str:
    """An accuracy with four decimals, or ``n/a``."""
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


# --------------------------------------------------------------------------- trials.csv
def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def write_trials_csv(study, path: Path) -> None:
    """One row per trial with the columns of ``study.trials_dataframe()`` (no pandas needed)."""
    trials = study.get_trials(deepcopy=False)
    param_names = sorted({k for t in trials for k in t.params})
    attr_names = sorted({k for t in trials for k in t.user_attrs})
    header = (["number", "value", "datetime_start", "datetime_complete", "duration"]
              + [f"params_{k}" for k in param_names] + [f"user_attrs_{k}" for k in attr_names] + ["state"])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for t in trials:
        writer.writerow(
            [t.number, _cell(t.value), _cell(t.datetime_start), _cell(t.datetime_complete),
             _cell(t.duration.total_seconds() if t.duration else None)]
            + [_cell(t.params.get(k)) for k in param_names]
            + [_cell(t.user_attrs.get(k)) for k in attr_names] + [t.state.name])
    atomic_write_text(path, buffer.getvalue())


# --------------------------------------------------------------------------- results.md
def _trial_config(trial, settings: SearchSettings) -> dict | None:
    optuna = optuna_module()
    try:
        return settings.suggest_config(optuna.trial.FixedTrial(trial.params))
    except (ValueError, KeyError):  # a trial killed before all its parameters were drawn
        return None


def _sorted_rows(study, settings: SearchSettings) -> list[tuple[Any, dict]]:
    """(trial, configuration) pairs: the grid in the reports' order, other samplers best first."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    rows = [(t, c) for t, c in ((t, _trial_config(t, settings)) for t in trials) if c is not None]
    if settings.sampler == "grid":
        layouts = list(settings.grid_values["hidden_units"])

        def order(row):
            trial, config = row
            layout = format_hidden_units(config["hidden_units"])
            return (layouts.index(layout) if layout in layouts else len(layouts), config["max_steps"],
                    config["batch_size"], config["learning_rate"], trial.number)
    else:
        def order(row):
            return (-(row[0].value if row[0].value is not None else -1.0), row[0].number)
    return sorted(rows, key=order)


def _trials_table(rows: list[tuple[Any, dict]], best) -> list[str]:
    from optuna.trial import TrialState

    show_wd = any(c["weight_decay"] for _, c in rows)
    show_dropout = any(c["dropout"] for _, c in rows)
    header = ["Trial", "Hidden units", "Learning rate", "Batch size", "Steps", "Optimizer"]
    header += ["Weight decay"] * show_wd + ["Dropout"] * show_dropout
    header += ["Validation accuracy", "State", "Seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for trial, config in rows:
        steps = trial.user_attrs.get("steps", config["max_steps"])
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            last_step = max(trial.intermediate_values)
            value = f"({trial.intermediate_values[last_step]:.4f} at step {last_step})"
        else:
            value = f"{trial.value:.4f}" if trial.value is not None else ""
        if best is not None and trial.number == best.number:
            value = f"**{value}**"
        cells = [str(trial.number), f"[{', '.join(map(str, config['hidden_units']))}]",
                 f"{config['learning_rate']:.3g}", str(config["batch_size"]), str(steps), config["optimizer"]]
        cells += [f"{config['weight_decay']:.2g}"] * show_wd + [f"{config['dropout']:.2f}"] * show_dropout
        seconds = f"{trial.duration.total_seconds():.1f}" if trial.duration else ""
        cells += [value, trial.state.name.lower(), seconds]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _final_table(final: dict | None, best) -> list[str]:
    if final is None:
        return ["No completed trial yet." if best is None else "Not retrained in this run (`--skip_final`)."]
    c = final["config"]
    return [
        "| Trial | Hidden units | Learning rate | Batch size | Steps | Optimizer | Validation accuracy "
        "(search) | Validation accuracy (retrain) | Test accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {final['trial_number']} | [{', '.join(map(str, c['hidden_units']))}] | {c['learning_rate']:.3g} "
        f"| {c['batch_size']} | {final.get('steps', c['max_steps'])} | {c['optimizer']} "
        f"| {final['trial_validation_accuracy']:.4f} | {fmt(final.get('validation_accuracy'))} "
        f"| **{fmt(final.get('test_accuracy'))}** |",
        "",
        "Retrained on the same training split with the same seed, evaluated on the test set once, "
        f"after the last step. Reproduce it with `{final['command']}`.",
    ]


def write_results_md(study, settings: SearchSettings, path: Path, final: dict | None,
                     plots: Mapping[str, tuple[str | None, str]]) -> None:
    """The trials as in the reports' Table 1, then the retrained best and its test accuracy."""
    best = best_trial(study)
    lines = [f"# Hyper-parameter search `{settings.study_name}`", ""]
    lines += [
        f"- model: `{settings.model}` ({MODELS[settings.model]}), sampler: `{settings.sampler}`, "
        f"pruner: `{settings.pruner}`",
        "- trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts(study).items() if n),
        f"- selection: accuracy on {settings.validation_size} validation images carved from the end of the "
        "training set; the test set was not used by any trial",
        f"- seed {settings.seed}" + (f", steps capped at {settings.max_steps_cap}" if settings.max_steps_cap else "")
        + (f", trainer flags `{settings.trainer_flags}`" if settings.trainer_flags else ""),
        "",
        "## Trials",
        "",
    ]
    lines += _trials_table(_sorted_rows(study, settings), best)
    lines += ["", "## Best configuration, retrained and tested once", ""]
    lines += _final_table(final, best)
    lines += ["", "## Plots", ""]
    for name, (file, reason) in plots.items():
        lines.append(f"- {name}: " + (f"![{name}]({file})" if file else f"not drawn ({reason})"))
    atomic_write_text(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- plots
def write_plots(study, out_dir: Path) -> dict[str, tuple[str | None, str]]:
    """Draw optimization_history.png, param_importances.png, intermediate_values.png.

    Returns ``{plot name: (file name or None, reason it was not drawn)}``; a plot that
    cannot be drawn (too few trials, matplotlib missing) is skipped, never an error.
    """
    optuna_module()
    from optuna.trial import TrialState

    names = ("optimization history", "parameter importances", "validation curves")
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm
    except ImportError:
        return {name: (None, "matplotlib is not installed") for name in names}

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = [name for name in sorted({k for t in complete for k in t.params})
              if len({json.dumps(t.params.get(name)) for t in complete}) > 1]
    jobs = {
        "optimization history": ("optimization_history.png", ovm.plot_optimization_history,
                                 None if complete else "no completed trial"),
        "parameter importances": ("param_importances.png", ovm.plot_param_importances,
                                  "fewer than 2 completed trials" if len(complete) < 2 else
                                  "no parameter varies between the completed trials" if not varied else None),
        "validation curves": ("intermediate_values.png", ovm.plot_intermediate_values,
                              None if any(t.intermediate_values for t in study.get_trials(deepcopy=False))
                              else "no trial reported a validation curve"),
    }
    drawn: dict[str, tuple[str | None, str]] = {}
    for name, (file, plot, skip) in jobs.items():
        if skip:
            drawn[name] = (None, skip)
            continue
        try:
            with quiet_optuna_warnings(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                kwargs = {"params": varied} if plot is ovm.plot_param_importances else {}
                ax = plot(study, **kwargs)
                figure = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
                figure.set_size_inches(9, 5)
                figure.tight_layout()
                with atomic_path(out_dir / file) as tmp:
                    figure.savefig(tmp, format="png", dpi=100)
                plt.close(figure)
            drawn[name] = (file, "")
        except Exception as exc:  # a plot is a convenience: report and go on
            drawn[name] = (None, one_line(exc))
            plt.close("all")
    return drawn


def write_outputs(study, settings: SearchSettings, final: dict | None) -> None:
    """``trials.csv``, the plots and ``results.md`` in ``--out_dir``."""
    out_dir = Path(settings.out_dir)
    write_trials_csv(study, out_dir / "trials.csv")
    plots = write_plots(study, out_dir)
    write_results_md(study, settings, out_dir / "results.md", final, plots)
